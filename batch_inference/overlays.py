"""Grad-CAM overlays: the heatmap over the original radiograph, age written on it.

Overlays are written by the worker that scored the image, right after the
batch, so only a downscaled original (at most --overlay_max_px on its long
side) travels with each image. File names come from the id through
`overlay_file_name`, which keeps only [A-Za-z0-9._-]: an archive member named
'../../x.png' or '/abs/x.png' still lands inside overlays/.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

OVERLAYS_DIR = "overlays"
DEFAULT_OVERLAY_MAX_PX = 512
_MAX_NAME_CHARS = 80
_HEATMAP_WEIGHT = 0.4


def overlay_file_name(example_id: str, source: str, suffix: str = "") -> str:
  """A safe, unique PNG file name for an image's overlay.

  The readable part is the id with every other character replaced by '_';
  a hash of the source keeps two inputs whose ids sanitise alike apart.
  """
  readable = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "_", example_id)
  readable = re.sub(r"_+", "_", readable).strip("._-")[:_MAX_NAME_CHARS] or "image"
  digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:10]
  return f"{readable}-{digest}{suffix}.png"


def downscale(pixels: np.ndarray, max_px: int) -> np.ndarray:
  """The image shrunk (area interpolation) so its long side is at most max_px."""
  import cv2  # pylint: disable=g-import-not-at-top

  height, width = pixels.shape[:2]
  scale = max_px / max(height, width)
  if scale >= 1.0:
    return np.ascontiguousarray(pixels)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def heatmap_on_original(transform, square_heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Square Grad-CAM -> (h, w) float32 in [0, 1] over the (downscaled) original.

  LetterboxTransform.to_source undoes the letterbox (padding and scale) onto
  the original geometry; the result is then resized to the overlay's size.
  """
  import cv2  # pylint: disable=g-import-not-at-top

  on_source = np.asarray(transform.to_source(np.asarray(square_heatmap, dtype=np.float32)), dtype=np.float32)
  if on_source.shape != tuple(shape):
    on_source = cv2.resize(on_source, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
  return np.clip(on_source, 0.0, 1.0)


def render(original: np.ndarray, heatmap: np.ndarray, caption: str) -> np.ndarray:
  """(h, w, 3) uint8 BGR: JET heatmap blended on the grey radiograph, caption on top."""
  import cv2  # pylint: disable=g-import-not-at-top

  grey = cv2.cvtColor(original, cv2.COLOR_GRAY2BGR)
  colour = cv2.applyColorMap(np.uint8(np.round(heatmap * 255.0)), cv2.COLORMAP_JET)
  blended = cv2.addWeighted(grey, 1.0 - _HEATMAP_WEIGHT, colour, _HEATMAP_WEIGHT, 0.0)
  height, width = blended.shape[:2]
  # The caption spans at most the image width (small overlays get small text).
  (unit_w, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
  font_scale = max(0.2, min(width / 900.0, (width - 8) / max(unit_w, 1)))
  thickness = max(1, round(font_scale * 2))
  (_, text_h), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
  band = text_h + baseline + 8
  cv2.rectangle(blended, (0, 0), (width, min(height, band)), (0, 0, 0), thickness=-1)
  cv2.putText(blended, caption, (4, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thickness,
              cv2.LINE_AA)
  return blended


def write_png(path: str, image: np.ndarray) -> None:
  """Encodes and writes through Beam's filesystems (local or gs://)."""
  import cv2  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  ok, encoded = cv2.imencode(".png", image)
  if not ok:
    raise RuntimeError(f"cannot encode overlay {path}")
  with FileSystems.create(path, mime_type="image/png") as f:
    f.write(encoded.tobytes())
