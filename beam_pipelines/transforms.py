"""Bytes -> letterboxed radiograph: the step training data and scoring share.

The dataset builder and the batch scorer both run `DecodeLetterboxFn`, so a
model sees at serving time exactly the image representation it was trained
on: decode -> quality gate (`bone_age.quality`: reject, or mirror / un-invert
with a flag) -> hand crop (`bone_age.hand_crop`) -> letterbox. Inputs it
cannot use go to the rejects output with their reason (see `rejects`), never
crash the job; every correction the gate makes travels as a quality flag.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import apache_beam as beam

from bone_age import errors
from bone_age import imaging
from bone_age import quality
from beam_pipelines import rejects

import numpy as np

if TYPE_CHECKING:
  from bone_age.letterbox import LetterboxTransform

COUNTER_NAMESPACE = rejects.COUNTER_NAMESPACE
FLAGGED_COUNTER_PREFIX = "flagged_"  # + a quality flag code: images let through with that flag


@dataclasses.dataclass
class PreparedImage:
  """One decoded, normalised and letterboxed radiograph.

  Attributes:
    id: Example id (label-table id or file stem).
    source: The input as the user knows it (path or archive member).
    image: (S, S) uint8 letterboxed radiograph, bone bright.
    transform: Where the original pixels lie inside the square (maps heatmaps back).
    patient: Sex / dates from DICOM tags; None for PNG and JPEG.
    original: (H, W) uint8 radiograph as the letterbox saw it (gated and
      cropped: `transform` maps onto it), only with keep_original.
    quality_flags: The gate's decisions on this image, as (code, detail)
      pairs (`bone_age.quality.QualityFlag`); empty when nothing was noticed.
    decoded_hw: (height, width) of the decoded radiograph, before the hand crop.
    crop_box: The hand crop (`bone_age.hand_crop.CropBox`) in the gated
      radiograph's pixels; None when the image was not cropped.
  """
  id: str
  source: str
  image: np.ndarray
  transform: LetterboxTransform
  patient: imaging.PatientInfo | None
  original: np.ndarray | None = None
  quality_flags: tuple = ()
  decoded_hw: tuple = ()
  crop_box: object | None = None


class DecodeLetterboxFn(beam.DoFn):
  """(id, source, data_bytes) -> PreparedImage, or a reject.

  Decoding checks the header size against `max_pixels` before allocating
  pixels, so a decompression bomb is refused, not decoded. `quality_gate`
  is the gate's policy (strict, flag or off; see `bone_age.quality`); the
  hand crop runs whenever the gate does.
  """

  def __init__(self, size_px: int, max_pixels: int = imaging.DEFAULT_MAX_PIXELS, keep_original: bool = False,
               quality_gate: str = quality.DEFAULT_POLICY):
    super().__init__()
    if quality_gate not in quality.POLICIES:
      raise ValueError(f"quality_gate must be one of {quality.POLICIES}, got {quality_gate!r}")
    self._quality_gate = quality_gate
    self._size_px = int(size_px)
    self._max_pixels = int(max_pixels)
    self._keep_original = bool(keep_original)
    self._decoded = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "decoded")

  def setup(self):
    # cv2 / pydicom load here, once per worker, not when the job is defined.
    from bone_age import hand_crop  # pylint: disable=g-import-not-at-top
    from bone_age import letterbox  # pylint: disable=g-import-not-at-top
    self._letterbox = letterbox.letterbox
    self._crop = hand_crop.crop_to_hand

  def process(self, element: tuple[str, str, bytes]):
    example_id, source, data = element
    try:
      radiograph = imaging.decode_radiograph(data, source, max_pixels=self._max_pixels)
      gated = quality.apply_gate(radiograph, source, self._quality_gate)
      pixels, crop_box = gated.pixels, None
      if self._quality_gate != quality.OFF:
        pixels, crop_box = self._crop(pixels, gated.hand)
      square, transform = self._letterbox(pixels, self._size_px)
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
    for flag in gated.flags:
      beam.metrics.Metrics.counter(COUNTER_NAMESPACE, FLAGGED_COUNTER_PREFIX + flag.code).inc()
    yield PreparedImage(
        id=example_id,
        source=source,
        image=square,
        transform=transform,
        patient=radiograph.patient,
        original=np.ascontiguousarray(pixels) if self._keep_original else None,
        quality_flags=tuple((f.code, f.detail) for f in gated.flags),
        decoded_hw=tuple(radiograph.pixels.shape[:2]),
        crop_box=crop_box)


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
