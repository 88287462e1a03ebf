"""Every scorer output names its model, training, dataset, software, run and input; rows carry the interval."""

import csv
import hashlib
import io
import json
import pathlib
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from apache_beam.testing import test_pipeline

from bone_age import conformal
from bone_age import export
from bone_age import model as ba_model
from bone_age import provenance
from batch_inference import dicom_outputs
from batch_inference import overlays
from batch_inference import score

_DCIODVFY = shutil.which("dciodvfy")
_METADATA = {"backbone": "tiny", "dataset_version": "1.0.0", "dataset_name": "rsna_bone_age", "experiment": "demo_cpu",
             "checkpoint_step": 2800, "checkpoint_reason": "last", "train_steps": 2800}
_TTA_VIEWS = 3


@pytest.fixture(scope="module")
def calibrated_export(tmp_path_factory) -> pathlib.Path:
  """A tiny export with training provenance and a conformal calibration of 99 residuals 1..99 months per view count."""
  model = ba_model.build_model(image_size_px=64, age_group_edges_months=[113.0, 150.0], backbone="tiny", weights=None)
  export_dir = tmp_path_factory.mktemp("calibrated_export")
  scores = np.arange(1.0, 100.0)
  calibration = conformal.Calibration({v: scores * (1.0 - 0.1 * (v - 1)) for v in range(1, 5)})
  export.save_export(model, str(export_dir), {**_METADATA, "prediction_interval": conformal.record(calibration)})
  conformal.save(calibration, str(export_dir))
  return export_dir


@pytest.fixture(scope="module")
def scored(calibrated_export, tmp_path_factory, make):
  from batch_inference import results  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("provenance_run")
  inputs = root / "in"
  inputs.mkdir()
  (inputs / "d.dcm").write_bytes(make.dicom(make.pixels(4), sex="F", patient_name="Doe^Jane", **make.DATES))
  (inputs / "p.png").write_bytes(make.png(make.pixels(6)))
  (root / "meta.csv").write_text("id,male\np,true\n")
  argv = [f"--model_dir={calibrated_export}", f"--inputs={inputs / '*'}", f"--output_dir={root / 'out'}",
          "--gradcam=true", "--dicom_outputs=true", f"--metadata_csv={root / 'meta.csv'}", f"--tta_views={_TTA_VIEWS}",
          "--interval_alpha=0.2"]
  score.run(argv, test_pipeline=test_pipeline.TestPipeline())
  return {"out": results.read_run(str(root / "out")), "inputs": inputs}


def _expected_run_fields(export_dir) -> dict:
  sha = hashlib.sha256((export_dir / "model.keras").read_bytes()).hexdigest()
  return {"model_id": sha[:12], "experiment": "demo_cpu", "checkpoint_step": 2800, "checkpoint_reason": "last",
          "dataset": "rsna_bone_age", "dataset_version": "1.0.0", "software_version": provenance.software_version()}


def test_rows_and_csv_carry_provenance_and_the_input_hash(scored, calibrated_export):
  out, inputs = scored["out"], scored["inputs"]
  expected = _expected_run_fields(calibrated_export)
  started = out["manifest"]["started_utc"]
  csv_rows = {r["id"]: r for r in out["csv_rows"]}
  for row in out["predictions"]:
    digest = hashlib.sha256((inputs / pathlib.PurePath(row["file"]).name).read_bytes()).hexdigest()
    assert row["input_sha256"] == digest
    assert {k: row[k] for k in expected} == expected and row["run_started_utc"] == started
    as_csv = csv_rows[row["id"]]
    assert as_csv["input_sha256"] == digest and as_csv["model_id"] == expected["model_id"]
    assert as_csv["checkpoint_step"] == "2800" and as_csv["run_started_utc"] == started
  assert set(provenance.ROW_FIELDS) | {"input_sha256"} <= set(out["csv_header"])


def test_rows_have_the_tta_mean_its_spread_and_the_conformal_interval(scored):
  # 99 scores, alpha 0.2: rank ceil(100 * 0.8) = 80; three views scale the scores by 0.8.
  half_width = 80.0 * 0.8
  for row in scored["out"]["predictions"]:
    assert row["interval_level"] == 0.8 and row["interval_missing_reason"] is None
    assert row["interval_low_months"] == pytest.approx(max(0.0, row["boneage_months"] - half_width), abs=0.11)
    assert row["interval_high_months"] == pytest.approx(min(228.0, row["boneage_months"] + half_width), abs=0.11)
    assert row["boneage_tta_sd_months"] is not None and row["boneage_tta_sd_months"] >= 0
  interval = scored["out"]["summary"]["prediction_interval"]
  assert interval["half_width_months"] == pytest.approx(half_width) and interval["rank"] == 80
  assert interval["n_calibration"] == 99 and scored["out"]["summary"]["tta_views"] == _TTA_VIEWS


def test_summary_names_the_model_and_says_research_use_only(scored, calibrated_export):
  summary = scored["out"]["summary"]
  model = summary["provenance"]
  sha = hashlib.sha256((calibrated_export / "model.keras").read_bytes()).hexdigest()
  assert model["model_sha256"] == sha and model["notice"] == "Research use only, not a medical device."
  assert {k: model[k] for k in _expected_run_fields(calibrated_export)} == _expected_run_fields(calibrated_export)
  assert model["run_started_utc"] == scored["out"]["manifest"]["started_utc"]
  assert summary["notice"] == provenance.RESEARCH_USE_NOTICE
  text = score.format_summary(summary)
  assert f"model {sha[:12]}" in text and "Research use only, not a medical device." in text
  assert "80% interval: boneage_months +/- 64.0 months" in text


def test_overlay_footer_names_the_provenance(scored):
  for row in scored["out"]["predictions"]:
    lines = overlays.footer_lines(row)
    assert lines[-2].startswith(f"Model {row['model_id']}: experiment demo_cpu, step 2800 (last), trained on "
                                "rsna_bone_age 1.0.0")
    assert f"input sha256 {row['input_sha256'][:16]}" in lines[-1]
    assert lines[-1].endswith("Research use only, not a medical device.")
    assert "80% interval" in lines[0]
    assert (pathlib.Path(scored["out"]["run_dir"]) / row["overlay_path"]).exists()


def _algorithm_parameters(sr) -> list[str]:
  found = []

  def walk(items):
    for item in items:
      if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters":
        found.append(item.TextValue)
      walk(item.get("ContentSequence", []))

  walk(sr.ContentSequence)
  return found


def test_sr_and_sc_name_the_provenance(scored):
  out = scored["out"]
  row = next(r for r in out["predictions"] if r["id"] == "d")
  run_dir = pathlib.Path(out["run_dir"])
  sr = pydicom.dcmread(run_dir / row[dicom_outputs.SR_PATH_KEY])
  parameters = set(_algorithm_parameters(sr))
  for key in ("model_id", "experiment", "checkpoint_step", "checkpoint_reason", "dataset", "dataset_version",
              "software_version", "run_started_utc", "input_sha256"):
    assert f"{key}={row[key]}" in parameters, key
  sc = pydicom.dcmread(run_dir / row[dicom_outputs.SC_PATH_KEY])
  assert sc.ImageComments.startswith("Research use only, not a medical device.")
  assert f"input_sha256={row['input_sha256']}" in sc.ImageComments and f"model_id={row['model_id']}" in sc.ImageComments
  if _DCIODVFY:  # the interval's measurements and the comments keep both objects valid
    for path in (run_dir / row[dicom_outputs.SR_PATH_KEY], run_dir / row[dicom_outputs.SC_PATH_KEY]):
      result = subprocess.run([_DCIODVFY, str(path)], capture_output=True, text=True, check=False)
      assert [l for l in (result.stdout + result.stderr).splitlines() if l.startswith("Error")] == []


def test_an_export_without_calibration_says_why_its_rows_have_no_interval(tiny_export, make, tmp_path):
  from batch_inference import results  # pylint: disable=g-import-not-at-top
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.dcm").write_bytes(make.dicom(make.pixels(3), sex="M"))
  score.run([f"--model_dir={tiny_export}", f"--inputs={tmp_path / 'in' / '*'}", f"--output_dir={tmp_path / 'out'}",
             "--tta_views=1"], test_pipeline=test_pipeline.TestPipeline())
  out = results.read_run(str(tmp_path / "out"))
  row = out["predictions"][0]
  assert row["interval_low_months"] is None and row["boneage_tta_sd_months"] is None
  assert "no conformal_scores.npz" in row["interval_missing_reason"]
  assert row["checkpoint_reason"] is None and row["model_id"] == out["summary"]["provenance"]["model_id"]
