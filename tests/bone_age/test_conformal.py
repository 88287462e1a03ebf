"""bone_age.conformal: the finite-sample rank, calibration per view count, bounds, the stored scores."""

import json

import numpy as np
import pytest

from bone_age import conformal
from bone_age.age_groups import MAX_AGE_MONTHS


@pytest.mark.parametrize("n, alpha, rank", [(9, 0.1, 9), (10, 0.1, 10), (19, 0.1, 18), (99, 0.1, 90),
                                            (100, 0.1, 91), (32, 0.1, 30), (20, 0.05, 20), (100, 0.5, 51)])
def test_rank_is_ceil_of_n_plus_one_times_level(n, alpha, rank):
  assert conformal.finite_sample_rank(n, alpha) == rank


def test_too_few_calibration_images_or_bad_alpha_are_refused():
  with pytest.raises(ValueError, match="cannot give a 90% interval"):
    conformal.finite_sample_rank(8, 0.1)
  for alpha in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match="alpha"):
      conformal.finite_sample_rank(100, alpha)


def test_quantile_is_the_kth_smallest_score():
  scores = np.arange(1.0, 101.0)[::-1]  # 100 .. 1, unsorted
  assert conformal.quantile(scores, 0.1) == 91.0  # k = ceil(101 * 0.9) = 91
  assert conformal.quantile(scores[:19], 0.1) == 100.0 - 19 + 18  # the 18th smallest of 82..100


def test_calibration_scores_the_mean_of_the_first_v_views():
  true = np.array([100.0, 50.0])
  views = np.array([[110.0, 40.0], [90.0, 60.0], [130.0, 50.0]])
  calibration = conformal.calibrate(true, views)
  np.testing.assert_allclose(calibration.scores_by_views[1], [10.0, 10.0])
  np.testing.assert_allclose(calibration.scores_by_views[2], [0.0, 0.0])
  np.testing.assert_allclose(calibration.scores_by_views[3], [0.0, 10.0])
  assert calibration.max_views == 3 and calibration.num_calibration == 2
  with pytest.raises(ValueError, match="finite"):
    conformal.calibrate(true, np.array([[np.nan, 1.0]]))
  with pytest.raises(ValueError, match="view months"):
    conformal.calibrate(true, np.array([1.0, 2.0]))


def test_coverage_on_exchangeable_draws_is_at_least_the_level():
  rng = np.random.default_rng(0)
  covered = []
  for _ in range(200):
    residuals = rng.standard_t(4, size=(2, 200)) * 10.0
    calibration = conformal.calibrate(np.zeros(200), residuals[:1])
    q = conformal.half_width_months(calibration, 1, 0.1)
    covered.append(np.mean(np.abs(residuals[1]) <= q))
  # Expected coverage k / (n + 1) = 181 / 201 = 0.9005 over calibration draws.
  assert 0.89 <= np.mean(covered) <= 0.915


def test_bounds_are_clipped_to_the_age_range():
  low, high = conformal.bounds(np.array([5.0, 100.0, MAX_AGE_MONTHS - 1]), 10.0)
  np.testing.assert_allclose(low, [0.0, 90.0, MAX_AGE_MONTHS - 11])
  np.testing.assert_allclose(high, [15.0, 110.0, MAX_AGE_MONTHS])
  assert conformal.coverage(np.array([0.0, 95.0, 300.0]), low, high) == pytest.approx(2 / 3)


def test_record_is_json_and_scores_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  true = rng.uniform(0, 228, 50)
  calibration = conformal.calibrate(true, true + rng.normal(0, 8, (4, 50)), "validation")
  record = json.loads(json.dumps(conformal.record(calibration)))
  assert record["n_calibration"] == 50 and record["rank"] == 46 and record["rank_fraction"] == 46 / 50
  assert record["level"] == 0.9 and set(record["half_width_months_by_tta_views"]) == {"1", "2", "3", "4"}
  assert record["half_width_months_by_tta_views"]["1"] == conformal.quantile(calibration.scores_by_views[1], 0.1)
  assert conformal.load(str(tmp_path)) is None
  conformal.save(calibration, str(tmp_path))
  loaded = conformal.load(str(tmp_path))
  assert loaded.split == "validation" and sorted(loaded.scores_by_views) == [1, 2, 3, 4]
  for views in range(1, 5):
    np.testing.assert_array_equal(loaded.scores_by_views[views], calibration.scores_by_views[views])
  with pytest.raises(ValueError, match="calibrated for 1 to 4 TTA views"):
    conformal.half_width_months(loaded, 5)
