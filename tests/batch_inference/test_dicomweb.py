"""STOW-RS into a real Orthanc (with its DICOMweb plugin) started on 127.0.0.1 by the test."""

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from apache_beam.testing import test_pipeline

from batch_inference import score

_ORTHANC = shutil.which("Orthanc")
_DICOMWEB_PLUGIN = pathlib.Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_STARTUP_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(
    _ORTHANC is None or not _DICOMWEB_PLUGIN.exists(),
    reason="Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc and orthanc-dicomweb; "
           ".ci/run installs them)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get_json(url: str):
  with urllib.request.urlopen(url, timeout=10) as response:
    body = response.read()
  return json.loads(body) if body else []


@pytest.fixture
def orthanc(tmp_path):
  """Base URL of a fresh Orthanc with DICOMweb, its own storage in tmp, HTTP only, no auth, local only."""
  port = _free_port()
  config = {
      "Name": "boneage-test", "StorageDirectory": str(tmp_path / "orthanc-db"),
      "IndexDirectory": str(tmp_path / "orthanc-db"), "HttpPort": port, "RemoteAccessAllowed": False,
      "AuthenticationEnabled": False, "DicomServerEnabled": False, "Plugins": [str(_DICOMWEB_PLUGIN)],
      "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
  config_path = tmp_path / "orthanc.json"
  config_path.write_text(json.dumps(config))
  log = (tmp_path / "orthanc.log").open("w")
  process = subprocess.Popen([_ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while True:
      try:
        _get_json(f"{base}/dicom-web/studies")
        break
      except OSError:
        if process.poll() is not None or time.monotonic() > deadline:
          pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield base
  finally:
    process.terminate()
    try:
      process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      process.kill()
    log.close()


def _score(tiny_export, inputs_dir, output_dir, dicomweb_url):
  argv = [f"--model_dir={tiny_export}", f"--inputs={inputs_dir}/*", f"--output_dir={output_dir}", "--gradcam=true",
          f"--dicomweb_url={dicomweb_url}"]
  return score.run(argv, test_pipeline=test_pipeline.TestPipeline())


def test_sr_and_sc_land_in_the_source_study_once(tiny_export, make, outputs_of, orthanc, tmp_path):
  import pydicom  # pylint: disable=g-import-not-at-top

  inputs = tmp_path / "in"
  inputs.mkdir()
  source_bytes = make.dicom(make.pixels(4), sex="F", **make.DATES)
  (inputs / "d.dcm").write_bytes(source_bytes)
  (inputs / "nosex.dcm").write_bytes(make.dicom(make.pixels(6), sex=None))  # rejected: no outputs to send
  source = pydicom.dcmread(inputs / "d.dcm", stop_before_pixels=True)
  # The PACS already holds the radiograph, as it would in practice.
  request = urllib.request.Request(f"{orthanc}/instances", data=source_bytes, method="POST")
  with urllib.request.urlopen(request, timeout=10):
    pass
  study_url = f"{orthanc}/dicom-web/studies/{source.StudyInstanceUID}/instances"
  assert len(_get_json(study_url)) == 1

  dicomweb_url = f"{orthanc}/dicom-web"
  runs = []
  for attempt in ("first", "second"):
    _score(tiny_export, inputs, tmp_path / attempt, dicomweb_url)
    out = outputs_of(tmp_path / attempt)
    assert out["summary"]["read_equals_scored_plus_rejected"] and [r["id"] for r in out["rejects"]] == ["nosex"]
    rows = {r["id"]: r for r in out["predictions"]}
    assert rows["d"]["dicomweb_status"] == "stored", rows["d"]
    runs.append((out, rows["d"]))

  # Orthanc holds the source, the SR and the SC in the source study, once each after two runs.
  held = _get_json(study_url)
  sop_classes = sorted(item["00080016"]["Value"][0] for item in held)
  assert sop_classes == sorted([str(source.SOPClassUID), pydicom.uid.ComprehensiveSRStorage,
                                pydicom.uid.SecondaryCaptureImageStorage]), held
  made_uids = set()
  for out, row in runs:
    run_dir = pathlib.Path(out["run_dir"])
    made_uids |= {str(pydicom.dcmread(run_dir / row[k], stop_before_pixels=True).SOPInstanceUID)
                  for k in ("dicom_sr_path", "dicom_sc_path")}
  assert len(made_uids) == 2
  assert {item["00080018"]["Value"][0] for item in held} == made_uids | {str(source.SOPInstanceUID)}
  assert len(_get_json(f"{orthanc}/studies")) == 1


def test_an_unreachable_pacs_is_reported_not_fatal(tiny_export, make, outputs_of, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  (inputs / "d.dcm").write_bytes(make.dicom(make.pixels(4), sex="F", **make.DATES))
  _score(tiny_export, inputs, tmp_path / "out", f"http://127.0.0.1:{_free_port()}/dicom-web")
  out = outputs_of(tmp_path / "out")
  row = out["predictions"][0]
  assert row["dicom_status"] == "written" and row["dicomweb_status"].startswith("failed:")
  assert out["summary"]["scored"] == 1 and out["summary"]["dicomweb_by_status"] == {"failed": 1}


def test_a_pacs_that_cannot_be_connected_to_is_tried_once_per_worker(make):
  import pydicom  # pylint: disable=g-import-not-at-top
  from batch_inference import dicomweb  # pylint: disable=g-import-not-at-top
  sender = dicomweb.StowSender(f"http://127.0.0.1:{_free_port()}/dicom-web")
  with pydicom.filebase.DicomBytesIO(make.dicom(make.pixels(4), sex="F", **make.DATES)) as f:
    dataset = pydicom.dcmread(f)
  first, second = sender.send([dataset]), sender.send([dataset])
  assert first.startswith("failed: ConnectionError"), first
  assert second.startswith("failed: not sent, the PACS was unreachable earlier") and "ConnectionError" in second, second
  assert sender.send([]) == dicomweb.STORED  # nothing to send is never a failure
