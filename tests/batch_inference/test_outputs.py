"""The run layout, its counts and pointer, and a scorer killed with SIGKILL mid-run."""

import csv
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing import test_pipeline

from batch_inference import pipeline as scoring
from batch_inference import results
from batch_inference import runs
from batch_inference import score
from batch_inference import writers


def _row(example_id: str, sex: str = "M", sex_source: str = "csv", overlay: bool = False) -> dict:
  return {"id": example_id, "file": f"/in/{example_id}.png", "sex": sex, "sex_source": sex_source,
          "boneage_months": 120.0, "boneage": "10 years 0 months", "age_group": "a", "age_group_index": 0,
          "age_group_probabilities": {"a": 0.75, "b": 0.25}, "chronological_age_months": None,
          "chronological_age_source": None, "ba_minus_ca_months": None,
          "overlay_path": f"overlays/{example_id}.png" if overlay else None, "engine": "tensorflow-float32"}


def _scored(pipeline, rows, rejects, tallies, worker_tallies=()) -> scoring.ScoredRows:
  return scoring.ScoredRows(
      rows=pipeline | "Rows" >> beam.Create(rows), rejects=[pipeline | "Rejects" >> beam.Create(rejects)],
      tallies=[pipeline | "Tallies" >> beam.Create(tallies)],
      worker_tallies=pipeline | "Workers" >> beam.Create(list(worker_tallies)))


def test_writers_count_inside_the_pipeline(tmp_path):
  rows = [_row("1", overlay=True), _row("2", "F", "dicom"), _row("3", "F", "assumed_both"),
          _row("3", "M", "assumed_both"), _row('4,"q"')]
  rejects = [{"id": "5", "source": "/in/5.png", "reason": "truncated", "detail": "x"},
             {"id": None, "source": "/gone/*.png", "reason": "missing_file", "detail": "y"},
             {"id": "b.zip!h/6.png", "source": "/in/b.zip!h/6.png", "reason": "truncated", "detail": "z"}]
  with test_pipeline.TestPipeline() as pipeline:
    scored = _scored(pipeline, rows, rejects, [4, 3], worker_tallies=[("w1", 3), ("w2", 1), ("w1", 1)])
    writers.write_outputs(scored, str(tmp_path), ["a", "b"], gradcam=False)
  counts = json.loads((tmp_path / writers.COUNTS_JSON).read_text())
  assert counts == {
      "read": 7, "scored": 4, "rejected": 3, "read_equals_scored_plus_rejected": True, "prediction_rows": 5, "overlays": 1,
      "rejected_by_reason": {"missing_file": 1, "truncated": 2},
      "sex_sources": {"assumed_both": 2, "csv": 2, "dicom": 1}, "chronological_age_sources": {"unknown": 5},
      "scored_per_worker": {"w1": 4, "w2": 1}, "rows_by_engine": {"tensorflow-float32": 5},
      "flagged_rows_by_code": {}}
  jsonl = [json.loads(l) for p in tmp_path.glob("predictions-*.jsonl") for l in p.read_text().splitlines()]
  assert sorted(jsonl, key=lambda r: (r["id"], r["sex"])) == sorted(rows, key=lambda r: (r["id"], r["sex"]))
  csv_lines = [l for p in tmp_path.glob("predictions-*.csv") for l in p.read_text().splitlines()]
  assert csv_lines[0] == ",".join(writers.csv_columns(["a", "b"]))
  parsed = {r["id"]: r for r in csv.DictReader(io.StringIO("\n".join(csv_lines)))}
  assert parsed['4,"q"']["file"] == '/in/4,"q".png'  # a comma or quote in an id is quoted, not a new column
  assert len(parsed) == 4 and all(len(r) == len(writers.csv_columns(["a", "b"])) for r in parsed.values())
  # Rejects name the file read like the rows do: an archive member's file is its archive.
  written = sorted((json.loads(l) for p in tmp_path.glob("rejects-*.jsonl") for l in p.read_text().splitlines()),
                   key=lambda r: r["file"])
  assert written == [{"id": None, "file": "/gone/*.png", "reason": "missing_file", "detail": "y"},
                     {"id": "5", "file": "/in/5.png", "reason": "truncated", "detail": "x"},
                     {"id": "b.zip!h/6.png", "file": "/in/b.zip", "reason": "truncated", "detail": "z"}]


def test_writers_write_empty_shards_when_nothing_was_scored(tmp_path):
  with test_pipeline.TestPipeline() as pipeline:
    writers.write_outputs(_scored(pipeline, [], [], []), str(tmp_path), ["a"], gradcam=True)
  assert json.loads((tmp_path / writers.COUNTS_JSON).read_text())["read"] == 0
  [csv_shard] = tmp_path.glob("predictions-*.csv")
  assert csv_shard.read_text().splitlines() == [",".join(writers.csv_columns(["a"]))]
  assert [p.read_text() for p in tmp_path.glob("predictions-*.jsonl")] == [""]
  assert [p.read_text() for p in tmp_path.glob("rejects-*.jsonl")] == [""]


def test_run_ids_are_unique_and_latest_moves_only_on_a_complete_publish(tmp_path):
  ids = {runs.new_run_id() for _ in range(200)}
  assert len(ids) == 200 and all(len(i) == len("20260101T000000Z-0123abcd") for i in ids)
  first, second = runs.Run(str(tmp_path)), runs.Run(str(tmp_path))
  for run in (first, second):
    run.start(["in/*.png"])
  summary = {"read": 0, "scored": 0, "rejected": 0, "prediction_rows": 0, "overlays": 0}
  assert [r["status"] for r in results.list_runs(str(tmp_path))] == ["unpublished", "unpublished"]
  first.publish(summary, {"predictions_jsonl": [], "predictions_csv": [], "rejects_jsonl": []})
  assert results.latest_run_id(str(tmp_path)) == first.run_id
  second.publish(summary, {"predictions_jsonl": [], "predictions_csv": [], "rejects_jsonl": []},
                 runs.STATUS_NOTHING_READ)
  assert results.latest_run_id(str(tmp_path)) == first.run_id
  assert results.run_status(str(tmp_path), second.run_id) == "nothing_read"
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the pointer's temporary file is gone


def test_a_run_read_nothing_only_when_every_input_was_unreachable():
  def summary(scored=0, **by_reason):
    return {"scored": scored, "rejected": sum(by_reason.values()), "rejected_by_reason": by_reason}
  assert score.nothing_read(summary(listing_failed=1, missing_file=2))
  assert score.nothing_read(summary(listing_failed=1))
  assert not score.nothing_read(summary(listing_failed=1, truncated=1))  # one input was read, then refused
  assert not score.nothing_read(summary(scored=1, missing_file=1))
  assert not score.nothing_read(summary())  # nothing to read is not a failure to read


def _count_overlays(output_dir: pathlib.Path) -> int:
  return len(list(output_dir.glob("runs/*/overlays/*.png")))


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_results(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  for i in range(40):
    (inputs / f"{i:03d}.png").write_bytes(make.png(make.pixels(i, 300, 240)))
  args = [f"--model_dir={tiny_export}", f"--inputs={inputs}/*.png", "--unknown_sex=male", "--gradcam=true",
          "--batch_size=1"]
  killed_dir = tmp_path / "out"
  proc = subprocess.Popen([sys.executable, "-m", "batch_inference.score", *args, f"--output_dir={killed_dir}"],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while _count_overlays(killed_dir) == 0 and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  [killed] = results.list_runs(str(killed_dir))
  assert killed["status"] == "unpublished" and 0 < _count_overlays(killed_dir) < 40
  with pytest.raises(results.RunNotFoundError):
    outputs_of(killed_dir)  # nothing mistakes the killed run for results
  with pytest.raises(results.RunNotPublishedError, match="unpublished"):
    outputs_of(killed_dir, killed["run_id"])

  score.run([*args, f"--output_dir={killed_dir}"], test_pipeline=test_pipeline.TestPipeline())
  score.run([*args, f"--output_dir={tmp_path / 'clean'}"], test_pipeline=test_pipeline.TestPipeline())
  rerun, clean = outputs_of(killed_dir), outputs_of(tmp_path / "clean")
  # Each run names its own start time (provenance); everything else is the same.
  same = lambda rows: [{**r, "run_started_utc": None} for r in rows]
  assert same(rerun["predictions"]) == same(clean["predictions"]) and len(clean["predictions"]) == 40
  assert rerun["rejects"] == clean["rejects"] == []
  # The overlays' pictures are identical; only the footer's run-start line differs.
  overlays = lambda out: {p.name: cv2.imread(str(p)) for p in (pathlib.Path(out["run_dir"]) / "overlays").iterdir()}
  rerun_overlays, clean_overlays = overlays(rerun), overlays(clean)
  assert rerun_overlays.keys() == clean_overlays.keys()
  for name, image in rerun_overlays.items():
    assert image.shape == clean_overlays[name].shape
    np.testing.assert_array_equal(image[:image.shape[0] // 2], clean_overlays[name][:image.shape[0] // 2], err_msg=name)
  per_run = ("output_dir", "scored_per_worker", "provenance")  # the run's directory and start; process ids
  assert {k: v for k, v in rerun["summary"].items() if k not in per_run} == {
      k: v for k, v in clean["summary"].items() if k not in per_run}
  assert {**rerun["summary"]["provenance"], "run_started_utc": None} == {
      **clean["summary"]["provenance"], "run_started_utc": None}
  assert sum(rerun["summary"]["scored_per_worker"].values()) == 40
  # The killed run's directory is still there, still unpublished (its launcher could have been alive).
  statuses = {r["run_id"]: r["status"] for r in results.list_runs(str(killed_dir))}
  assert statuses == {killed["run_id"]: "unpublished", rerun["run_id"]: "complete"}
