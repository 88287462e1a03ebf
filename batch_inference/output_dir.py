"""Staging and swapping the scorer's outputs, and the run summary.

A run writes everything into `<output_dir>/.staging-<uuid>/`; only when the
pipeline has finished are the outputs moved into place, replacing the
previous run's (its overlays included). A failed or killed run therefore
never leaves partial or mixed files in `output_dir`, and a rerun never
appends duplicates.
"""

from __future__ import annotations

import collections
import json
import os
import posixpath
import shutil
import uuid

from batch_inference import overlays
from batch_inference import records

STAGING_PREFIX = ".staging-"
SUMMARY_JSON = "summary.json"
OUTPUT_NAMES = (records.PREDICTIONS_CSV, records.PREDICTIONS_JSONL, records.REJECTS_JSONL, SUMMARY_JSON,
                overlays.OVERLAYS_DIR)


def _fs():
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  return FileSystems


def _is_local(path: str) -> bool:
  return "://" not in path


def join(*parts: str) -> str:
  return _fs().join(*parts) if not _is_local(parts[0]) else os.path.join(*parts)


class StagingDir:
  """A private directory inside output_dir that becomes the outputs on commit()."""

  def __init__(self, output_dir: str):
    self.output_dir = output_dir.rstrip("/") if not _is_local(output_dir) else os.path.abspath(output_dir)
    self.path = join(self.output_dir, STAGING_PREFIX + uuid.uuid4().hex[:12])

  def create(self) -> None:
    if _is_local(self.path):
      os.makedirs(os.path.join(self.path, overlays.OVERLAYS_DIR), exist_ok=True)
    # Object stores have no directories: files create their prefixes.

  def read_text(self, name: str) -> str | None:
    path = join(self.path, name)
    if not _fs().exists(path):
      return None
    with _fs().open(path, compression_type="uncompressed") as f:
      return f.read().decode("utf-8")

  def write_text(self, name: str, text: str) -> None:
    with _fs().create(join(self.path, name)) as f:
      f.write(text.encode("utf-8"))

  def list_overlays(self) -> list[str]:
    pattern = join(self.path, overlays.OVERLAYS_DIR, "*.png")
    return [m.path for m in _fs().match([pattern])[0].metadata_list]

  def delete(self, paths: list[str]) -> None:
    if paths:
      _fs().delete(paths)

  def delete_tree(self) -> None:
    """Removes this staging dir (a failed run leaves the previous outputs alone)."""
    if _is_local(self.path):
      shutil.rmtree(self.path, ignore_errors=True)
      return
    try:
      self.delete([m.path for m in _fs().match([join(self.path, "**")])[0].metadata_list])
    except Exception:  # pylint: disable=broad-except  (cleanup must not hide the real error)
      pass

  def commit(self) -> None:
    """Moves the staged outputs over the previous ones, then removes every staging dir."""
    if _is_local(self.path):
      self._commit_local()
    else:
      self._commit_remote()

  def _commit_local(self) -> None:
    trash = os.path.join(self.output_dir, STAGING_PREFIX + "old-" + uuid.uuid4().hex[:12])
    os.makedirs(trash)
    for name in OUTPUT_NAMES:
      final = os.path.join(self.output_dir, name)
      staged = os.path.join(self.path, name)
      if os.path.lexists(final):
        os.replace(final, os.path.join(trash, name))
      if os.path.lexists(staged):
        os.replace(staged, final)
    # Our own leftovers, and those of killed runs (never shown as outputs).
    for entry in os.listdir(self.output_dir):
      if entry.startswith(STAGING_PREFIX):
        shutil.rmtree(os.path.join(self.output_dir, entry), ignore_errors=True)

  def _commit_remote(self) -> None:
    # Object stores cannot swap a directory atomically: delete the previous
    # outputs, then rename (copy + delete) each staged object into place.
    fs = _fs()
    old = [m.path for m in fs.match([join(self.output_dir, overlays.OVERLAYS_DIR, "*")])[0].metadata_list]
    old += [join(self.output_dir, n) for n in OUTPUT_NAMES[:-1] if fs.exists(join(self.output_dir, n))]
    self.delete(old)
    staged = [m.path for m in fs.match([join(self.path, "**")])[0].metadata_list]
    targets = [join(self.output_dir, p[len(self.path):].lstrip("/")) for p in staged]
    keep = [(s, t) for s, t in zip(staged, targets) if not t.endswith(records.READ_COUNT_FILE)]
    if keep:
      fs.rename([s for s, _ in keep], [t for _, t in keep])
    leftovers = [m.path for m in fs.match([join(self.output_dir, STAGING_PREFIX + "*")])[0].metadata_list]
    self.delete(leftovers)


def _jsonl(text: str | None) -> list[dict]:
  return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def finalize(staging: StagingDir, *, group_names: list[str], extra: dict) -> dict:
  """Completes the staged outputs and returns the summary (also written as summary.json).

  Writes empty predictions files when nothing was scored, removes overlays
  of rows that lost a duplicate-id contest, and counts read / scored /
  rejected. `read` comes from the per-file tallies taken while reading, so
  `read == scored + rejected` is a real check, reported as `accounted`.
  """
  predictions = staging.read_text(records.PREDICTIONS_JSONL)
  if predictions is None:
    records.write_predictions([], staging.path, group_names)
    predictions = ""
  rows = _jsonl(predictions)
  reject_rows = _jsonl(staging.read_text(records.REJECTS_JSONL))
  if staging.read_text(records.REJECTS_JSONL) is None:
    staging.write_text(records.REJECTS_JSONL, "")
  read_text = staging.read_text(records.READ_COUNT_FILE)
  read = json.loads(read_text)["read"] if read_text else 0

  referenced = {posixpath.basename(r["overlay_path"]) for r in rows if r.get("overlay_path")}
  stale = [p for p in staging.list_overlays() if posixpath.basename(p.replace("\\", "/")) not in referenced]
  staging.delete(stale)
  staging.delete([join(staging.path, records.READ_COUNT_FILE)] if read_text else [])

  scored = len({(r["id"], r["source"]) for r in rows})
  by_reason = collections.Counter(r["reason"] for r in reject_rows)
  summary = {
      "read": read,
      "scored": scored,
      "rejected": len(reject_rows),
      "accounted": read == scored + len(reject_rows),
      "rejected_by_reason": dict(sorted(by_reason.items())),
      "prediction_rows": len(rows),
      "sex_sources": dict(sorted(collections.Counter(r["sex_source"] for r in rows).items())),
      "chronological_age_sources": dict(sorted(
          collections.Counter(r["chronological_age_source"] or "unknown" for r in rows).items())),
      "overlays": len(referenced),
      "age_groups": list(group_names),
      **extra,
  }
  staging.write_text(SUMMARY_JSON, json.dumps(summary, indent=2, sort_keys=True) + "\n")
  return summary


def format_summary(summary: dict) -> str:
  """The few lines printed at the end of a run."""
  lines = [f"read {summary['read']} = scored {summary['scored']} + rejected {summary['rejected']}"
           + ("" if summary["accounted"] else "  (MISMATCH: some inputs are unaccounted for)")]
  for reason, count in summary["rejected_by_reason"].items():
    lines.append(f"  rejected {reason}: {count}")
  lines.append(f"sex from: {summary['sex_sources']}; chronological age from: {summary['chronological_age_sources']}")
  lines.append(f"outputs in {summary.get('output_dir', '')}")
  return "\n".join(lines)
