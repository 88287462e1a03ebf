"""bone_age.tta: views are deterministic similarity transforms that never mirror a hand."""

import numpy as np
import pytest

from bone_age import tta


def _left_heavy_square(size_px: int = 64) -> np.ndarray:
  """A square whose bright block sits on the left and low: a mirror moves it to the right."""
  image = np.zeros((size_px, size_px, 1), np.uint8)
  image[size_px // 2:size_px - 8, 6:size_px // 3] = 220
  return image


@pytest.mark.parametrize("index", range(tta.MAX_VIEWS))
def test_no_view_mirrors(index):
  matrix = tta.affine_matrix(tta.VIEWS[index], 64)
  assert np.linalg.det(matrix[:, :2]) > 0  # orientation kept: a flip has a negative determinant
  view = tta.apply_view(_left_heavy_square(), tta.VIEWS[index])[..., 0].astype(np.float64)
  columns = np.arange(64)
  centre_x = (view.sum(axis=0) * columns).sum() / view.sum()
  assert centre_x < 64 * 0.35  # the block stays on the left


def test_views_are_deterministic_nested_and_start_with_the_identity():
  images = np.stack([_left_heavy_square(), np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)])
  eight = tta.views(images, tta.MAX_VIEWS)
  assert eight.shape == (tta.MAX_VIEWS, 2, 64, 64, 1) and eight.dtype == np.uint8
  np.testing.assert_array_equal(eight, tta.views(images, tta.MAX_VIEWS))
  np.testing.assert_array_equal(tta.views(images, 3), eight[:3])
  np.testing.assert_array_equal(eight[0], images)
  assert all(not np.array_equal(eight[v], images) for v in range(1, tta.MAX_VIEWS))


def test_views_are_small_changes():
  image = _left_heavy_square()
  for view in tta.VIEWS:
    assert abs(view.rotation_deg) <= 5 and 0.9 <= view.scale <= 1.1
    assert max(abs(view.shift_x_fraction), abs(view.shift_y_fraction)) <= 0.05
    changed = np.abs(tta.apply_view(image, view).astype(int) - image.astype(int)) > 0
    assert changed.mean() < 0.15


def test_summary_is_mean_and_spread_and_bad_counts_are_refused():
  point, spread = tta.summarise(np.array([[100.0, 10.0], [110.0, 10.0]]))
  np.testing.assert_allclose(point, [105.0, 10.0])
  np.testing.assert_allclose(spread, [5.0, 0.0])
  for bad in (0, tta.MAX_VIEWS + 1):
    with pytest.raises(ValueError, match="between 1 and"):
      tta.views(np.zeros((1, 8, 8, 1), np.uint8), bad)
  with pytest.raises(ValueError, match="mirrors"):
    tta.affine_matrix(tta.View(scale=-1.0), 8)
