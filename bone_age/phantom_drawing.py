"""Draws the anatomy of a synthetic left-hand PA radiograph (no nuisance).

The hand is laid out in a fixed reference frame of 400 x 520 units (the
proportions of an RSNA radiograph), fingers up and the thumb on the image
right, as a left hand seen postero-anteriorly. Everything that carries the
bone age is drawn here and also written to a mask, so Grad-CAM can later be
checked against the place the information really is:

- carpal ossification centres appear one by one in their Greulich-Pyle order
  and then grow (the cue for the first decade);
- every tubular bone has an epiphysis separated from its shaft by a dark
  growth-plate gap; epiphyses widen with age and the gaps close bone group by
  bone group (distal phalanges first, radius last: the cue for the teens);
- bones get modestly longer and thicker.

`phantoms.py` adds the nuisance (rotation, exposure, noise, borders, marker).
"""

from collections.abc import Sequence
import dataclasses

import cv2
import numpy as np

REFERENCE_WIDTH = 400.0
REFERENCE_HEIGHT = 520.0
MAX_MATURITY_MONTHS = 240.0
# Girls' skeletons are ahead of boys' (Greulich-Pyle keeps separate atlases);
# scaling the female maturity makes the sex input informative for a model.
FEMALE_MATURITY_FACTOR = 1.1

# (name, centre x, centre y, full radius x, full radius y, appearance in
# maturity months), listed in the order the centres ossify.
_CARPALS = (
    ("capitate", 204.0, 372.0, 15.0, 19.0, 2.0),
    ("hamate", 180.0, 372.0, 13.0, 17.0, 5.0),
    ("triquetrum", 163.0, 392.0, 11.0, 11.0, 30.0),
    ("lunate", 192.0, 400.0, 13.0, 11.0, 45.0),
    ("trapezium", 245.0, 372.0, 13.0, 13.0, 58.0),
    ("trapezoid", 226.0, 362.0, 10.0, 11.0, 66.0),
    ("scaphoid", 224.0, 396.0, 15.0, 11.0, 72.0),
    ("pisiform", 156.0, 376.0, 7.0, 7.0, 115.0),
)
# Carpals drawn a little larger than anatomy so their count and size survive 128 px.
_CARPAL_ZOOM = 1.2
# Months of maturity over which a carpal centre grows from a dot to full size.
_CARPAL_GROWTH_MONTHS = 110.0


@dataclasses.dataclass(frozen=True)
class _Ray:
  """One digit: where its metacarpal starts, its tilt and segment lengths."""
  base_x: float
  base_y: float
  angle_deg: float  # from vertical, positive towards the thumb (image right)
  lengths: tuple[float, ...]  # metacarpal, proximal, [middle,] distal phalanx
  width: float


_RAYS = (
    _Ray(157.0, 342.0, -15.0, (78.0, 52.0, 32.0, 25.0), 17.0),  # little
    _Ray(181.0, 336.0, -6.0, (90.0, 64.0, 41.0, 27.0), 19.0),  # ring
    _Ray(205.0, 333.0, 0.5, (96.0, 68.0, 45.0, 28.0), 20.0),  # middle
    _Ray(230.0, 337.0, 8.0, (92.0, 62.0, 38.0, 26.0), 19.0),  # index
    _Ray(254.0, 362.0, 40.0, (58.0, 46.0, 34.0), 21.0),  # thumb
)
FINGERS = ("little", "ring", "middle", "index", "thumb")  # the order of _RAYS
# The reference hand drawn larger, wrist at 74% of the height: fills the film like RSNA hands.
_HAND_ZOOM = 1.15
_WRIST_HEIGHT_FRACTION = 0.74
_JOINT_GAP = 5.0  # joint space between consecutive segments, reference units
# Maturity months at which a bone group's growth plate has fully closed.
_FUSION_MONTHS = {"distal": 168.0, "middle": 180.0, "proximal": 188.0, "metacarpal": 196.0, "ulna": 206.0,
                  "radius": 216.0}
# Months before fusion over which a plate narrows from its full width.
_CLOSING_MONTHS = 90.0
_MAX_PLATE_GAP = 9.0  # reference units: bold enough to survive 128 px letterboxing
_EPIPHYSIS_APPEARS_MONTHS = 12.0


def maturity_months(boneage_months: float, male: bool) -> float:
  """Skeletal maturity that drives the drawing: bone age, advanced for girls."""
  factor = 1.0 if male else FEMALE_MATURITY_FACTOR
  return float(np.clip(boneage_months * factor, 0.0, MAX_MATURITY_MONTHS))


def plate_gap_units(maturity: float, bone_group: str) -> float:
  """Growth-plate gap width: wide in children, closing in the teens, 0 when fused."""
  fusion = _FUSION_MONTHS[bone_group]
  closing = np.clip((fusion - maturity) / _CLOSING_MONTHS, 0.0, 1.0)
  return float(_MAX_PLATE_GAP * closing**0.8)


def epiphysis_width_ratio(maturity: float) -> float:
  """Epiphysis width relative to its metaphysis: absent, then growing to cap it."""
  if maturity < _EPIPHYSIS_APPEARS_MONTHS:
    return 0.0
  return float(np.clip(0.3 + 0.75 * (maturity - _EPIPHYSIS_APPEARS_MONTHS) / 160.0, 0.3, 1.05))


def carpal_radius_scale(maturity: float, appearance_months: float) -> float:
  """0 before a carpal centre ossifies, then growing from ~1/4 to full size."""
  if maturity < appearance_months:
    return 0.0
  return float(np.clip(0.25 + 0.75 * (maturity - appearance_months) / _CARPAL_GROWTH_MONTHS, 0.25, 1.0))


class _Canvas:
  """Reference-frame drawing on uint8 layers of the requested pixel size."""

  def __init__(self, height_px: int, width_px: int):
    self.unit_px = min(height_px / REFERENCE_HEIGHT, width_px / REFERENCE_WIDTH) * _HAND_ZOOM
    # The wrist is pinned to one place on the film, so growth lengthens the fingers upwards.
    self.origin = np.array([width_px / 2.0, height_px * _WRIST_HEIGHT_FRACTION])
    self.anchor = np.array([REFERENCE_WIDTH / 2.0, 390.0])
    shape = (height_px, width_px)
    self.tissue = np.zeros(shape, np.uint8)
    self.bone = np.zeros(shape, np.uint8)
    self.mask = np.zeros(shape, np.uint8)

  def px(self, point) -> np.ndarray:
    """Reference units -> pixel coordinates (float)."""
    return self.origin + (np.asarray(point, float) - self.anchor) * self.unit_px

  def fixed(self, point) -> tuple[int, int]:
    """Pixel coordinates in cv2's 4-bit fixed point (shift=4), for sub-pixel drawing."""
    p = self.px(point) * 16.0
    return int(round(p[0])), int(round(p[1]))

  def ellipse(self, layer, centre, axes_units, angle_deg, value):
    axes = tuple(max(1, int(round(a * self.unit_px * 16))) for a in axes_units)
    cv2.ellipse(layer, self.fixed(centre), axes, angle_deg, 0, 360, int(value), -1, cv2.LINE_AA, 4)

  def polygon(self, layer, points_units, value):
    pts = np.round(self.px(np.asarray(points_units, float)) * 16.0).astype(np.int32)
    cv2.fillPoly(layer, [pts], int(value), cv2.LINE_AA, 4)

  def capsule(self, layer, p0, p1, width_units, value):
    thickness = max(1, int(round(width_units * self.unit_px)))
    cv2.line(layer, self.fixed(p0), self.fixed(p1), int(value), thickness, cv2.LINE_AA, 4)


def _unit(angle_deg: float) -> np.ndarray:
  """Direction 'up the hand' tilted by angle_deg towards the image right."""
  a = np.deg2rad(angle_deg)
  return np.array([np.sin(a), -np.cos(a)])


def _shaft(canvas: _Canvas, p0, p1, width: float, flare: float = 0.3):
  """A tubular bone shaft: waisted diaphysis, flared ends, darker medulla."""
  p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
  axis = p1 - p0
  normal = np.array([-axis[1], axis[0]]) / (np.linalg.norm(axis) + 1e-9)
  ts = np.linspace(0.0, 1.0, 9)[:, None]
  half = width / 2.0 * (1.0 - flare + flare * (2.0 * ts - 1.0) ** 2)
  centre_line = p0 + ts * axis
  outline = np.concatenate([centre_line + half * normal, (centre_line - half * normal)[::-1]])
  canvas.polygon(canvas.bone, outline, 235)
  inner = centre_line[1:-1], 0.5 * half[1:-1] * normal
  canvas.polygon(canvas.bone, np.concatenate([inner[0] + inner[1], (inner[0] - inner[1])[::-1]]), 190)


def _bone_with_plate(canvas: _Canvas, start, direction, length, width, maturity, group, plate_at_start):
  """A tubular bone with its epiphysis and growth plate at one end.

  Args:
    start: Proximal end in reference units; the bone runs along `direction`.
    plate_at_start: True for phalanges (epiphysis at the base), False for
      metacarpals 2-5, radius and ulna (epiphysis at the distal end).
  """
  start = np.asarray(start, float)
  end = start + direction * length
  ratio = epiphysis_width_ratio(maturity)
  gap = plate_gap_units(maturity, group)
  full_epi_height = 0.45 * width  # along the axis, at full size
  epi_width = ratio * width * 1.05
  epi_height = full_epi_height * max(ratio, 0.0)
  zone = full_epi_height + gap
  if plate_at_start:
    shaft0, shaft1 = start + direction * zone, end
    epi_centre = start + direction * (full_epi_height - epi_height / 2.0)
    zone_centre = start + direction * (zone / 2.0)
  else:
    shaft0, shaft1 = start, end - direction * zone
    epi_centre = end - direction * (full_epi_height - epi_height / 2.0)
    zone_centre = end - direction * (zone / 2.0)
  _shaft(canvas, shaft0, shaft1, width)
  angle = float(np.degrees(np.arctan2(direction[1], direction[0]))) + 90.0
  if ratio > 0.0:
    canvas.ellipse(canvas.bone, epi_centre, (epi_width / 2.0, max(epi_height / 2.0, 1.0)), angle, 235)
  # The age signal lives in the whole plate zone: epiphysis (or its absence) and gap.
  canvas.ellipse(canvas.mask, zone_centre, (width * 0.6, zone / 2.0 + 1.0), angle, 255)


def _draw_soft_tissue(canvas: _Canvas, rays_geometry):
  """Hand silhouette: forearm, palm and finger capsules of soft tissue."""
  canvas.polygon(canvas.tissue, [(122, 760), (278, 760), (280, 425), (292, 385), (284, 338), (258, 318), (150, 318),
                                 (134, 334), (128, 385), (132, 425)], 255)
  for base, tip, width in rays_geometry:
    canvas.capsule(canvas.tissue, base, tip, width * 1.7, 255)


def draw_anatomy(boneage_months: float, male: bool, height_px: int, width_px: int, finger_spread: float = 1.0,
                 finger_tilts_deg: Sequence[float] | None = None):
  """Draws the hand without nuisance.

  Args:
    boneage_months: Bone age that the skeleton shows.
    male: Sex; girls are drawn more mature for the same bone age.
    height_px, width_px: Canvas size; the hand keeps its proportions and is
      centred, so any canvas aspect ratio works.
    finger_spread: Scales every digit's angle from vertical: patients fan
      their fingers more or less (1.0 is the atlas pose).
    finger_tilts_deg: Extra tilt of each digit (little finger to thumb, a few
      degrees at most, or fingers cross); None adds none.

  Returns:
    (tissue, bone, mask): uint8 layers in [0, 255]; tissue and bone are
    coverage maps that the caller turns into grey levels, mask is 0/255.
  """
  maturity = maturity_months(boneage_months, male)
  growth = maturity / MAX_MATURITY_MONTHS
  length_scale = 0.84 + 0.16 * growth
  width_scale = 0.8 + 0.2 * growth
  canvas = _Canvas(height_px, width_px)

  rays_geometry = []
  segments = []
  tilts = np.zeros(len(_RAYS)) if finger_tilts_deg is None else np.asarray(finger_tilts_deg, float)
  if tilts.shape != (len(_RAYS),):
    raise ValueError(f"finger_tilts_deg needs {len(_RAYS)} angles, got {tilts.shape}")
  for ray_index, ray in enumerate(_RAYS):
    angle_deg = ray.angle_deg * finger_spread + tilts[ray_index]
    direction = _unit(angle_deg)
    point = np.array([ray.base_x, ray.base_y])
    names = ("metacarpal", "proximal", "middle", "distal") if len(ray.lengths) == 4 else (
        "metacarpal", "proximal", "distal")
    for seg_index, (name, length) in enumerate(zip(names, ray.lengths)):
      length *= length_scale
      width = ray.width * width_scale * (1.0 - 0.12 * seg_index)
      is_thumb = ray_index == len(_RAYS) - 1
      plate_at_start = name != "metacarpal" or is_thumb
      segments.append((point.copy(), direction, length, width, name, plate_at_start))
      point = point + direction * (length + _JOINT_GAP)
      if name == "proximal":  # fingers fan slightly at the knuckles
        direction = _unit(angle_deg * 0.7)
    rays_geometry.append((np.array([ray.base_x, ray.base_y]), point - direction * _JOINT_GAP, ray.width * width_scale))

  _draw_soft_tissue(canvas, rays_geometry)
  forearm_width = width_scale
  _bone_with_plate(canvas, (236.0, 760.0), _unit(-1.0), 345.0, 46.0 * forearm_width, maturity, "radius", False)
  _bone_with_plate(canvas, (167.0, 760.0), _unit(2.0), 335.0, 32.0 * forearm_width, maturity, "ulna", False)
  for start, direction, length, width, name, plate_at_start in segments:
    _bone_with_plate(canvas, start, direction, length, width, maturity, name, plate_at_start)
  for _, cx, cy, rx, ry, appears in _CARPALS:
    scale = carpal_radius_scale(maturity, appears)
    if scale > 0.0:
      axes = (rx * scale * width_scale * _CARPAL_ZOOM, ry * scale * width_scale * _CARPAL_ZOOM)
      canvas.ellipse(canvas.bone, (cx, cy), axes, 0.0, 235)
      canvas.ellipse(canvas.mask, (cx, cy), axes, 0.0, 255)
  return canvas.tissue, canvas.bone, canvas.mask
