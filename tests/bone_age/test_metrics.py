"""bone_age.metrics against hand-computed values."""

import importlib.util
import json

import numpy as np
import pytest

from bone_age import metrics


def test_regression_metrics_hand_computed():
  # errors 2, -2, 3, 0 -> MAE 7/4, RMSE sqrt(17/4); SS_tot = 225+25+25+225 = 500 -> R2 = 1 - 17/500.
  result = metrics.regression_metrics([10, 20, 30, 40], [12, 18, 33, 40])
  assert result["mae_months"] == pytest.approx(1.75)
  assert result["rmse_months"] == pytest.approx(np.sqrt(4.25))
  assert result["r2"] == pytest.approx(0.966)
  assert result["count"] == 4
  # |errors| 2, 2, 3, 0: all within 6 months; with a 10-month miss, 3 of 4 within 6 and all within 12.
  assert result["within_6_months"] == 1.0 and result["within_12_months"] == 1.0
  wider = metrics.regression_metrics([10, 20, 30, 40], [12, 18, 33, 50])
  assert wider["within_6_months"] == 0.75 and wider["within_12_months"] == 1.0


def test_bootstrap_interval_brackets_the_mae_and_narrows_with_more_data():
  rng = np.random.default_rng(1)
  small = np.abs(rng.normal(0, 10, 50))
  large = np.abs(rng.normal(0, 10, 5000))
  low, high = metrics.bootstrap_mae_ci95(small)
  assert low < small.mean() < high
  large_low, large_high = metrics.bootstrap_mae_ci95(large)
  assert large_low < large.mean() < large_high
  # The width of a mean's interval shrinks like 1/sqrt(n): 10x narrower for 100x the data, within sampling noise.
  assert 5 < (high - low) / (large_high - large_low) < 20
  assert metrics.bootstrap_mae_ci95(np.array([3.0])) is None
  assert metrics.bootstrap_mae_ci95(small) == metrics.bootstrap_mae_ci95(small)  # seeded: reports reproduce


def test_regression_accepts_column_vectors_and_rejects_mismatch():
  # (B,) vs (B, 1) must not broadcast into a pairwise gap (the seed notebook's MAE bug).
  result = metrics.regression_metrics(np.array([10.0, 20.0]), np.array([[10.0], [20.0]]))
  assert result["mae_months"] == 0.0
  with pytest.raises(ValueError, match="3 true values but 2 predictions"):
    metrics.regression_metrics([1, 2, 3], [1, 2])
  with pytest.raises(ValueError, match="NaN"):
    metrics.regression_metrics([1, 2], [1, np.nan])


def test_undefined_values_are_none_and_json_safe():
  empty = metrics.all_metrics([], [], [], [], 3)
  assert empty == {"mae_months": None, "mae_months_ci95": None, "rmse_months": None, "r2": None,
                   "within_6_months": None, "within_12_months": None, "count": 0, "group_accuracy": None, "qwk": None}
  constant = metrics.regression_metrics([50, 50], [40, 60])
  assert constant["r2"] is None and constant["mae_months"] == 10.0
  json.dumps(empty, allow_nan=False)
  assert metrics.quadratic_weighted_kappa([1, 1], [1, 1], 3) is None
  # One reference group (an age band): kappa would be 0 whatever the predictions, so it is undefined.
  assert metrics.quadratic_weighted_kappa([1, 1, 1], [0, 1, 2], 3) is None


def test_quadratic_weighted_kappa_hand_computed():
  # O has ones at (0,0), (1,2), (2,2), (2,1); weights (i-j)^2/4.
  # observed disagreement = 0.25 + 0.25 = 0.5
  # E = outer([1,1,2], [1,1,2]) / 4; expected disagreement = .25*(.25+.25) + 1*(.5+.5) + .25*(.5+.5) = 1.375
  # kappa = 1 - 0.5 / 1.375 = 7/11
  assert metrics.quadratic_weighted_kappa([0, 1, 2, 2], [0, 2, 2, 1], 3) == pytest.approx(7 / 11)
  assert metrics.quadratic_weighted_kappa([0, 1, 2], [0, 1, 2], 3) == pytest.approx(1.0)
  # Complete reversal is worse than chance.
  assert metrics.quadratic_weighted_kappa([0, 0, 2, 2], [2, 2, 0, 0], 3) < 0


def test_kappa_agrees_with_sklearn_when_available():
  if importlib.util.find_spec("sklearn") is None:
    pytest.skip("scikit-learn not installed; the hand-computed test covers kappa")
  from sklearn.metrics import cohen_kappa_score  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  true = rng.integers(0, 4, 200)
  pred = np.clip(true + rng.integers(-1, 2, 200), 0, 3)
  assert metrics.quadratic_weighted_kappa(true, pred, 4) == pytest.approx(
      cohen_kappa_score(true, pred, weights="quadratic"))


def test_classification_metrics_and_confusion_matrix():
  result = metrics.classification_metrics([0, 1, 2, 2], [0, 2, 2, 1], 3)
  assert result == {"group_accuracy": 0.5, "qwk": pytest.approx(7 / 11), "count": 4}
  matrix = metrics.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
  np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 1], [0, 1, 1]])
  with pytest.raises(ValueError, match="outside"):
    metrics.confusion_matrix([0, 3], [0, 1], 3)


def test_breakdown_by_subgroup():
  true = np.array([10.0, 20.0, 30.0, 40.0])
  pred = np.array([12.0, 20.0, 30.0, 30.0])
  male = np.array([True, False, True, False])
  result = metrics.breakdown({"female": ~male, "male": male, "nobody": np.zeros(4, bool)},
                             lambda m: metrics.regression_metrics(true[m], pred[m]))
  assert list(result) == ["female", "male", "nobody"]
  assert result["female"]["mae_months"] == 5.0 and result["female"]["count"] == 2
  assert result["male"]["mae_months"] == 1.0
  assert result["nobody"]["count"] == 0 and result["nobody"]["mae_months"] is None
