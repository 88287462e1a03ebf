"""boneage-score reading gs:// inputs and writing gs:// outputs, against a local GCS emulator.

The test starts `gcp-storage-emulator` on 127.0.0.1 (a free port, in memory)
and points Google's storage client at it with STORAGE_EMULATOR_HOST; Beam's
GCS filesystem then lists, reads, writes, renames and deletes objects there
with no network and no credentials. The model stays local: TensorFlow's own
gs:// client has no endpoint setting and always calls www.googleapis.com.
"""

import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile

import pytest

BUCKET = "bone-age-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def gcs_emulator():
  """STORAGE_EMULATOR_HOST of a running emulator holding an empty bucket."""
  port = _free_port()
  proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"), "start",
                           "--host=127.0.0.1", f"--port={port}", f"--default-bucket={BUCKET}", "--in-memory", "-q"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "no port"
      time.sleep(0.1)
  yield f"http://127.0.0.1:{port}"
  proc.terminate()
  proc.wait(timeout=30)


def _bucket(host: str):
  from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
  from google.cloud import storage  # pylint: disable=g-import-not-at-top

  os.environ["STORAGE_EMULATOR_HOST"] = host  # read when the client is made
  try:
    return storage.Client(project="test", credentials=AnonymousCredentials()).bucket(BUCKET)
  finally:
    del os.environ["STORAGE_EMULATOR_HOST"]


_READ_CHILD = """
import json, sys
from batch_inference import results
out = results.read_run(sys.argv[1])
print("RUN_JSON " + json.dumps({k: out[k] for k in ("run_id", "run_dir", "manifest", "summary", "predictions",
                                                    "rejects")}))
"""


@pytest.mark.slow
def test_score_reads_and_writes_gs_through_beam_filesystems(gcs_emulator, tiny_export, make, tmp_path):
  bucket = _bucket(gcs_emulator)
  for i in range(3):
    bucket.blob(f"in/{i}.png").upload_from_string(make.png(make.pixels(i)))
  archive = io.BytesIO()
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("a.png", make.png(make.pixels(10)))
    z.writestr("b.dcm", make.dicom(make.pixels(11), sex="F"))
  bucket.blob("in/batch.zip").upload_from_string(archive.getvalue())
  bucket.blob("in/corrupt.png").upload_from_string(make.png(make.pixels(12))[:50])
  bucket.blob("meta.csv").upload_from_string("id,male\n0,M\n1,F\n2,M\na,F\ncorrupt,M\n")

  env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator, "TF_CPP_MIN_LOG_LEVEL": "2"}
  output_dir = f"gs://{BUCKET}/scores"
  proc = subprocess.run(
      [sys.executable, "-m", "batch_inference.score", f"--model_dir={tiny_export}",
       f"--inputs=gs://{BUCKET}/in/*.png,gs://{BUCKET}/in/*.zip", f"--metadata_csv=gs://{BUCKET}/meta.csv",
       f"--output_dir={output_dir}", "--gradcam=true"],
      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  read = subprocess.run([sys.executable, "-c", _READ_CHILD, output_dir], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert read.returncode == 0, read.stderr[-4000:]
  out = json.loads([l for l in read.stdout.splitlines() if l.startswith("RUN_JSON ")][0][len("RUN_JSON "):])

  assert out["run_dir"] == f"{output_dir}/runs/{out['run_id']}"
  assert [r["id"] for r in out["predictions"]] == ["0", "1", "2", "batch.zip!a.png", "batch.zip!b.dcm"]
  assert out["predictions"][0]["file"] == f"gs://{BUCKET}/in/0.png"
  assert [(r["id"], r["reason"]) for r in out["rejects"]] == [("corrupt", "truncated")]
  summary = out["summary"]
  assert (summary["read"], summary["scored"], summary["rejected"], summary["read_equals_scored_plus_rejected"]) == (6, 5, 1, True)
  # Everything was written to the bucket (overlays included), nothing locally.
  names = {b.name for b in bucket.client.list_blobs(BUCKET, prefix=f"scores/runs/{out['run_id']}/")}
  overlays = {f"scores/runs/{out['run_id']}/{r['overlay_path']}" for r in out["predictions"]}
  assert overlays <= names and len(overlays) == 5
  assert not [n for n in names if ".temp-beam" in n]
  assert bucket.blob("scores/LATEST").download_as_text().strip() == out["run_id"]
  assert list(tmp_path.iterdir()) == []
