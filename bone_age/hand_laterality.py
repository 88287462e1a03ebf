"""Which side the thumb is on, from the hand's outline: a right hand without a laterality tag.

In a posteroanterior view of a LEFT hand (the bone-age convention) the thumb
is on the image's right. The thumb's web (the valley between thumb and index)
lies clearly lower than the other interdigital valleys, which sit near one
level at the knuckles, and it is the outermost of them. So on the hand mask:
take the convexity defects that are valleys between two digits (deep enough,
above the palm's centre, with both hull ends - the fingertips - above the
valley), pick the lowest, and if it is the outermost valley on one side, the
score is how far it drops below the others' median level, signed by that
side (positive: thumb on the right, a left hand).

The score is 0 when the outline does not show at least three such valleys
(fist, digits merged by the threshold, no hand); callers decide only on a
clearly negative score, since a wrongly mirrored left hand is worse than a
right hand left for the flag-free path.
"""

from __future__ import annotations

import cv2
import numpy as np

# A valley shallower than this share of the outline's long side is a bump in
# the outline, not the gap between two digits.
_MIN_VALLEY_DEPTH = 0.05
_MIN_VALLEYS = 3


def thumb_side_score(largest: np.ndarray) -> float:
  """Signed drop of the thumb web below the other valleys (see module doc).

  Args:
    largest: (h, w) bool mask of the hand's largest component
      (`hand_crop.HandMask.largest`).

  Returns:
    > 0: thumb on the image's right (left hand, PA); < 0: thumb on the left
    (right hand); 0: undecided. In units of the outline's long side.
  """
  mask = largest.astype(np.uint8)
  contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  if not contours:
    return 0.0
  contour = max(contours, key=cv2.contourArea)
  if len(contour) < 4:
    return 0.0
  _, _, width, height = cv2.boundingRect(contour)
  size = max(width, height)
  inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
  palm_row, _ = np.unravel_index(int(np.argmax(inside)), inside.shape)
  try:
    defects = cv2.convexityDefects(contour, cv2.convexHull(contour, returnPoints=False))
  except cv2.error:  # self-intersecting outline
    return 0.0
  if defects is None:
    return 0.0
  valleys = []
  for start, end, far, depth in defects.reshape(-1, 4):
    tip_a, tip_b, bottom = contour[start, 0], contour[end, 0], contour[far, 0]
    if depth / 256.0 < _MIN_VALLEY_DEPTH * size:  # OpenCV stores depths as 8.8 fixed point
      continue
    if bottom[1] >= palm_row or tip_a[1] >= bottom[1] or tip_b[1] >= bottom[1]:
      continue  # below the palm's centre (wrist), or not between two tips
    valleys.append((float(bottom[0]), float(bottom[1])))
  if len(valleys) < _MIN_VALLEYS:
    return 0.0
  points = np.array(valleys)
  lowest = int(np.argmax(points[:, 1]))
  others = np.delete(points, lowest, axis=0)
  x, y = points[lowest]
  if others[:, 0].min() < x < others[:, 0].max():
    return 0.0  # the lowest valley is not the outermost: no thumb web to read
  drop = (y - float(np.median(others[:, 1]))) / size
  return drop if x > others[:, 0].mean() else -drop
