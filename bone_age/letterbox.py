"""Aspect-preserving resize into a black square, and the way back.

The model sees a square; squashing a 2080x1600 hand into it would distort
bone shapes (a defect of the seed recipe). The image is scaled so its longer
side fits, centred, and padded with black. `LetterboxTransform` records where
it went so a heatmap computed on the square maps back onto the original.
"""

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class LetterboxTransform:
  """Where a (H, W) source image sits inside the (S, S) square.

  Attributes:
    source_height_px: H of the source image.
    source_width_px: W of the source image.
    size_px: S, the side of the square.
    scale: Output pixels per source pixel (S / max(H, W)).
    offset_y_px: First row of the scaled image inside the square.
    offset_x_px: First column of the scaled image inside the square.
  """
  source_height_px: int
  source_width_px: int
  size_px: int
  scale: float
  offset_y_px: int
  offset_x_px: int

  @property
  def content_height_px(self) -> int:
    """Rows of the square covered by the image (the rest is padding)."""
    return _scaled_length(self.source_height_px, self.scale, self.size_px)

  @property
  def content_width_px(self) -> int:
    """Columns of the square covered by the image (the rest is padding)."""
    return _scaled_length(self.source_width_px, self.scale, self.size_px)

  def to_dict(self) -> dict:
    """Plain JSON-able dict (stored next to predictions and heatmaps)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "LetterboxTransform":
    """Inverse of `to_dict`; ignores unknown keys written by newer versions."""
    return cls(
        source_height_px=int(d["source_height_px"]),
        source_width_px=int(d["source_width_px"]),
        size_px=int(d["size_px"]),
        scale=float(d["scale"]),
        offset_y_px=int(d["offset_y_px"]),
        offset_x_px=int(d["offset_x_px"]),
    )

  def to_source(self, square_map: np.ndarray) -> np.ndarray:
    """Maps a (S, S) map on the square (a heatmap) onto the source image.

    The padding is cropped away and the content resized (bilinear) to the
    source size, so a blob at square pixel (y, x) lands near source pixel
    ((y - offset_y) / scale, (x - offset_x) / scale).

    Args:
      square_map: (S, S) array of any real dtype.

    Returns:
      (H, W) float32.
    """
    square_map = np.asarray(square_map)
    if square_map.shape != (self.size_px, self.size_px):
      raise ValueError(f"expected a ({self.size_px}, {self.size_px}) map, got {square_map.shape}")
    content = square_map[self.offset_y_px:self.offset_y_px + self.content_height_px,
                         self.offset_x_px:self.offset_x_px + self.content_width_px]
    content = np.ascontiguousarray(content, dtype=np.float32)
    return cv2.resize(content, (self.source_width_px, self.source_height_px), interpolation=cv2.INTER_LINEAR)


def _scaled_length(length_px: int, scale: float, size_px: int) -> int:
  return min(size_px, max(1, int(round(length_px * scale))))


def letterbox_transform(height_px: int, width_px: int, size_px: int) -> LetterboxTransform:
  """The transform `letterbox` would apply to a (height_px, width_px) image."""
  if height_px <= 0 or width_px <= 0:
    raise ValueError(f"cannot letterbox an empty {height_px}x{width_px} image")
  if size_px <= 0:
    raise ValueError(f"size_px must be positive, got {size_px}")
  scale = size_px / max(height_px, width_px)
  content_height_px = _scaled_length(height_px, scale, size_px)
  content_width_px = _scaled_length(width_px, scale, size_px)
  return LetterboxTransform(
      source_height_px=int(height_px), source_width_px=int(width_px), size_px=int(size_px), scale=float(scale),
      offset_y_px=(size_px - content_height_px) // 2, offset_x_px=(size_px - content_width_px) // 2)


def letterbox(pixels: np.ndarray, size_px: int) -> tuple[np.ndarray, LetterboxTransform]:
  """Scales (H, W) uint8 to fit a (size_px, size_px) square, centred on black.

  Downscaling uses INTER_AREA (averages, no aliasing of the trabecular
  texture); upscaling, rare for radiographs, uses INTER_LINEAR.

  Args:
    pixels: (H, W) uint8 image.
    size_px: Side of the output square.

  Returns:
    ((size_px, size_px) uint8 image, its LetterboxTransform).
  """
  pixels = np.asarray(pixels)
  if pixels.ndim != 2 or pixels.dtype != np.uint8:
    raise ValueError(f"expected a (H, W) uint8 image, got {pixels.dtype} of shape {pixels.shape}")
  transform = letterbox_transform(pixels.shape[0], pixels.shape[1], size_px)
  content_size = (transform.content_width_px, transform.content_height_px)
  if content_size == (pixels.shape[1], pixels.shape[0]):
    content = pixels
  else:
    interpolation = cv2.INTER_AREA if transform.scale < 1.0 else cv2.INTER_LINEAR
    content = cv2.resize(pixels, content_size, interpolation=interpolation)
  square = np.zeros((size_px, size_px), np.uint8)
  square[transform.offset_y_px:transform.offset_y_px + transform.content_height_px,
         transform.offset_x_px:transform.offset_x_px + transform.content_width_px] = content
  return square, transform
