"""Which model, trained how, made an output: the fields every output carries.

A CSV from the synthetic-phantom demo model must not look like one from a
real model. Every output of the scorer names the model by the sha256 of its
export's weights file (model.keras; `model_id` is its first 12 hex digits),
the experiment, the checkpoint step and why that checkpoint, the dataset and
its version, the software version, the run's start time (UTC), and, per
row, the sha256 of the input's bytes.
"""

from __future__ import annotations

import hashlib
import os

RESEARCH_USE_NOTICE = "Research use only, not a medical device."
MODEL_ID_HEX_DIGITS = 12
DATASET_NAME = "rsna_bone_age"
PACKAGE_NAME = "bone-age"
_CHUNK_BYTES = 1 << 22

# Run-level fields copied into every prediction row, in this order.
ROW_FIELDS = ("model_id", "experiment", "checkpoint_step", "checkpoint_reason", "dataset", "dataset_version",
              "software_version", "run_started_utc")


def bytes_sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
  """sha256 of a file, local or gs:// (tf.io.gfile), read in chunks."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def model_sha256(export_dir: str, export_metadata: dict | None = None) -> str:
  """sha256 of the export's weights file (model.keras): the model's identity."""
  from bone_age import export  # pylint: disable=g-import-not-at-top

  if export_metadata is None:
    export_metadata = export.read_metadata(export_dir)
  return file_sha256(os.path.join(export_dir, export_metadata.get("keras_file", export.KERAS_FILE)))


def model_id(sha256_hex: str) -> str:
  return sha256_hex[:MODEL_ID_HEX_DIGITS]


def software_version() -> str:
  """The installed bone-age package's version ('unknown' when run from an uninstalled tree)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  try:
    return importlib.metadata.version(PACKAGE_NAME)
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def run_provenance(export_dir: str, export_metadata: dict, run_started_utc: str) -> dict:
  """The run-level provenance of a scoring run (summary.json's `provenance`; ROW_FIELDS go into every row).

  An export written before checkpoint_step / checkpoint_reason existed gives
  its train_steps with the reason 'last' (such exports always held the final
  weights) and says so in `checkpoint_reason_note`.
  """
  sha = model_sha256(export_dir, export_metadata)
  step = export_metadata.get("checkpoint_step")
  reason = export_metadata.get("checkpoint_reason")
  out = {
      "model_id": model_id(sha),
      "model_sha256": sha,
      "model_backbone": export_metadata.get("backbone"),
      "experiment": export_metadata.get("experiment"),
      "checkpoint_step": step if step is not None else export_metadata.get("train_steps"),
      "checkpoint_reason": reason if reason is not None else ("last" if export_metadata.get("train_steps") else None),
      "dataset": export_metadata.get("dataset_name", DATASET_NAME),
      "dataset_version": export_metadata.get("dataset_version"),
      "dataset_config": export_metadata.get("dataset_config"),
      "dataset_synthetic": export_metadata.get("dataset_synthetic"),
      "software_version": software_version(),
      "run_started_utc": run_started_utc,
      "notice": RESEARCH_USE_NOTICE,
  }
  if reason is None and out["checkpoint_reason"] is not None:
    out["checkpoint_reason_note"] = "export predates checkpoint_reason; its weights are the last step's"
  return out


def row_fields(run: dict) -> dict:
  """The ROW_FIELDS of a run_provenance dict."""
  return {key: run.get(key) for key in ROW_FIELDS}
