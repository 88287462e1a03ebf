"""boneage-score's inputs end to end: odd names, failing listings, empty patterns and archives, manifests.

Each test runs the real pipeline (TestPipeline, the tiny exported model) on
inputs built in code and checks that every input is scored or rejected with
its reason, and that read = scored + rejected.
"""

import io
import os
import tarfile
import time
import zipfile

import pytest
from apache_beam.testing import test_pipeline

from bone_age import errors
from batch_inference import score
from batch_inference import sources


def _run(tiny_export, inputs, output_dir, *extra):
  argv = [f"--model_dir={tiny_export}", f"--inputs={','.join(str(i) for i in inputs)}", f"--output_dir={output_dir}",
          "--unknown_sex=female", *extra]
  return score.run(argv, test_pipeline=test_pipeline.TestPipeline())


def _assert_accounted(out):
  summary = out["summary"]
  assert summary["read_equals_scored_plus_rejected"] and summary["read"] == summary["scored"] + summary["rejected"]
  assert summary["rejected"] == len(out["rejects"])


def test_non_utf8_file_and_member_names_are_scored_under_escaped_ids(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  png = make.png(make.pixels(1))
  with open(os.path.join(os.fsencode(inputs), b"\xff.png"), "wb") as f:
    f.write(png)
  with tarfile.open(inputs / "raw.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                    errors="surrogateescape") as tar:
    info = tarfile.TarInfo(os.fsdecode(b"hands/caf\xe9.png"))  # Latin-1, not UTF-8
    info.size = len(png)
    tar.addfile(info, io.BytesIO(png))
  _run(tiny_export, [inputs / "*"], tmp_path / "out", "--gradcam=true")
  out = outputs_of(tmp_path / "out")
  _assert_accounted(out)
  assert not out["rejects"]
  rows = {r["id"]: r for r in out["predictions"]}
  assert set(rows) == {"\\xff", "raw.tar!hands/caf\\xe9.png"}
  assert rows["\\xff"]["file"] == f"{inputs}/\\xff.png"
  # The member is named by the id; file is the archive, and together they give the exact input.
  assert rows["raw.tar!hands/caf\\xe9.png"]["file"] == f"{inputs}/raw.tar"
  assert sources.input_path("raw.tar!hands/caf\\xe9.png", f"{inputs}/raw.tar") == f"{inputs}/raw.tar!hands/caf\\xe9.png"
  assert all((tmp_path / "out" / out["run_dir"] / r["overlay_path"]).exists() for r in rows.values())


def test_a_listing_that_fails_is_a_listing_failed_reject_with_its_cause(tiny_export, make, outputs_of, tmp_path):
  # Beam's s3:// and hdfs:// filesystems raise when listed here (without
  # boto3 and the hdfs package): real listing failures, and fast ones.
  (tmp_path / "ok.png").write_bytes(make.png(make.pixels(1)))
  started = time.monotonic()
  _run(tiny_export, [tmp_path / "ok.png", "s3://no-bucket/scans/*.png", "hdfs://nowhere/scans/*.dcm"],
       tmp_path / "out")
  assert time.monotonic() - started < 120
  out = outputs_of(tmp_path / "out")
  _assert_accounted(out)
  assert out["summary"]["scored"] == 1
  failed = {r["file"]: r for r in out["rejects"]}
  assert {r["reason"] for r in failed.values()} == {errors.LISTING_FAILED}
  assert set(failed) == {"s3://no-bucket/scans/*.png", "hdfs://nowhere/scans/*.dcm"}
  # The cause, in the filesystem's words (not "matches no file").
  assert "boto3" in failed["s3://no-bucket/scans/*.png"]["detail"]
  assert "Failed to import hdfs" in failed["hdfs://nowhere/scans/*.dcm"]["detail"]


def test_a_pattern_that_matches_nothing_is_a_usage_error(tiny_export, make, tmp_path, capsys):
  (tmp_path / "ok.png").write_bytes(make.png(make.pixels(1)))
  missing = tmp_path / "typo" / "*.png"
  with pytest.raises(SystemExit) as exit_info:
    score.main(["boneage-score", f"--model_dir={tiny_export}", f"--inputs={tmp_path / 'ok.png'},{missing}",
                f"--output_dir={tmp_path / 'out'}", "--unknown_sex=female"])
  assert exit_info.value.code == 2
  err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("boneage-score:")]
  assert len(err_lines) == 1 and str(missing) in err_lines[0] and str(tmp_path / "ok.png") not in err_lines[0]
  assert not (tmp_path / "out").exists()  # nothing started


def test_allow_empty_patterns_records_a_missing_file_reject(tiny_export, make, outputs_of, tmp_path):
  (tmp_path / "ok.png").write_bytes(make.png(make.pixels(1)))
  _run(tiny_export, [tmp_path / "ok.png", tmp_path / "typo" / "*.png"], tmp_path / "out", "--allow_empty_patterns")
  out = outputs_of(tmp_path / "out")
  _assert_accounted(out)
  assert [(r["file"], r["reason"]) for r in out["rejects"]] == [(str(tmp_path / "typo" / "*.png"),
                                                                   errors.MISSING_FILE)]


def test_empty_archives_are_each_one_reject(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  (inputs / "ok.png").write_bytes(make.png(make.pixels(1)))
  zipfile.ZipFile(inputs / "empty.zip", "w").close()
  with zipfile.ZipFile(inputs / "folders.zip", "w") as archive:
    archive.writestr("scans/", b"")
  tarfile.open(inputs / "empty.tar", "w").close()
  _run(tiny_export, [inputs / "*"], tmp_path / "out")
  out = outputs_of(tmp_path / "out")
  _assert_accounted(out)
  assert out["summary"]["read"] == 4
  assert sorted((r["id"], r["reason"]) for r in out["rejects"]) == [
      ("empty.tar", errors.EMPTY_ARCHIVE), ("empty.zip", errors.EMPTY_ARCHIVE), ("folders.zip", errors.EMPTY_ARCHIVE)]


def test_inputs_manifest_patterns_are_matched_by_the_workers(tiny_export, make, outputs_of, tmp_path):
  for name in ("a", "b"):
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{name}1.png").write_bytes(make.png(make.pixels(ord(name))))
  with zipfile.ZipFile(tmp_path / "b" / "more.zip", "w") as archive:
    archive.writestr("z.png", make.png(make.pixels(5)))
  manifest = tmp_path / "manifest.txt"
  manifest.write_text(f"# exported 2026-01-01\n{tmp_path / 'a'}/*.png\n\n{tmp_path / 'b'}/*\n{tmp_path / 'gone'}/*\n")
  score.run([f"--model_dir={tiny_export}", f"--inputs_manifest={manifest}", f"--output_dir={tmp_path / 'out'}",
             "--unknown_sex=male"], test_pipeline=test_pipeline.TestPipeline())
  out = outputs_of(tmp_path / "out")
  _assert_accounted(out)
  assert sorted(r["id"] for r in out["predictions"]) == ["a1", "b1", "more.zip!z.png"]
  # A manifest is read by the workers, so its patterns cannot be checked up front: one that matches nothing is a reject.
  assert [(r["file"], r["reason"]) for r in out["rejects"]] == [(f"{tmp_path / 'gone'}/*", errors.MISSING_FILE)]
