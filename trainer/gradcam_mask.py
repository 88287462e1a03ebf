"""Does Grad-CAM point where the age signal is? The heatmap mass inside the phantoms' signal mask.

Phantoms (bone_age.phantoms) draw their bone age only in known zones
(growth plates, carpals) and write that mask beside each image
(`masks/<id>.png`). On the letterboxed square the model sees, the share of
Grad-CAM mass inside the mask is compared with the mask's share of the
square's area: a heatmap spread evenly (or pointing at random) scores a ratio
of 1, one that follows the age signal scores well above it.

The mask is letterboxed exactly as the image is (area interpolation), so
its pixels are coverage fractions in [0, 1] on the model's grid.
"""

import os

import cv2
import numpy as np
import tensorflow as tf

from bone_age import gradcam
from bone_age import letterbox
from bone_age import schema

MASK_SUFFIX = ".png"


def heat_mass_in_mask(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """(B,) share of each heatmap's mass inside its mask; NaN for an all-zero heatmap.

  Args:
    heatmaps: (B, S, S) non-negative heat.
    masks: (B, S, S) coverage in [0, 1] (1 = inside the signal mask).
  """
  heatmaps = np.asarray(heatmaps, np.float64)
  masks = np.asarray(masks, np.float64)
  total = heatmaps.sum(axis=(1, 2))
  inside = (heatmaps * masks).sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def mask_on_square(mask_path: str, size_px: int) -> np.ndarray | None:
  """(S, S) float coverage of the mask letterboxed like its image; None when the file is absent or unreadable."""
  if not tf.io.gfile.exists(mask_path):
    return None
  with tf.io.gfile.GFile(mask_path, "rb") as f:
    mask = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
  if mask is None:
    return None
  square, _ = letterbox.letterbox(np.where(mask >= 128, 255, 0).astype(np.uint8), size_px)
  return square.astype(np.float64) / 255.0


def _summary(shares: list[float], areas: list[float], num_without_mask: int) -> dict:
  shares_arr, areas_arr = np.asarray(shares, np.float64), np.asarray(areas, np.float64)
  finite = np.isfinite(shares_arr)
  mean_share = float(np.mean(shares_arr[finite])) if finite.any() else None
  mean_area = float(np.mean(areas_arr)) if areas_arr.size else None
  return {
      "num_images": int(shares_arr.size),
      "num_without_mask": int(num_without_mask),
      "num_zero_heatmaps": int((~finite).sum()),
      "heat_mass_in_mask_mean": mean_share,
      "mask_area_fraction_mean": mean_area,
      "ratio_to_area": (mean_share / mean_area) if mean_share is not None and mean_area else None,
  }


def mask_share_report(model, builder, split: str, masks_dir: str, batch_size: int = 32) -> dict:
  """Streams a split through Grad-CAM (each image's own sex) and compares heat mass with the masks' area.

  Images without a mask file in masks_dir are counted (num_without_mask), not used.

  Returns:
    num_images (with a mask), num_without_mask, num_zero_heatmaps,
    heat_mass_in_mask_mean, mask_area_fraction_mean and their ratio.
  """
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(batch_size).prefetch(2)
  size_px = None
  shares, areas, without = [], [], 0
  for batch in ds.as_numpy_iterator():
    images = batch[schema.IMAGE]
    size_px = images.shape[1]
    ids = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in batch[schema.ID]]
    masks = [mask_on_square(os.path.join(masks_dir, example_id + MASK_SUFFIX), size_px) for example_id in ids]
    keep = [i for i, m in enumerate(masks) if m is not None]
    without += len(ids) - len(keep)
    if not keep:
      continue
    _, _, heatmaps = gradcam.predict_with_gradcam(model, images[keep], batch[schema.MALE][keep], batch_size=batch_size)
    kept_masks = np.stack([masks[i] for i in keep])
    shares.extend(heat_mass_in_mask(heatmaps, kept_masks).tolist())
    areas.extend(kept_masks.mean(axis=(1, 2)).tolist())
  return _summary(shares, areas, without)
