"""The content gate: is this decoded image a usable left-hand radiograph?

Decoding (`imaging`) proves the bytes are an image; this module judges what
the image shows, before the hand crop and the letterbox, identically in the
dataset builder and the scorer. Each decision is either a reject (an
`InputError` with its own reason) or a `QualityFlag` the caller reports; the
gate never changes an image without a flag saying so.

Policy (`--quality_gate`):

| check                                   | strict   | flag           | off  |
|-----------------------------------------|----------|----------------|------|
| degenerate (tiny, blank, absurd aspect) | reject   | reject         | -    |
| DICOM modality / body part not a hand   | reject   | flag           | -    |
| right hand (laterality tag R, or no tag and the thumb on the left) | mirror + flag | mirror + flag | - |
| inverted polarity (PNG / JPEG only)     | invert + flag | invert + flag | - |
| content not hand-like / partial / rotated | reject | flag           | -    |
| hand box under a quarter of the image   | crop + flag | crop + flag | -    |

Degenerate images are rejected under `flag` too: they hold no anatomy for a
model to read, so a bone age for them would be noise whatever the flag.
The image measurements (`measure`) run on a small blurred copy
(`hand_crop.analysis_copy`), so they cost the same whatever the detector size.
`flag` is the default so that a scoring run never loses a usable image to a
doubtful measurement; `strict` suits archives where a non-hand must not get
a bone age (the README's table gives each choice's measured effect).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from bone_age import errors
from bone_age import hand_crop
from bone_age import hand_laterality

STRICT, FLAG, OFF = "strict", "flag", "off"
POLICIES = (STRICT, FLAG, OFF)
DEFAULT_POLICY = FLAG

# Reject reasons (the rejects file's `reason`).
IMAGE_TOO_SMALL = "image_too_small"
BLANK_IMAGE = "blank_image"
ABSURD_ASPECT_RATIO = "absurd_aspect_ratio"
NOT_A_HAND_RADIOGRAPH = "not_a_hand_radiograph"  # the DICOM header says another modality or body part
NOT_A_HAND = "not_a_hand"  # the picture does not look like a hand
REJECT_REASONS = (IMAGE_TOO_SMALL, BLANK_IMAGE, ABSURD_ASPECT_RATIO, NOT_A_HAND_RADIOGRAPH, NOT_A_HAND)

# Flag codes (the predictions' `quality_flags`).
MIRRORED_RIGHT_HAND = "mirrored_right_hand"
INVERTED_POLARITY = "inverted_polarity_corrected"
NON_HAND_DICOM_TAGS = "non_hand_dicom_tags"
NOT_HAND_LIKE = "not_hand_like"
PARTIAL_HAND = "partial_hand"
UNEXPECTED_ORIENTATION = "unexpected_orientation"
SMALL_HAND = "small_hand_cropped"
OUT_OF_DISTRIBUTION = "out_of_distribution"  # set by the scorer from the model's ood_score

# A hand radiograph below this side cannot show its bones (RSNA images are ~1000-2500 px).
MIN_SIDE_PX = 32
MAX_ASPECT_RATIO = 4.0
# Grey levels between the 1st and 99th percentile of the normalised image:
# below this the image is blank (constant, or a few hot pixels on a flat field).
MIN_DYNAMIC_RANGE = 24

# DICOM header values meaning a projection radiograph of the hand.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "OT", "DR"})
HAND_BODY_PARTS = frozenset({"HAND", "WRIST", "FINGER", "THUMB", "EXTREMITY", "UPPEREXTREMITY", "UPPER_EXTREMITY",
                             "ARM", "FOREARM", "BONEAGE", "BONE_AGE"})

# Image measurements' thresholds, set from scripts/quality_table.py's corpus
# (real radiographs, phantoms and non-hand images; README "Quality gate").
# Polarity: centre minus border mean grey (normalised levels); inverted below this.
INVERTED_CONTRAST = -10.0
# A hand's outline has deep dents between its digits and a convex hull it
# fills far less than a trunk, skull or knee fills theirs.
MIN_DEEPEST_CONCAVITY = 0.12
MAX_SOLIDITY = 0.9
# Foreground runs crossing the bottom edge: a forearm is one or two; more are digits cut off.
MAX_BOTTOM_RUNS = 2
# Orientation: the forearm is the hand's widest contact with an edge (this
# share at least); another edge meeting the hand more than the bottom one by
# the margin means the image is turned.
MIN_FOREARM_CONTACT = 0.2
ORIENTATION_MARGIN = 0.15
# Polarity: an inverted export's commonest grey (its background) is bright.
MIN_INVERTED_BACKGROUND = 160
# The palm is the hand's widest solid part: its inscribed circle's radius over
# the outline box's long side. Digits cut off above the palm are far narrower.
MIN_PALM_RADIUS = 0.14
# `hand_laterality.thumb_side_score` below this: a right hand, mirrored. Far
# below where any real left hand of the README's sample scores.
RIGHT_HAND_SCORE = -0.12
SMALL_HAND_AREA_FRACTION = 0.25  # hand box below this share of the image -> SMALL_HAND
# Blurred-copy residual energy over total variance: noise and text score high, radiographs low.
MAX_TEXTURE_RATIO = 2.0


@dataclasses.dataclass(frozen=True)
class QualityFlag:
  """One gate decision that let the image through: a stable code and words."""
  code: str
  detail: str

  def to_text(self) -> str:
    return f"{self.code}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Measurements:
  """What the gate measures on an image (see `measure`)."""
  centre_minus_border: float  # mean grey, normalised levels; negative when the background is brighter
  deepest_concavity: float  # deepest dent of the outline (between digits) over the box's long side
  solidity: float  # outline area over its convex hull's area
  bottom_runs: int
  bottom_contact: float  # share of the bottom edge on the hand
  max_side_contact: float  # the largest share of the top, left or right edge on the hand
  hand_area_fraction: float  # the hand box's share of the image
  texture_ratio: float
  found_hand: bool
  background_level: int = 0  # the commonest grey of the analysis copy
  palm_radius: float = 0.0  # the widest inscribed circle's radius over the box's long side


def check_degenerate(pixels: np.ndarray, source: str) -> None:
  """Raises InputError for an image no model can read (tiny, blank, absurd aspect)."""
  height, width = pixels.shape
  if min(height, width) < MIN_SIDE_PX:
    raise errors.InputError(source, IMAGE_TOO_SMALL,
                            f"{width}x{height} px is too small to show a hand's bones (at least {MIN_SIDE_PX} px a side)")
  aspect = max(height, width) / min(height, width)
  if aspect > MAX_ASPECT_RATIO:
    raise errors.InputError(source, ABSURD_ASPECT_RATIO,
                            f"{width}x{height} px has an aspect ratio of {aspect:.1f}, above {MAX_ASPECT_RATIO:g}")
  small, _ = hand_crop.analysis_copy(pixels)
  low, high = np.percentile(small, (1, 99))
  if high - low < MIN_DYNAMIC_RANGE:
    raise errors.InputError(source, BLANK_IMAGE,
                            f"blank image: 98% of its pixels lie within {high - low:.0f} grey levels "
                            f"(at least {MIN_DYNAMIC_RANGE} needed)")


def _outline(largest: np.ndarray) -> tuple[float, float]:
  """(deepest concavity over the box's long side, solidity) of the largest component."""
  contours, _ = cv2.findContours(largest.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
  if not contours:
    return 0.0, 1.0
  contour = max(contours, key=cv2.contourArea)
  hull_area = cv2.contourArea(cv2.convexHull(contour))
  solidity = cv2.contourArea(contour) / hull_area if hull_area > 0 else 1.0
  if len(contour) < 4:
    return 0.0, solidity
  hull = cv2.convexHull(contour, returnPoints=False)
  try:
    defects = cv2.convexityDefects(contour, hull)
  except cv2.error:  # self-intersecting outline after CHAIN_APPROX_SIMPLE
    return 0.0, solidity
  if defects is None or len(defects) == 0:
    return 0.0, solidity
  _, _, w, h = cv2.boundingRect(contour)
  depth_px = defects.reshape(-1, 4)[:, 3] / 256.0  # OpenCV stores depths as 8.8 fixed point
  return float(depth_px.max() / max(w, h)), solidity


def _runs(line: np.ndarray) -> int:
  padded = np.concatenate([[False], line, [False]])
  return int(np.sum(padded[1:] & ~padded[:-1]))


def _texture_ratio(pixels: np.ndarray) -> float:
  small, _ = hand_crop.analysis_copy(pixels)
  # Residual of the analysis copy against a further blur: fine structure only.
  small = small.astype(np.float32)
  residual = small - cv2.GaussianBlur(small, (0, 0), 2.0)
  return float(residual.std() / (small.std() + 1e-6)) * 10.0


def measure(pixels: np.ndarray, found: hand_crop.HandMask | None) -> Measurements:
  """The gate's image measurements; `found` is `hand_crop.hand_mask(pixels)`."""
  small, _ = hand_crop.analysis_copy(pixels)
  height, width = small.shape
  ring = max(1, int(0.06 * min(height, width)))
  border = np.concatenate([small[:ring].ravel(), small[-ring:].ravel(), small[:, :ring].ravel(),
                           small[:, -ring:].ravel()])
  centre = small[height // 4:height - height // 4, width // 4:width - width // 4]
  contrast = float(centre.mean()) - float(border.mean())
  texture = _texture_ratio(pixels)
  background = int(np.argmax(np.bincount(small.ravel(), minlength=256)))
  if found is None:
    return Measurements(contrast, 0.0, 1.0, 0, 0.0, 0.0, 0.0, texture, False, background)
  mask = found.mask
  # Deeper than a collimator band (phantoms draw them up to 7% of a side).
  inset = max(1, int(0.09 * height))
  bottom_line = mask[height - 1 - inset]
  sides = (mask[inset], mask[:, inset], mask[:, width - 1 - inset])
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  box_area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
  concavity, solidity = _outline(found.largest)
  inside_px = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)
  return Measurements(
      centre_minus_border=contrast, deepest_concavity=concavity, solidity=solidity,
      bottom_runs=_runs(bottom_line), bottom_contact=float(bottom_line.mean()),
      max_side_contact=float(max(s.mean() for s in sides)), hand_area_fraction=float(box_area / mask.size),
      texture_ratio=texture, found_hand=True, background_level=background,
      palm_radius=float(inside_px.max() / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))


def check_dicom_tags(acquisition, source: str, policy: str) -> list[QualityFlag]:
  """Rejects (strict) or flags (flag) a header naming another modality or body part."""
  if acquisition is None:
    return []
  problems = []
  if acquisition.modality and acquisition.modality not in RADIOGRAPH_MODALITIES:
    problems.append(f"Modality {acquisition.modality!r} is not a projection radiograph")
  body_part = (acquisition.body_part or "").replace(" ", "")
  if body_part and body_part not in HAND_BODY_PARTS:
    problems.append(f"BodyPartExamined {acquisition.body_part!r} is not a hand")
  if not problems:
    return []
  detail = "; ".join(problems)
  if policy == STRICT:
    raise errors.InputError(source, NOT_A_HAND_RADIOGRAPH, detail)
  return [QualityFlag(NON_HAND_DICOM_TAGS, detail)]


def _content_problems(m: Measurements) -> list[tuple[str, str]]:
  if not m.found_hand:
    return [(NOT_HAND_LIKE, "no hand-shaped foreground stands out from the background")]
  problems = []
  if m.texture_ratio > MAX_TEXTURE_RATIO:
    problems.append((NOT_HAND_LIKE, f"fine texture {m.texture_ratio:.2f} above {MAX_TEXTURE_RATIO} "
                                    "(noise or text, not a radiograph)"))
  elif m.deepest_concavity < MIN_DEEPEST_CONCAVITY or m.solidity > MAX_SOLIDITY:
    problems.append((NOT_HAND_LIKE, f"outline without digits: deepest dent {m.deepest_concavity:.2f} of its size "
                                    f"(hands >= {MIN_DEEPEST_CONCAVITY}), solidity {m.solidity:.2f} "
                                    f"(hands <= {MAX_SOLIDITY})"))
  if m.max_side_contact >= MIN_FOREARM_CONTACT and m.max_side_contact > m.bottom_contact + ORIENTATION_MARGIN:
    problems.append((UNEXPECTED_ORIENTATION, "the hand meets another edge more than the bottom one "
                                             "(forearm expected at the bottom)"))
  elif m.bottom_runs > MAX_BOTTOM_RUNS:
    problems.append((PARTIAL_HAND, f"{m.bottom_runs} separate parts cross the bottom edge (digits cut off, "
                                   "wrist missing)"))
  elif m.palm_radius < MIN_PALM_RADIUS:
    problems.append((PARTIAL_HAND, f"no palm: the largest circle inside has a radius of {m.palm_radius:.2f} of the "
                                   f"outline's size (hands with a palm >= {MIN_PALM_RADIUS}; digits are narrower)"))
  return problems


@dataclasses.dataclass(frozen=True)
class GateResult:
  """The image to crop and letterbox, and every decision taken on it."""
  pixels: np.ndarray
  flags: tuple[QualityFlag, ...]
  hand: hand_crop.HandMask | None  # of `pixels` (after any mirror / inversion)


def apply_gate(radiograph, source: str, policy: str = DEFAULT_POLICY) -> GateResult:
  """Judges a decoded radiograph; returns the (possibly corrected) pixels and flags.

  Args:
    radiograph: imaging.Radiograph (pixels bone bright; acquisition from DICOM).
    source: The input's name, for the errors.
    policy: STRICT, FLAG or OFF (see the module doc's table).

  Raises:
    errors.InputError: With one of REJECT_REASONS.
  """
  if policy not in POLICIES:
    raise ValueError(f"quality gate policy must be one of {POLICIES}, got {policy!r}")
  pixels = radiograph.pixels
  if policy == OFF:
    return GateResult(pixels, (), None)
  check_degenerate(pixels, source)
  flags = check_dicom_tags(radiograph.acquisition, source, policy)
  is_dicom = radiograph.acquisition is not None
  found = hand_crop.hand_mask(pixels)
  m = measure(pixels, found)
  # DICOM states its polarity (MONOCHROME1/2, applied by the decoder); only
  # exports without that header can arrive inverted unnoticed.
  if (not is_dicom and m.centre_minus_border < INVERTED_CONTRAST
      and m.background_level >= MIN_INVERTED_BACKGROUND):
    pixels = 255 - pixels
    flags.append(QualityFlag(INVERTED_POLARITY, f"background brighter than the centre by "
                                                f"{-m.centre_minus_border:.0f} grey levels, "
                                                f"background grey {m.background_level}; inverted"))
    found = hand_crop.hand_mask(pixels)
    m = measure(pixels, found)
  # A laterality tag is the acquisition's own statement and wins; without one,
  # only a clear thumb web on the image's left counts as a right hand.
  laterality = radiograph.acquisition.laterality if is_dicom else None
  mirror_reason = "the DICOM laterality tag says R" if laterality == "R" else None
  if laterality in (None, "U") and found is not None:
    score = hand_laterality.thumb_side_score(found.largest)
    if score < RIGHT_HAND_SCORE:
      mirror_reason = (f"the thumb web is on the image's left, {-score:.2f} of the hand's size below the other "
                       "valleys (a right hand)")
  if mirror_reason:
    pixels = np.ascontiguousarray(pixels[:, ::-1])
    flags.append(QualityFlag(MIRRORED_RIGHT_HAND, f"{mirror_reason}; mirrored to a left hand"))
    found = hand_crop.hand_mask(pixels)
    m = measure(pixels, found)
  for code, detail in _content_problems(m):
    if policy == STRICT:
      raise errors.InputError(source, NOT_A_HAND, f"{code}: {detail}")
    flags.append(QualityFlag(code, detail))
  if m.found_hand and m.hand_area_fraction < SMALL_HAND_AREA_FRACTION:
    flags.append(QualityFlag(SMALL_HAND, f"the hand covers {100 * m.hand_area_fraction:.0f}% of the image; "
                                         "cropped to it"))
  return GateResult(pixels, tuple(flags), found)
