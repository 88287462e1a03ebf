"""DICOM SR and Secondary Capture of scored DICOMs: valid (dciodvfy), in the source study, deterministic."""

import io
import pathlib
import shutil
import subprocess
import tarfile
import zipfile

import pydicom
import pytest
from apache_beam.testing import test_pipeline

from batch_inference import dicom_outputs
from batch_inference import score

_DCIODVFY = shutil.which("dciodvfy")


def _score(tiny_export, inputs, output_dir, *extra):
  argv = [f"--model_dir={tiny_export}", f"--inputs={','.join(str(i) for i in inputs)}", f"--output_dir={output_dir}",
          "--gradcam=true", "--dicom_outputs=true", *extra]
  return score.run(argv, test_pipeline=test_pipeline.TestPipeline())


def _inputs(root: pathlib.Path, make) -> pathlib.Path:
  inputs = root / "in"
  inputs.mkdir()
  (inputs / "d.dcm").write_bytes(make.dicom(make.pixels(4), sex="F", patient_name="Doe^Jane", **make.DATES))
  (inputs / "young.dcm").write_bytes(make.dicom(make.pixels(5), sex="M"))  # no dates: no CA, no SDS
  (inputs / "p.png").write_bytes(make.png(make.pixels(6)))
  no_study = pydicom.dcmread(io.BytesIO(make.dicom(make.pixels(7), sex="M")))
  del no_study.StudyInstanceUID
  out = io.BytesIO()
  no_study.save_as(out, enforce_file_format=True)
  (inputs / "nostudy.dcm").write_bytes(out.getvalue())
  with zipfile.ZipFile(inputs / "z.zip", "w") as archive:
    archive.writestr("zd.dcm", make.dicom(make.pixels(8), sex="M", **make.DATES))
  member = make.dicom(make.pixels(9), sex="F", **make.DATES)
  with tarfile.open(inputs / "t.tar.gz", "w:gz") as archive:
    info = tarfile.TarInfo("td.dcm")
    info.size = len(member)
    archive.addfile(info, io.BytesIO(member))
  (root / "meta.csv").write_text("id,male\np,true\n")
  return inputs


def _dciodvfy_errors(path: pathlib.Path) -> list[str]:
  result = subprocess.run([_DCIODVFY, str(path)], capture_output=True, text=True, check=False)
  return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_scored_dicoms_get_a_valid_sr_and_sc_in_their_study(tiny_export, make, outputs_of, tmp_path):
  inputs = _inputs(tmp_path, make)
  _score(tiny_export, [inputs / "*"], tmp_path / "out", f"--metadata_csv={tmp_path / 'meta.csv'}")
  out = outputs_of(tmp_path / "out")
  run_dir = pathlib.Path(out["run_dir"])
  rows = {r["id"]: r for r in out["predictions"]}
  assert set(rows) == {"d", "young", "p", "nostudy", "z.zip!zd.dcm", "t.tar.gz!td.dcm"}
  assert rows["p"]["dicom_status"] == "not_dicom" and "dicom_sr_path" not in rows["p"]
  # A DICOM whose outputs cannot be placed in a study keeps its row and says why.
  assert rows["nostudy"]["dicom_status"].startswith("failed:") and "StudyInstanceUID" in rows["nostudy"]["dicom_status"]
  assert rows["nostudy"]["boneage_months"] is not None
  assert out["manifest"]["files"]["dicom_dir"] == ["dicom/"]
  assert out["summary"]["dicom_outputs_by_status"] == {"written": 4, "not_dicom": 1, "failed": 1}
  for example_id in ("d", "young", "z.zip!zd.dcm", "t.tar.gz!td.dcm"):
    row = rows[example_id]
    assert row["dicom_status"] == "written", row
    source = pydicom.dcmread(_source_bytes(inputs, example_id),
                             stop_before_pixels=True)
    sr = pydicom.dcmread(run_dir / row["dicom_sr_path"])
    sc = pydicom.dcmread(run_dir / row["dicom_sc_path"])
    for made in (sr, sc):
      assert made.StudyInstanceUID == source.StudyInstanceUID
      assert made.PatientName == source.PatientName and made.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    values = _numeric_values(sr)
    assert values["Bone age"] == pytest.approx(row["boneage_months"], abs=0.051)  # rows: 0.1 month
    if row["chronological_age_months"] is None:
      assert "Age" not in values and "Bone age SD score (Greulich-Pyle, Brush Foundation)" not in values
    else:
      assert values["Age"] == pytest.approx(row["chronological_age_months"], abs=0.051)  # rows: 0.1 month
      assert values["Bone age SD score (Greulich-Pyle, Brush Foundation)"] == pytest.approx(row["sds"], abs=1e-3)
  assert rows["d"]["sds_reading"] in ("advanced", "normal", "delayed")
  assert (rows["young"]["sds"], rows["young"]["sds_missing_reason"]) == (None, "chronological_age_unknown")


def _source_bytes(inputs: pathlib.Path, example_id: str):
  if example_id.startswith("t.tar.gz!"):
    with tarfile.open(inputs / "t.tar.gz") as archive:
      return io.BytesIO(archive.extractfile(example_id.split("!", 1)[1]).read())
  if example_id.startswith("z.zip!"):
    with zipfile.ZipFile(inputs / "z.zip") as archive:
      return io.BytesIO(archive.read(example_id.split("!", 1)[1]))
  return str(inputs / f"{example_id}.dcm")


def _numeric_values(sr) -> dict:
  """{concept name meaning: value} of every NUM item in the SR tree."""
  found = {}

  def walk(items):
    for item in items:
      if item.ValueType == "NUM":
        found[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
      walk(item.get("ContentSequence", []))

  walk(sr.ContentSequence)
  return found


@pytest.mark.skipif(_DCIODVFY is None,
                    reason="dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")
def test_sr_and_sc_pass_dciodvfy_without_errors(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  (inputs / "d.dcm").write_bytes(make.dicom(make.pixels(4), sex="F", patient_name="Doe^Jane", **make.DATES))
  _score(tiny_export, [inputs / "*"], tmp_path / "out")
  out = outputs_of(tmp_path / "out")
  row = out["predictions"][0]
  run_dir = pathlib.Path(out["run_dir"])
  for key in (dicom_outputs.SR_PATH_KEY, dicom_outputs.SC_PATH_KEY):
    assert _dciodvfy_errors(run_dir / row[key]) == []
  # The check can fail: an SC without its Type 2C laterality is an error.
  broken = pydicom.dcmread(run_dir / row[dicom_outputs.SC_PATH_KEY])
  del broken.Laterality
  broken.save_as(tmp_path / "broken.dcm")
  assert _dciodvfy_errors(tmp_path / "broken.dcm")


def test_uids_are_deterministic_per_source_model_and_sex(make, tmp_path):
  path = tmp_path / "d.dcm"
  path.write_bytes(make.dicom(make.pixels(4), sex="F", **make.DATES))
  header = dicom_outputs.read_source_header(str(path))
  model = dicom_outputs.ModelIdentity("abc", "bone-age tiny regression", "0.1.0")
  other = dicom_outputs.ModelIdentity("def", "bone-age tiny regression", "0.1.0")
  first = dicom_outputs.output_uids(header, model, "F")
  assert first == dicom_outputs.output_uids(header, model, "F")
  assert first["sr_sop"] != dicom_outputs.output_uids(header, model, "M")["sr_sop"]
  assert first["sr_sop"] != dicom_outputs.output_uids(header, other, "F")["sr_sop"]
  assert len(set(first.values())) == 4
