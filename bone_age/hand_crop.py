"""Find the hand in a radiograph and crop to it before the letterbox.

A hand that fills a fifth of a large detector would shrink to a few dozen
pixels in the model's square; cropping to the hand first lets the model see
every hand at about the same scale, in training and in scoring alike.

The method is classical and cheap: on a copy shrunk to `ANALYSIS_MAX_PX`,
blur, Otsu threshold (tissue and bone are brighter than the background in a
bone-bright radiograph), drop thin bands along the edges (collimator
shadows, film frames), keep the largest component with the components of
comparable size near it, and take their bounding box plus a margin. When the
box covers most of the image the crop is skipped: the hand already fills the
frame, and not cropping cannot lose anatomy.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

# Long side of the copy the analysis runs on: the hand's outline survives
# this size, and the cost no longer depends on the detector's resolution.
ANALYSIS_MAX_PX = 256
_BLUR_SIGMA_PX = 2.0  # at ANALYSIS_MAX_PX: merges trabecular texture and noise into tissue
# A component thinner than this share of the image across one axis while
# spanning most of the other is an edge band (collimator, film frame), not a hand.
_BAND_MAX_THICKNESS = 0.12
_BAND_MIN_SPAN = 0.8
# Components at least this share of the largest one belong to the hand
# (a finger or the forearm split off at the threshold).
_PART_MIN_SHARE = 0.15
# Largest component filling more than this share of its bounding box: a
# film base or frame rectangle, thresholded once more inside.
_RECTANGLE_FILL = 0.9
# Of the hand box's side, added on every side. Small: the box is the
# soft-tissue outline, already outside the bones, and a full-frame hand
# meets the film's edges with little or no background around it.
MARGIN_FRACTION = 0.03
# Crop only when the hand box (with margin) covers less than this share of
# the image area. A radiograph whose hand fills the frame (the usual case,
# and the training images) keeps its framing; a hand shrunk to even four
# fifths of the frame is cropped, so it reaches the letterbox at the scale
# of a full-frame hand rather than in between.
MAX_CROP_AREA_FRACTION = 0.85


@dataclasses.dataclass(frozen=True)
class HandMask:
  """The hand's foreground on the analysis copy.

  Attributes:
    mask: (h, w) bool on the analysis copy, True on the hand's components.
    largest: (h, w) bool, the largest component alone.
    scale: Analysis pixels per source pixel.
    component_count: Foreground components after removing edge bands.
  """
  mask: np.ndarray
  largest: np.ndarray
  scale: float
  component_count: int


@dataclasses.dataclass(frozen=True)
class CropBox:
  """Rows [top, bottom) and columns [left, right) of the source image."""
  top: int
  bottom: int
  left: int
  right: int

  @property
  def height_px(self) -> int:
    return self.bottom - self.top

  @property
  def width_px(self) -> int:
    return self.right - self.left


def analysis_copy(pixels: np.ndarray) -> tuple[np.ndarray, float]:
  """(pixels shrunk so the long side is at most ANALYSIS_MAX_PX, blurred; scale)."""
  height, width = pixels.shape
  scale = min(1.0, ANALYSIS_MAX_PX / max(height, width))
  if scale < 1.0:
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
  else:
    small = pixels
  return cv2.GaussianBlur(small, (0, 0), _BLUR_SIGMA_PX), scale


def tissue_threshold(small: np.ndarray) -> int:
  """The lower of two three-class Otsu thresholds: background | soft tissue | bone.

  A two-class Otsu splits a radiograph between bone and the rest whenever
  the tissue is faint, losing the hand's outline; three classes keep the
  background alone below the first threshold.
  """
  hist = np.bincount(small.ravel(), minlength=256).astype(np.float64)
  prob = hist / hist.sum()
  levels = np.arange(256, dtype=np.float64)
  cum_p = np.cumsum(prob)
  cum_m = np.cumsum(prob * levels)
  total_m = cum_m[-1]
  best, best_t = -1.0, 0
  for t1 in range(1, 254):
    p0, m0 = cum_p[t1], cum_m[t1]
    if p0 <= 0:
      continue
    p1 = cum_p[t1 + 1:255] - p0
    m1 = cum_m[t1 + 1:255] - m0
    p2 = 1.0 - cum_p[t1 + 1:255]
    m2 = total_m - cum_m[t1 + 1:255]
    valid = (p1 > 0) & (p2 > 0)
    if not valid.any():
      continue
    between = m0 * m0 / p0 + np.where(valid, m1 * m1 / np.where(valid, p1, 1) + m2 * m2 / np.where(valid, p2, 1), -1)
    k = int(np.argmax(between))
    if between[k] > best:
      best, best_t = float(between[k]), t1
  return best_t


def _is_edge_band(width: int, height: int, image_w: int, image_h: int) -> bool:
  horizontal = height < _BAND_MAX_THICKNESS * image_h and width > _BAND_MIN_SPAN * image_w
  vertical = width < _BAND_MAX_THICKNESS * image_w and height > _BAND_MIN_SPAN * image_h
  return horizontal or vertical


def hand_mask(pixels: np.ndarray) -> HandMask | None:
  """The hand's foreground (see module doc), or None when nothing stands out.

  Args:
    pixels: (H, W) uint8, bone bright.
  """
  small, scale = analysis_copy(pixels)
  if int(small.max()) == int(small.min()):
    return None
  foreground = np.where(small > tissue_threshold(small), 255, 0).astype(np.uint8)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
  image_h, image_w = small.shape
  if count > 1:
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    box_area = stats[biggest, cv2.CC_STAT_WIDTH] * stats[biggest, cv2.CC_STAT_HEIGHT]
    if stats[biggest, cv2.CC_STAT_AREA] > _RECTANGLE_FILL * box_area:
      # A rectangle brighter than the surround is a film base or a frame
      # (scanned films, grey exports), not anatomy: split it once more.
      inside = small[labels == biggest]
      level, _ = cv2.threshold(inside.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
      foreground = np.where(small > level, 255, 0).astype(np.uint8)
      count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
  kept = [i for i in range(1, count)
          if not _is_edge_band(stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT], image_w, image_h)]
  if not kept:
    return None
  areas = stats[kept, cv2.CC_STAT_AREA]
  largest_label = kept[int(np.argmax(areas))]
  parts = [i for i in kept if stats[i, cv2.CC_STAT_AREA] >= _PART_MIN_SHARE * areas.max()]
  return HandMask(mask=np.isin(labels, parts), largest=labels == largest_label, scale=scale,
                  component_count=len(kept))


def hand_box(pixels: np.ndarray, found: HandMask | None = None) -> CropBox | None:
  """The hand's bounding box with MARGIN_FRACTION, in source pixels; None if no hand stands out."""
  found = hand_mask(pixels) if found is None else found
  if found is None:
    return None
  rows = np.flatnonzero(found.mask.any(axis=1))
  cols = np.flatnonzero(found.mask.any(axis=0))
  height, width = pixels.shape
  inv = 1.0 / found.scale
  top, bottom = rows[0] * inv, (rows[-1] + 1) * inv
  left, right = cols[0] * inv, (cols[-1] + 1) * inv
  margin = MARGIN_FRACTION * max(bottom - top, right - left)
  return CropBox(top=max(0, int(top - margin)), bottom=min(height, int(np.ceil(bottom + margin))),
                 left=max(0, int(left - margin)), right=min(width, int(np.ceil(right + margin))))


def crop_to_hand(pixels: np.ndarray, found: HandMask | None = None) -> tuple[np.ndarray, CropBox | None]:
  """Crops (H, W) uint8 to the hand when it covers less than MAX_CROP_AREA_FRACTION.

  Returns:
    (the cropped view, or the input itself; the box used, or None when not cropped).
  """
  box = hand_box(pixels, found)
  if box is None or box.height_px * box.width_px >= MAX_CROP_AREA_FRACTION * pixels.size:
    return pixels, None
  return pixels[box.top:box.bottom, box.left:box.right], box
