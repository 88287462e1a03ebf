"""One directory per scoring run, published by a manifest and a LATEST pointer.

Layout of --output_dir (local or gs://):

  runs/<run id>/started.json   written first: run id, start time, host, pid, inputs
  runs/<run id>/...            the pipeline's files (batch_inference.writers), overlays/
  runs/<run id>/summary.json   counts and options, written after the pipeline
  runs/<run id>/manifest.json  written last: the run is published
  runs/<run id>/failed.json    instead, when the launcher saw the pipeline fail
  LATEST                       the id of the latest published complete run

A run id is the UTC start time plus random hex, so two runs never share a
directory and no run ever writes, moves or deletes another run's files: two
scorers on one output dir both finish complete, and the last to publish
becomes LATEST. A run directory without manifest.json is unpublished (still
running, failed or killed); readers refuse it, and nothing deletes it, since
its launcher may still be alive. LATEST is replaced in one step (os.replace
locally, one object write on GCS), so a reader sees the old or the new id,
never a mix.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket

RUNS_DIR = "runs"
LATEST_FILE = "LATEST"
STARTED_JSON = "started.json"
SUMMARY_JSON = "summary.json"
MANIFEST_JSON = "manifest.json"
FAILED_JSON = "failed.json"

STATUS_COMPLETE = "complete"
# Published so its rejects can be read, but never made LATEST: no input could be read.
STATUS_NOTHING_READ = "nothing_read"


def _fs():
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  return FileSystems


def is_local(path: str) -> bool:
  return "://" not in path


def join(*parts: str) -> str:
  return os.path.join(*parts) if is_local(parts[0]) else _fs().join(*parts)


def normalise_output_dir(output_dir: str) -> str:
  return os.path.abspath(output_dir) if is_local(output_dir) else output_dir.rstrip("/")


def read_text(path: str) -> str | None:
  """The file's text, or None when it does not exist."""
  if not _fs().exists(path):
    return None
  with _fs().open(path, compression_type="uncompressed") as f:
    return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
  with _fs().create(path, compression_type="uncompressed") as f:
    f.write(text.encode("utf-8"))


def replace_text(path: str, text: str) -> None:
  """Writes `path` so readers see the old content or the new, never a partial file."""
  if not is_local(path):
    write_text(path, text)  # an object appears whole when its upload completes
    return
  tmp = f"{path}.tmp-{secrets.token_hex(4)}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _utc_now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def new_run_id(now: datetime.datetime | None = None) -> str:
  """'<UTC start, to the second>-<8 random hex>': sorts by start time, never collides."""
  return f"{(now or _utc_now()):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def run_dir(output_dir: str, run_id: str) -> str:
  return join(normalise_output_dir(output_dir), RUNS_DIR, run_id)


class Run:
  """A run directory: created at start, published at the end."""

  def __init__(self, output_dir: str, run_id: str | None = None):
    self.output_dir = normalise_output_dir(output_dir)
    self.run_id = run_id or new_run_id()
    self.path = run_dir(self.output_dir, self.run_id)
    self.started_utc = _utc_now().isoformat(timespec="seconds")

  def start(self, inputs: list[str]) -> None:
    """Creates the directory and started.json (so an unpublished run says what it is)."""
    from batch_inference import overlays  # pylint: disable=g-import-not-at-top

    if is_local(self.path):
      os.makedirs(os.path.join(self.path, overlays.OVERLAYS_DIR))  # fails if the id were ever reused
    write_text(join(self.path, STARTED_JSON), json.dumps({
        "run_id": self.run_id, "started_utc": self.started_utc, "host": socket.gethostname(), "pid": os.getpid(),
        "inputs": list(inputs)}, indent=2, sort_keys=True) + "\n")

  def shard_files(self, prefix: str, suffix: str) -> list[str]:
    """Names (relative to the run dir) of the shards `<prefix>-*<suffix>`: a handful, not every row."""
    pattern = join(self.path, f"{prefix}-*{suffix}")
    matched = _fs().match([pattern])[0].metadata_list
    return sorted(m.path.replace("\\", "/").rsplit("/", 1)[-1] for m in matched)

  def read_json(self, name: str) -> dict:
    text = read_text(join(self.path, name))
    if text is None:
      raise FileNotFoundError(f"{join(self.path, name)} was not written: the pipeline did not finish")
    return json.loads(text)

  def publish(self, summary: dict, files: dict, status: str = STATUS_COMPLETE) -> dict:
    """Writes summary.json, then manifest.json; a complete run then becomes LATEST.

    Args:
      summary: What summary.json holds (counts and options).
      files: {kind: [names relative to the run dir]} for the manifest.
      status: STATUS_COMPLETE, or STATUS_NOTHING_READ (published, not made LATEST).

    Returns:
      The manifest.
    """
    write_text(join(self.path, SUMMARY_JSON), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    manifest = {
        "run_id": self.run_id,
        "status": status,
        "started_utc": self.started_utc,
        "finished_utc": _utc_now().isoformat(timespec="seconds"),
        "files": {**files, "summary": [SUMMARY_JSON]},
        "counts": {k: summary[k] for k in ("read", "scored", "rejected", "prediction_rows", "overlays")},
    }
    write_text(join(self.path, MANIFEST_JSON), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if status == STATUS_COMPLETE:
      replace_text(join(self.output_dir, LATEST_FILE), self.run_id + "\n")
    return manifest

  def mark_failed(self, error: BaseException) -> None:
    """Records why the run failed; its directory stays, unpublished, for inspection."""
    try:
      write_text(join(self.path, FAILED_JSON), json.dumps({
          "run_id": self.run_id, "started_utc": self.started_utc, "failed_utc": _utc_now().isoformat(timespec="seconds"),
          "error": f"{type(error).__name__}: {error}"[:2000]}, indent=2, sort_keys=True) + "\n")
    except Exception:  # pylint: disable=broad-except  (must not hide the error being reported)
      pass
