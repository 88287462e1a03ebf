"""Small numpy files beside an export (calibration scores, OOD statistics), on disk or gs://.

Exports may live on GCS (Vertex AI writes them there), so every file goes
through tf.io.gfile; TensorFlow is imported only when a file is touched.
"""

from __future__ import annotations

import io
import os

import numpy as np


def gfile():
  """tf.io.gfile: reads and writes local paths and gs:// alike."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def write_npz(export_dir: str, file_name: str, **arrays) -> str:
  """Writes arrays as export_dir/file_name (an .npz); returns its path."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path = os.path.join(export_dir, file_name)
  with gfile().GFile(path, "wb") as f:
    f.write(buffer.getvalue())
  return path


def read_npz(export_dir: str, file_name: str) -> dict[str, np.ndarray] | None:
  """The arrays of export_dir/file_name, or None where the export has no such file."""
  path = os.path.join(export_dir, file_name)
  if not gfile().exists(path):
    return None
  with gfile().GFile(path, "rb") as f:
    with np.load(io.BytesIO(f.read())) as data:
      return {name: data[name] for name in data.files}
