"""Reading a published scoring run: the rows, rejects, summary and manifest.

`read_run(output_dir)` reads the run LATEST points to; `read_run(output_dir,
run_id)` any published run. Unpublished run directories (no manifest.json:
still running, failed or killed) are refused, so partial files are never
mistaken for results. Rows are returned sorted, since the sharded writers
keep no order. This reads every row into memory: it is meant for tests,
the demo, benchmarks and small runs; large runs are read shard by shard
(the manifest lists them) with any JSON-lines or CSV reader.
"""

from __future__ import annotations

import csv
import io
import json

from batch_inference import runs


class RunNotFoundError(LookupError):
  """No such run, or no published run yet."""


class RunNotPublishedError(RuntimeError):
  """The run directory exists but has no manifest: running, failed or killed."""


def latest_run_id(output_dir: str) -> str | None:
  """The id LATEST holds, or None before the first complete run."""
  text = runs.read_text(runs.join(runs.normalise_output_dir(output_dir), runs.LATEST_FILE))
  if text is None:
    return None
  return text.strip() or None


def run_status(output_dir: str, run_id: str) -> str:
  """'complete' / 'nothing_read' (published), 'failed', 'unpublished' (running or killed), or 'missing'."""
  path = runs.run_dir(output_dir, run_id)
  manifest = runs.read_text(runs.join(path, runs.MANIFEST_JSON))
  if manifest is not None:
    return json.loads(manifest)["status"]
  if runs.read_text(runs.join(path, runs.FAILED_JSON)) is not None:
    return "failed"
  if runs.read_text(runs.join(path, runs.STARTED_JSON)) is not None:
    return "unpublished"
  return "missing"


def list_runs(output_dir: str) -> list[dict]:
  """[{run_id, status}] of every run directory, oldest first (reads one small file per run)."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  pattern = runs.join(runs.normalise_output_dir(output_dir), runs.RUNS_DIR, "*", runs.STARTED_JSON)
  ids = sorted({m.path.replace("\\", "/").split("/")[-2] for m in FileSystems.match([pattern])[0].metadata_list})
  return [{"run_id": run_id, "status": run_status(output_dir, run_id)} for run_id in ids]


def _jsonl(text: str) -> list[dict]:
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _row_sort_key(row: dict) -> tuple:
  return (str(row["id"]), str(row["file"]), str(row["sex"]))


def _reject_sort_key(record: dict) -> tuple:
  return (str(record.get("file")), str(record.get("reason")), str(record.get("id")), str(record.get("detail")))


def read_run(output_dir: str, run_id: str | None = None) -> dict:
  """Everything a published run wrote, rows sorted.

  Args:
    output_dir: The scorer's --output_dir (local or gs://).
    run_id: A run id (runs/<run id>); default: the one LATEST holds.

  Returns:
    {"run_id", "run_dir", "manifest", "summary", "predictions" (dicts sorted
    by id, file, sex), "rejects" (sorted), "csv_header" (column names),
    "csv_rows" (dicts of strings, sorted like predictions)}.

  Raises:
    RunNotFoundError: no such run, or no complete run yet.
    RunNotPublishedError: the run has no manifest (running, failed or killed).
  """
  if run_id is None:
    run_id = latest_run_id(output_dir)
    if run_id is None:
      raise RunNotFoundError(f"{output_dir}: no complete run yet (no {runs.LATEST_FILE} file)")
  path = runs.run_dir(output_dir, run_id)
  manifest_text = runs.read_text(runs.join(path, runs.MANIFEST_JSON))
  if manifest_text is None:
    status = run_status(output_dir, run_id)
    if status == "missing":
      raise RunNotFoundError(f"{path}: no such run")
    raise RunNotPublishedError(f"{path}: run is {status} (no {runs.MANIFEST_JSON}); its files are not results")
  manifest = json.loads(manifest_text)
  files = manifest["files"]

  def read(name: str) -> str:
    return runs.read_text(runs.join(path, name)) or ""

  predictions = [row for name in files["predictions_jsonl"] for row in _jsonl(read(name))]
  rejects = [record for name in files["rejects_jsonl"] for record in _jsonl(read(name))]
  csv_header, csv_rows = [], []
  for name in files["predictions_csv"]:
    reader = csv.DictReader(io.StringIO(read(name)))
    csv_header = list(reader.fieldnames or csv_header)
    csv_rows.extend(reader)
  return {
      "run_id": run_id,
      "run_dir": path,
      "manifest": manifest,
      "summary": json.loads(read(runs.SUMMARY_JSON)),
      "predictions": sorted(predictions, key=_row_sort_key),
      "rejects": sorted(rejects, key=_reject_sort_key),
      "csv_header": csv_header,
      "csv_rows": sorted(csv_rows, key=_row_sort_key),
  }
