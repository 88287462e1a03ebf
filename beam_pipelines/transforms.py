"""Bytes -> letterboxed radiograph: the step training data and scoring share.

The dataset builder and the batch scorer both run `DecodeLetterboxFn`, so a
model sees at serving time exactly the image representation it was trained
on (the same decoder, normalisation and letterbox). Inputs it cannot use go to
the rejects output with their reason (see `rejects`), never crash the job.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import apache_beam as beam

from bone_age import errors
from bone_age import imaging
from beam_pipelines import rejects

if TYPE_CHECKING:
  import numpy as np
  from bone_age.letterbox import LetterboxTransform

COUNTER_NAMESPACE = rejects.COUNTER_NAMESPACE


@dataclasses.dataclass
class PreparedImage:
  """One decoded, normalised and letterboxed radiograph.

  Attributes:
    id: Example id (label-table id or file stem).
    source: The input as the user knows it (path or archive member).
    image: (S, S) uint8 letterboxed radiograph, bone bright.
    transform: Where the original pixels lie inside the square (maps heatmaps back).
    patient: Sex / dates from DICOM tags; None for PNG and JPEG.
    original: (H, W) uint8 full normalised radiograph, only with keep_original.
  """
  id: str
  source: str
  image: np.ndarray
  transform: LetterboxTransform
  patient: imaging.PatientInfo | None
  original: np.ndarray | None = None


class DecodeLetterboxFn(beam.DoFn):
  """(id, source, data_bytes) -> PreparedImage, or a reject.

  Decoding checks the header size against `max_pixels` before allocating
  pixels, so a decompression bomb is refused, not decoded.
  """

  def __init__(self, size_px: int, max_pixels: int = imaging.DEFAULT_MAX_PIXELS, keep_original: bool = False):
    super().__init__()
    self._size_px = int(size_px)
    self._max_pixels = int(max_pixels)
    self._keep_original = bool(keep_original)
    self._decoded = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "decoded")

  def setup(self):
    # cv2 / pydicom load here, once per worker, not when the job is defined.
    from bone_age import letterbox  # pylint: disable=g-import-not-at-top
    self._letterbox = letterbox.letterbox

  def process(self, element: tuple[str, str, bytes]):
    example_id, source, data = element
    try:
      radiograph = imaging.decode_radiograph(data, source, max_pixels=self._max_pixels)
      square, transform = self._letterbox(radiograph.pixels, self._size_px)
    except errors.InputError as e:
      yield rejects.reject(e, example_id)
      return
    except Exception as e:  # pylint: disable=broad-except
      # A decoder library failing on odd bytes is still a bad input, not a
      # reason to lose the whole job; the detail keeps the library's words.
      logging.warning("Unexpected decoder failure on %s: %r", source, e)
      yield rejects.reject(
          errors.InputError(source, errors.NOT_AN_IMAGE, f"cannot decode: {type(e).__name__}: {e}"), example_id)
      return
    self._decoded.inc()
    yield PreparedImage(
        id=example_id,
        source=source,
        image=square,
        transform=transform,
        patient=radiograph.patient,
        original=radiograph.pixels if self._keep_original else None)


def read_bytes(path: str) -> bytes:
  """Whole file through Beam's filesystems (local paths, gs://, ...)."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  with FileSystems.open(path, compression_type="uncompressed") as f:
    return f.read()


class ReadBytesFn(beam.DoFn):
  """(id, path or None) -> (id, path, bytes), or a missing-file reject.

  The path is None when the label table names an id that has no image file;
  that, and a file vanishing between listing and reading, is `missing_file`.
  """

  def __init__(self):
    super().__init__()
    self._read = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "files_read")

  def process(self, element: tuple[str, str | None]):
    example_id, path = element
    if path is None:
      yield rejects.reject(errors.InputError(example_id, errors.MISSING_FILE, "no image file for this id"), example_id)
      return
    try:
      data = read_bytes(path)
    except (FileNotFoundError, OSError, IOError) as e:
      yield rejects.reject(errors.InputError(path, errors.MISSING_FILE, f"cannot read the file: {e}"), example_id)
      return
    self._read.inc()
    yield example_id, path, data
