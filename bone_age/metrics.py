"""Evaluation metrics in numpy: the numbers a bone age paper reports.

Regression in months (MAE, RMSE, R^2) and age-group classification
(accuracy, quadratic weighted kappa), each with its count, plus a helper
that breaks any of them down by subgroup (sex, age band). Undefined values
(an empty subgroup, R^2 of a constant truth) are None, never NaN, so
metrics.json stays valid JSON.
"""

from collections.abc import Callable, Mapping

import numpy as np


def _as_1d(values, name: str) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64).reshape(-1)
  if not np.isfinite(array).all():
    raise ValueError(f"{name} contains NaN or infinite values")
  return array


def regression_metrics(true_months, pred_months) -> dict:
  """mae_months, rmse_months, r2 (None if undefined) and count.

  Raises:
    ValueError: if the arrays differ in length or hold non-finite values.
  """
  true = _as_1d(true_months, "true_months")
  pred = _as_1d(pred_months, "pred_months")
  if true.shape != pred.shape:
    raise ValueError(f"{true.size} true values but {pred.size} predictions")
  if true.size == 0:
    return {"mae_months": None, "rmse_months": None, "r2": None, "count": 0}
  error = pred - true
  total = float(np.sum((true - true.mean()) ** 2))
  return {
      "mae_months": float(np.mean(np.abs(error))),
      "rmse_months": float(np.sqrt(np.mean(error**2))),
      "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else None,
      "count": int(true.size),
  }


def confusion_matrix(true_group, pred_group, num_groups: int) -> np.ndarray:
  """(num_groups, num_groups) int64 counts, rows = true group, columns = predicted."""
  true = np.asarray(true_group, dtype=np.int64).reshape(-1)
  pred = np.asarray(pred_group, dtype=np.int64).reshape(-1)
  if true.shape != pred.shape:
    raise ValueError(f"{true.size} true groups but {pred.size} predicted groups")
  for name, values in (("true_group", true), ("pred_group", pred)):
    if values.size and (values.min() < 0 or values.max() >= num_groups):
      raise ValueError(f"{name} outside [0, {num_groups}): {np.unique(values).tolist()}")
  matrix = np.zeros((num_groups, num_groups), dtype=np.int64)
  np.add.at(matrix, (true, pred), 1)
  return matrix


def quadratic_weighted_kappa(true_group, pred_group, num_groups: int) -> float | None:
  """Cohen's kappa with quadratic disagreement weights (i - j)^2 / (G - 1)^2.

  Ordinal agreement: confusing the youngest and oldest group costs four times
  as much as confusing neighbours (with 3 groups). None when the expected
  disagreement is zero (every rating in one group), where kappa is undefined.
  """
  observed = confusion_matrix(true_group, pred_group, num_groups).astype(np.float64)
  n = observed.sum()
  if n == 0:
    return None
  i, j = np.indices((num_groups, num_groups))
  weights = (i - j) ** 2 / float((num_groups - 1) ** 2)
  expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
  expected_disagreement = float(np.sum(weights * expected))
  if expected_disagreement == 0.0:
    return None
  return float(1.0 - np.sum(weights * observed) / expected_disagreement)


def classification_metrics(true_group, pred_group, num_groups: int) -> dict:
  """accuracy, qwk (None if undefined) and count."""
  true = np.asarray(true_group, dtype=np.int64).reshape(-1)
  pred = np.asarray(pred_group, dtype=np.int64).reshape(-1)
  matrix = confusion_matrix(true, pred, num_groups)
  if true.size == 0:
    return {"accuracy": None, "qwk": None, "count": 0}
  return {
      "accuracy": float(np.trace(matrix) / true.size),
      "qwk": quadratic_weighted_kappa(true, pred, num_groups),
      "count": int(true.size),
  }


def breakdown(masks: Mapping[str, np.ndarray], metric_fn: Callable[[np.ndarray], dict]) -> dict:
  """metric_fn(mask) for each named subgroup mask, in the mapping's order.

  Example: breakdown({"female": ~is_male, "male": is_male},
                     lambda m: regression_metrics(true[m], pred[m]))
  """
  return {name: metric_fn(np.asarray(mask, dtype=bool)) for name, mask in masks.items()}


def all_metrics(true_months, pred_months, true_group, pred_group, num_groups: int) -> dict:
  """Regression and classification metrics of one set of predictions, merged (one count)."""
  return {**regression_metrics(true_months, pred_months),
          **classification_metrics(true_group, pred_group, num_groups)}
