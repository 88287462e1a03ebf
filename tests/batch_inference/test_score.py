"""boneage-score end to end on TestPipeline: every input kind, every bad kind.

Each test builds its inputs in code, runs the real pipeline (the tiny
exported model) and checks the outputs, including read = scored + rejected.
"""

import dataclasses
import io
import os
import pathlib
import shutil
import tarfile
import zipfile

import cv2
import numpy as np
import pytest
from apache_beam.testing import test_pipeline

from bone_age import errors
from batch_inference import overlays
from batch_inference import results
from batch_inference import score


def _run(tiny_export, inputs, output_dir, *extra):
  argv = [f"--model_dir={tiny_export}", f"--inputs={','.join(str(i) for i in inputs)}", f"--output_dir={output_dir}",
          *extra]
  return score.run(argv, test_pipeline=test_pipeline.TestPipeline())


def _tar(path: pathlib.Path, members, mode="w"):
  with tarfile.open(path, mode) as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _assert_accounted(out):
  summary = out["summary"]
  assert summary["read_equals_scored_plus_rejected"] and summary["read"] == summary["scored"] + summary["rejected"]
  assert summary["rejected"] == len(out["rejects"])


def _build_every_kind(root: pathlib.Path, make) -> pathlib.Path:
  """A folder holding every supported and every refused kind of input."""
  inputs = root / "in"
  inputs.mkdir()
  px = make.pixels
  (inputs / "p8.png").write_bytes(make.png(px(1)))
  (inputs / "p16.png").write_bytes(make.png(px(2).astype("uint16") * 257))
  (inputs / "j.jpg").write_bytes(make.jpeg(px(3)))
  (inputs / "d.dcm").write_bytes(make.dicom(px(4), sex="F", patient_name="Doe^Jane", **make.DATES))
  (inputs / "1.2.840.99").write_bytes(make.dicom(px(5), sex="M", preamble=False))  # extensionless DICOM
  (inputs / "corrupt.png").write_bytes(make.png(px(6))[:60])
  (inputs / "bomb.png").write_bytes(make.png_bomb())
  (inputs / "palette.dcm").write_bytes(make.unsupported_dicom(px(7)))
  (inputs / "nosex.png").write_bytes(make.png(px(8)))
  (inputs / "notes.txt").write_bytes(b"not an image")
  with zipfile.ZipFile(inputs / "z.zip", "w") as archive:
    archive.writestr("a/zp.png", make.png(px(9)))
    archive.writestr("zd.dcm", make.dicom(px(10), sex="M"))
    archive.writestr("../../escape.png", make.png(px(11)))
    archive.writestr("/abs/rooted.png", make.png(px(12)))
    archive.writestr("inner.zip", b"PK\x03\x04...")
    archive.writestr("big.png", make.png(make.pixels(13, 400, 400)))
  _tar(inputs / "t.tar.gz", [("tp.png", make.png(px(14))), ("tj.jpeg", make.jpeg(px(15)))], mode="w:gz")
  with tarfile.open(inputs / "links.tar", "w") as tar:
    for name, kind in (("sym.png", tarfile.SYMTYPE), ("hard.png", tarfile.LNKTYPE)):
      info = tarfile.TarInfo(name)
      info.type, info.linkname = kind, "/etc/passwd"
      tar.addfile(info)
  (inputs / "broken.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
  (root / "meta.csv").write_text(
      "id,male,chronological_age_months\np8,true,100\np16,false,\nj,M,\nz.zip!a/zp.png,F,\ntp,M,\ntj,F,\n"
      "escape,M,\nrooted,F,\n")
  return inputs


def test_every_input_kind_is_scored_or_rejected_with_its_reason(tiny_export, make, outputs_of, tmp_path):
  inputs = _build_every_kind(tmp_path, make)
  output_dir = tmp_path / "out"
  summary = _run(tiny_export, [inputs / "*", tmp_path / "missing" / "*.png"], output_dir,
                 f"--metadata_csv={tmp_path / 'meta.csv'}", "--gradcam=true", "--max_member_bytes=20000",
                 "--allow_empty_patterns")
  out = outputs_of(output_dir)
  _assert_accounted(out)
  scored = {r["id"]: r for r in out["predictions"]}
  assert set(scored) == {"p8", "p16", "j", "d", "1.2.840.99", "z.zip!a/zp.png", "z.zip!zd.dcm",
                         "z.zip!../../escape.png", "z.zip!/abs/rooted.png", "t.tar.gz!tp.png", "t.tar.gz!tj.jpeg"}
  rejected = {r["id"]: r["reason"] for r in out["rejects"]}
  assert rejected == {
      "corrupt": errors.TRUNCATED, "bomb": errors.DECOMPRESSION_BOMB, "palette": errors.UNSUPPORTED_DICOM,
      "nosex": errors.UNKNOWN_SEX, "notes.txt": errors.NOT_AN_IMAGE, "z.zip!inner.zip": errors.NESTED_ARCHIVE,
      "z.zip!big.png": errors.MEMBER_TOO_LARGE, "links.tar!sym.png": errors.UNSAFE_ARCHIVE_MEMBER,
      "links.tar!hard.png": errors.UNSAFE_ARCHIVE_MEMBER, "broken.zip": errors.UNREADABLE_ARCHIVE,
      None: errors.MISSING_FILE}
  assert summary["read"] == 11 + 11
  # Sources of sex and age are recorded; DICOM tags fill what the CSV lacks.
  assert (scored["p8"]["sex"], scored["p8"]["sex_source"], scored["p8"]["chronological_age_source"]) == (
      "M", "csv", "csv")
  assert scored["p8"]["ba_minus_ca_months"] == pytest.approx(scored["p8"]["boneage_months"] - 100.0, abs=1e-2)
  assert (scored["d"]["sex"], scored["d"]["sex_source"], scored["d"]["chronological_age_source"]) == (
      "F", "dicom", "dicom")
  assert scored["d"]["chronological_age_months"] == pytest.approx(126.0, abs=0.1)
  assert scored["z.zip!zd.dcm"]["sex_source"] == "dicom"
  # Every overlay lies inside the run's overlays/, whatever the member name.
  run_dir = pathlib.Path(out["run_dir"])
  overlay_files = sorted(p.name for p in (run_dir / "overlays").iterdir())
  assert overlay_files == sorted(pathlib.Path(r["overlay_path"]).name for r in out["predictions"])
  for row in out["predictions"]:
    folder, name = pathlib.PurePosixPath(row["overlay_path"]).parts
    assert folder == "overlays" and ".." not in name and "/" not in name
  assert scored["z.zip!../../escape.png"]["overlay_path"].startswith("overlays/z.zip_escape.png-")
  assert not (tmp_path / "escape.png").exists() and not pathlib.Path("/abs/rooted.png").exists()
  assert sorted(os.listdir(output_dir)) == ["LATEST", "runs"]
  assert run_dir.parent == output_dir / "runs" and (output_dir / "LATEST").read_text().strip() == run_dir.name
  names = sorted(os.listdir(run_dir))
  assert [n for n in names if not n.startswith(("predictions-", "rejects-"))] == [
      "counts.json", "manifest.json", "overlays", "started.json", "summary.json"]
  manifest = out["manifest"]
  assert (manifest["status"], manifest["run_id"]) == ("complete", run_dir.name)
  assert sorted(manifest["files"]["predictions_jsonl"] + manifest["files"]["predictions_csv"]
                + manifest["files"]["rejects_jsonl"]) == [n for n in names if n.startswith(("predictions-", "rejects-"))]
  # No identifier beyond the id leaves the job.
  for path in run_dir.iterdir():
    if path.is_file():
      assert "Doe" not in path.read_text()
  assert out["csv_header"][:4] == ["id", "file", "sex", "sex_source"]
  assert scored["z.zip!a/zp.png"]["file"] == str(inputs / "z.zip") and scored["p8"]["file"] == str(inputs / "p8.png")
  assert [(r["id"], r["file"]) for r in out["csv_rows"]] == [(r["id"], r["file"]) for r in out["predictions"]]


def test_unknown_sex_policies_are_recorded(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  (inputs / "u.png").write_bytes(make.png(make.pixels(1)))
  (inputs / "u2.dcm").write_bytes(make.dicom(make.pixels(2), sex=None, **make.DATES))
  _run(tiny_export, [inputs / "*"], tmp_path / "both", "--unknown_sex=both", "--gradcam=true")
  both = outputs_of(tmp_path / "both")
  _assert_accounted(both)
  rows = [(r["id"], r["sex"], r["sex_source"]) for r in both["predictions"]]
  assert rows == [("u", "F", "assumed_both"), ("u", "M", "assumed_both"), ("u2", "F", "assumed_both"),
                  ("u2", "M", "assumed_both")]
  assert both["summary"]["scored"] == 2 and both["summary"]["prediction_rows"] == 4
  assert len({r["overlay_path"] for r in both["predictions"]}) == 4
  male_rows = {r["id"]: r for r in both["predictions"] if r["sex"] == "M"}
  assert male_rows["u2"]["chronological_age_source"] == "dicom"

  _run(tiny_export, [inputs / "*"], tmp_path / "male", "--unknown_sex=male")
  male = outputs_of(tmp_path / "male")
  assert [(r["sex"], r["sex_source"], r["overlay_path"]) for r in male["predictions"]] == [
      ("M", "assumed", None), ("M", "assumed", None)]
  # The same pixels and sex give the same age whichever policy produced the row.
  for row in male["predictions"]:
    # Written months are rounded to 0.1.
    assert row["boneage_months"] == pytest.approx(male_rows[row["id"]]["boneage_months"], abs=0.101)


def test_duplicate_ids_and_twice_matched_files(tiny_export, make, outputs_of, tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "7.png").write_bytes(make.png(make.pixels(1)))
  (tmp_path / "b" / "7.png").write_bytes(make.png(make.pixels(2)))
  summary = _run(tiny_export, [tmp_path / "a" / "*.png", tmp_path / "a" / "7.png", tmp_path / "b" / "*.png"],
                 tmp_path / "out", "--unknown_sex=female", "--gradcam=true")
  out = outputs_of(tmp_path / "out")
  _assert_accounted(out)
  assert summary["read"] == 2
  assert [r["file"] for r in out["predictions"]] == [str(tmp_path / "a" / "7.png")]
  assert [(r["id"], r["reason"], r["file"]) for r in out["rejects"]] == [
      ("7", errors.DUPLICATE_ID, str(tmp_path / "b" / "7.png"))]
  assert len(list((pathlib.Path(out["run_dir"]) / "overlays").iterdir())) == 1  # the loser's overlay is not kept
  assert out["summary"]["overlays"] == 1


def _files(folder: pathlib.Path) -> dict:
  return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_reruns_are_new_runs_and_never_touch_published_ones(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  for i in range(3):
    (inputs / f"{i}.png").write_bytes(make.png(make.pixels(i)))
  output_dir = tmp_path / "out"
  args = ("--unknown_sex=male", "--gradcam=true", "--batch_size=2")
  _run(tiny_export, [inputs / "*.png"], output_dir, *args)
  first = outputs_of(output_dir)
  first_files = _files(pathlib.Path(first["run_dir"]))
  _run(tiny_export, [inputs / "*.png"], output_dir, *args)
  second = outputs_of(output_dir)
  assert second["run_id"] != first["run_id"]  # LATEST moved to the new run
  # The same rows, except for the run start each row names (provenance).
  assert [{**r, "run_started_utc": None} for r in second["predictions"]] == [
      {**r, "run_started_utc": None} for r in first["predictions"]] and second["rejects"] == first["rejects"]
  assert {r["run_started_utc"] for r in second["predictions"]} == {second["manifest"]["started_utc"]}
  overlays_of = lambda out: {p.name: p.read_bytes() for p in (pathlib.Path(out["run_dir"]) / "overlays").iterdir()}
  # The same overlays above their footers (the footer names each run's start).
  above_footer = lambda out: {name: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[
      :-overlays._FOOTER_PX].tobytes() for name, data in overlays_of(out).items()}  # pylint: disable=protected-access
  assert above_footer(second) == above_footer(first)
  _run(tiny_export, [inputs / "0.png"], output_dir, *args)
  third = outputs_of(output_dir)
  assert len(third["predictions"]) == 1 and len(overlays_of(third)) == 1
  # Earlier published runs stay whole and readable by id.
  assert _files(pathlib.Path(first["run_dir"])) == first_files
  assert outputs_of(output_dir, first["run_id"])["predictions"] == first["predictions"]

  # A run that fails inside the pipeline (a corrupt model file) leaves LATEST
  # and every published run as they were; its own directory says it failed.
  broken_export = tmp_path / "broken_export"
  shutil.copytree(tiny_export, broken_export)
  (broken_export / "model.keras").write_bytes(b"not a keras file")
  before = _files(output_dir)
  with pytest.raises(Exception):
    _run(broken_export, [inputs / "*.png"], output_dir, *args)
  after = _files(output_dir)
  assert {k: v for k, v in after.items() if k in before} == before
  [failed] = [r for r in results.list_runs(str(output_dir)) if r["status"] != "complete"]
  assert failed["status"] == "failed"
  with pytest.raises(results.RunNotPublishedError, match="failed"):
    outputs_of(output_dir, failed["run_id"])
  assert outputs_of(output_dir)["run_id"] == third["run_id"]


def test_reading_before_any_run_or_an_unknown_run_is_a_clear_error(tmp_path):
  with pytest.raises(results.RunNotFoundError, match="no complete run yet"):
    results.read_run(str(tmp_path))
  with pytest.raises(results.RunNotFoundError, match="no such run"):
    results.read_run(str(tmp_path), "20260101T000000Z-00000000")


def test_console_entry_point_passes_beam_options_through(tiny_export, make, outputs_of, tmp_path):
  (tmp_path / "one.png").write_bytes(make.png(make.pixels(1)))
  # Success returns (status 0 from the console wrapper); only failures exit.
  score.main(["boneage-score", f"--model_dir={tiny_export}", f"--inputs={tmp_path / 'one.png'}",
              f"--output_dir={tmp_path / 'out'}", "--unknown_sex=female", "--runner=DirectRunner",
              "--direct_num_workers=1"])
  assert outputs_of(tmp_path / "out")["summary"]["scored"] == 1


def test_console_exits_1_when_no_input_could_be_read(tiny_export, outputs_of, tmp_path, capsys):
  missing = tmp_path / "nowhere" / "gone.png"
  with pytest.raises(SystemExit) as exit_info:
    score.main(["boneage-score", f"--model_dir={tiny_export}", f"--inputs={missing}",
                f"--output_dir={tmp_path / 'out'}", "--runner=DirectRunner", "--allow_empty_patterns"])
  assert exit_info.value.code == 1
  assert "no input could be read" in capsys.readouterr().err
  # The run is published for its rejects but never becomes LATEST.
  [run] = results.list_runs(str(tmp_path / "out"))
  assert run["status"] == "nothing_read"
  assert outputs_of(tmp_path / "out", run["run_id"])["rejects"][0]["reason"] == errors.MISSING_FILE
  with pytest.raises(results.RunNotFoundError):
    outputs_of(tmp_path / "out")


def test_the_progress_total_is_known_up_front_only_without_archives(tmp_path):
  for name in ("a.png", "b.dcm", "c.zip"):
    (tmp_path / name).write_bytes(b"x")
  images = score.ScoreConfig(model_dir="m", output_dir="o", inputs=(
      f"{tmp_path}/*.png", f"{tmp_path}/*.dcm", f"{tmp_path}/a.png", f"{tmp_path}/none*.png"))
  # a.png matched twice is one input; the pattern matching nothing is one missing_file reject.
  assert score.listing_plan(images) == (3, 3)
  # The zip's members are counted while the job lists them: only the files to list are known.
  assert score.listing_plan(dataclasses.replace(images, inputs=(f"{tmp_path}/*",))) == (None, 3)
  assert score.listing_plan(dataclasses.replace(images, inputs_manifest=str(tmp_path / "m.txt"))) == (None, None)
