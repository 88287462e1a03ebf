"""Two boneage-score processes started together on one --output_dir never hurt each other.

Each run writes only under its own runs/<run id>/ and publishes with a
manifest, so both finish complete: every row's overlay exists, the counts
match the rows, and runs published earlier are left byte for byte as they
were.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from batch_inference import results

NUM_IMAGES = 24
TRIES = 5


def _score_command(tiny_export, inputs: pathlib.Path, output_dir: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "batch_inference.score", f"--model_dir={tiny_export}", f"--inputs={inputs}/*.png",
          f"--output_dir={output_dir}", "--unknown_sex=male", "--gradcam=true", "--batch_size=4"]


def _files(folder: pathlib.Path) -> dict:
  return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _assert_complete(output_dir: pathlib.Path, run_id: str) -> None:
  out = results.read_run(str(output_dir), run_id)
  run_dir = pathlib.Path(out["run_dir"])
  summary = out["summary"]
  assert out["manifest"]["status"] == "complete" and summary["read_equals_scored_plus_rejected"]
  assert summary["scored"] == summary["prediction_rows"] == len(out["predictions"]) == len(out["csv_rows"]) == NUM_IMAGES
  assert summary["rejected"] == len(out["rejects"]) == 0
  overlay_files = {p.name for p in (run_dir / "overlays").iterdir()}
  assert {pathlib.PurePosixPath(r["overlay_path"]).name for r in out["predictions"]} == overlay_files
  assert summary["overlays"] == len(overlay_files) == NUM_IMAGES


@pytest.mark.slow
def test_two_scorers_on_one_output_dir_both_finish_complete(tiny_export, make, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  for i in range(NUM_IMAGES):
    (inputs / f"{i:03d}.png").write_bytes(make.png(make.pixels(i)))
  output_dir = tmp_path / "out"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  published: dict[str, dict] = {}
  for _ in range(TRIES):
    procs = [subprocess.Popen(_score_command(tiny_export, inputs, output_dir), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for code, stderr in outcomes:
      assert code == 0, stderr[-3000:]
    runs = results.list_runs(str(output_dir))
    new = [r["run_id"] for r in runs if r["run_id"] not in published]
    assert len(new) == 2 and all(r["status"] == "complete" for r in runs)
    for run_id in new:
      _assert_complete(output_dir, run_id)
    assert results.latest_run_id(str(output_dir)) in new
    # Runs published in earlier tries are untouched.
    for run_id, files in published.items():
      assert _files(output_dir / "runs" / run_id) == files
    published.update({run_id: _files(output_dir / "runs" / run_id) for run_id in new})
  # Every run scored the same images to the same rows (each names its own start time).
  rows = {run_id: [{**r, "run_started_utc": None} for r in results.read_run(str(output_dir), run_id)["predictions"]]
          for run_id in published}
  assert len({repr(r) for r in rows.values()}) == 1
