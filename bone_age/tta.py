"""Test-time augmentation that keeps a left hand a left hand.

Each view is a small similarity transform (rotation, isotropic scale, shift)
of the letterboxed uint8 square, about its centre: the letterbox itself is
untouched, and the views are applied to what the model would have seen. A
similarity transform with a positive scale has a positive determinant, so no
view ever mirrors the image (a mirrored left hand reads as a right hand,
which the model never saw in training). Uncovered corners are filled with
black, the letterbox's padding colour.

The views are a fixed list, so `views(images, n)` always gives the same
images, and the first n views of a larger n are the views of a smaller one:
an export calibrates its interval for every view count at once
(bone_age.conformal). View 0 is the identity, so one view is the plain
prediction.

The point estimate is the mean of the views' months, the spread their
standard deviation (ddof=0): how much the answer moves under changes a
radiographer's positioning could make.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class View:
  """One augmentation: rotation (degrees, counter-clockwise), scale (> 0) and shift (fraction of the side)."""
  rotation_deg: float = 0.0
  scale: float = 1.0
  shift_x_fraction: float = 0.0
  shift_y_fraction: float = 0.0


# Within what positioning varies between radiographs: a few degrees, a few percent.
VIEWS = (
    View(),
    View(rotation_deg=4.0),
    View(rotation_deg=-4.0),
    View(scale=1.06),
    View(scale=0.94),
    View(shift_x_fraction=0.03, shift_y_fraction=-0.03),
    View(shift_x_fraction=-0.03, shift_y_fraction=0.03),
    View(rotation_deg=2.0, scale=1.03, shift_x_fraction=-0.02, shift_y_fraction=-0.02),
)
MAX_VIEWS = len(VIEWS)
# The scorer's and evaluator's default: each view is one more forward pass, so
# four views cost four times the plain prediction (Grad-CAM runs on the plain
# view only); see the README for what they buy.
DEFAULT_VIEWS = 4


def affine_matrix(view: View, size_px: int) -> np.ndarray:
  """(2, 3) float64 forward matrix (square -> view) of one view on an S x S square, as cv2.warpAffine takes it."""
  if view.scale <= 0:
    raise ValueError(f"a view's scale must be positive (a negative one mirrors): {view}")
  centre = ((size_px - 1) / 2.0, (size_px - 1) / 2.0)
  matrix = cv2.getRotationMatrix2D(centre, view.rotation_deg, view.scale)
  matrix[0, 2] += view.shift_x_fraction * size_px
  matrix[1, 2] += view.shift_y_fraction * size_px
  return matrix


def check_views(num_views: int) -> int:
  """num_views, if it is between 1 and MAX_VIEWS.

  Raises:
    ValueError: otherwise.
  """
  if not 1 <= int(num_views) <= MAX_VIEWS:
    raise ValueError(f"TTA views must be between 1 and {MAX_VIEWS}, got {num_views}")
  return int(num_views)


def apply_view(image: np.ndarray, view: View) -> np.ndarray:
  """One (S, S) or (S, S, 1) uint8 square under one view, same shape and dtype."""
  square = image[..., 0] if image.ndim == 3 else image
  size = square.shape[0]
  if view == View():
    return image.copy()
  out = cv2.warpAffine(square, affine_matrix(view, size), (size, size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out[..., None] if image.ndim == 3 else out


def views(images: np.ndarray, num_views: int) -> np.ndarray:
  """(V, B, S, S[, 1]) uint8: the first num_views views of a batch of letterboxed squares."""
  check_views(num_views)
  images = np.asarray(images)
  return np.stack([np.stack([apply_view(image, view) for image in images]) if view != View() else images.copy()
                   for view in VIEWS[:num_views]])


def summarise(view_months: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(V, B) months of the views -> point estimate (B,) (their mean) and spread (B,) (their SD, 0 for one view)."""
  view_months = np.asarray(view_months, dtype=np.float64)
  return view_months.mean(axis=0), view_months.std(axis=0)
