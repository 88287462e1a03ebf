"""Letterbox geometry and mapping a square heatmap back onto the source image."""

import json

import numpy as np
import pytest

from bone_age import letterbox


def _white(height_px, width_px) -> np.ndarray:
  return np.full((height_px, width_px), 255, np.uint8)


def _content_box(square: np.ndarray) -> tuple[int, int, int, int]:
  rows = np.flatnonzero(square.any(axis=1))
  columns = np.flatnonzero(square.any(axis=0))
  return rows[0], rows[-1] + 1, columns[0], columns[-1] + 1


def test_portrait_is_padded_left_and_right():
  square, transform = letterbox.letterbox(_white(2080, 1600), 384)
  assert square.shape == (384, 384) and square.dtype == np.uint8
  assert transform.scale == pytest.approx(384 / 2080)
  assert (transform.content_height_px, transform.content_width_px) == (384, round(1600 * 384 / 2080))
  top, bottom, left, right = _content_box(square)
  assert (top, bottom) == (0, 384)
  assert (left, right) == (transform.offset_x_px, transform.offset_x_px + transform.content_width_px)
  assert abs(left - (384 - right)) <= 1  # Centred.
  assert not square[:, :left].any() and not square[:, right:].any()  # Black padding.
  assert square[:, left:right].min() == 255


def test_landscape_is_padded_top_and_bottom():
  square, transform = letterbox.letterbox(_white(300, 500), 128)
  top, bottom, left, right = _content_box(square)
  assert (left, right) == (0, 128)
  assert bottom - top == round(300 * 128 / 500) == transform.content_height_px
  assert top == transform.offset_y_px and abs(top - (128 - bottom)) <= 1
  assert transform.offset_x_px == 0


def test_square_input_of_output_size_is_unchanged():
  image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
  square, transform = letterbox.letterbox(image, 64)
  np.testing.assert_array_equal(square, image)
  assert (transform.scale, transform.offset_y_px, transform.offset_x_px) == (1.0, 0, 0)


def test_small_image_is_upscaled():
  square, transform = letterbox.letterbox(_white(10, 5), 40)
  assert transform.scale == 4.0
  assert _content_box(square) == (0, 40, 10, 30)


def test_extreme_aspect_keeps_at_least_one_pixel():
  square, transform = letterbox.letterbox(_white(1, 1000), 32)
  assert transform.content_height_px == 1 and square.sum() > 0


def test_aspect_ratio_is_kept():
  image = np.zeros((400, 300), np.uint8)
  image[100:200, 100:200] = 255  # A square stays square.
  square, _ = letterbox.letterbox(image, 96)
  top, bottom, left, right = _content_box(square > 127)
  assert abs((bottom - top) - (right - left)) <= 1


def test_views_are_accepted():
  image = np.random.default_rng(1).integers(0, 256, (90, 60), dtype=np.uint8)
  flipped = image[:, ::-1]
  square, _ = letterbox.letterbox(flipped, 30)
  expected, _ = letterbox.letterbox(np.ascontiguousarray(flipped), 30)
  np.testing.assert_array_equal(square, expected)


def test_transform_dict_roundtrip_through_json():
  _, transform = letterbox.letterbox(_white(2080, 1600), 384)
  restored = letterbox.LetterboxTransform.from_dict(json.loads(json.dumps(transform.to_dict())))
  assert restored == transform


@pytest.mark.parametrize("shape,size_px", [((2080, 1600), 384), ((300, 500), 128), ((50, 50), 100)])
def test_to_source_puts_a_blob_back_where_it_was(shape, size_px):
  height_px, width_px = shape
  blob_y, blob_x = int(height_px * 0.3), int(width_px * 0.7)
  image = np.zeros(shape, np.uint8)
  radius = max(4, min(shape) // 20)
  yy, xx = np.mgrid[:height_px, :width_px]
  image[(yy - blob_y) ** 2 + (xx - blob_x) ** 2 <= radius ** 2] = 255
  square, transform = letterbox.letterbox(image, size_px)
  # The "heatmap" is the letterboxed image itself: mapped back, its peak must
  # sit on the blob in source coordinates.
  heatmap = transform.to_source(square.astype(np.float32) / 255.0)
  assert heatmap.shape == shape and heatmap.dtype == np.float32
  weights = heatmap / heatmap.sum()
  centre_y, centre_x = (weights * yy).sum(), (weights * xx).sum()
  tolerance_px = 1.5 / transform.scale + 1
  assert abs(centre_y - blob_y) <= tolerance_px and abs(centre_x - blob_x) <= tolerance_px


def test_to_source_ignores_the_padding():
  _, transform = letterbox.letterbox(_white(200, 100), 64)
  square_map = np.zeros((64, 64), np.float32)
  square_map[:, : transform.offset_x_px] = 1.0  # Heat only in the padding.
  square_map[:, transform.offset_x_px + transform.content_width_px:] = 1.0
  assert transform.to_source(square_map).max() == 0.0


def test_bad_inputs_raise():
  with pytest.raises(ValueError):
    letterbox.letterbox(np.zeros((10, 10), np.float32), 8)
  with pytest.raises(ValueError):
    letterbox.letterbox(np.zeros((10, 10, 3), np.uint8), 8)
  with pytest.raises(ValueError):
    letterbox.letterbox(np.zeros((10, 10), np.uint8), 0)
  _, transform = letterbox.letterbox(np.zeros((10, 10), np.uint8), 8)
  with pytest.raises(ValueError):
    transform.to_source(np.zeros((9, 9), np.float32))
