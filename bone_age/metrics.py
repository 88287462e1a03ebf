"""Evaluation metrics in numpy: the numbers a bone age paper reports.

Regression in months (MAE, RMSE, R^2, the share within 6 and 12 months, a
bootstrap interval for the MAE) and age-group classification (group
accuracy, quadratic weighted kappa), each with its count, plus a helper that
breaks any of them down by subgroup (sex, age band). Undefined values (an
empty subgroup, R^2 of a constant truth, kappa of a single reference group)
are None, never NaN or a misleading 0, so metrics.json stays valid JSON.
"""

from collections.abc import Callable, Mapping

import numpy as np


def _as_1d(values, name: str) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64).reshape(-1)
  if not np.isfinite(array).all():
    raise ValueError(f"{name} contains NaN or infinite values")
  return array


WITHIN_MONTHS = (6, 12)  # clinically read tolerances: half a year and a year
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def regression_metrics(true_months, pred_months) -> dict:
  """mae_months with its bootstrap 95% interval, rmse_months, r2, within_6/12_months shares, count.

  None where undefined (no examples; r2 of a constant truth).

  Raises:
    ValueError: if the arrays differ in length or hold non-finite values.
  """
  true = _as_1d(true_months, "true_months")
  pred = _as_1d(pred_months, "pred_months")
  if true.shape != pred.shape:
    raise ValueError(f"{true.size} true values but {pred.size} predictions")
  within_keys = [f"within_{m}_months" for m in WITHIN_MONTHS]
  if true.size == 0:
    return {"mae_months": None, "mae_months_ci95": None, "rmse_months": None, "r2": None,
            **dict.fromkeys(within_keys), "count": 0}
  error = pred - true
  total = float(np.sum((true - true.mean()) ** 2))
  return {
      "mae_months": float(np.mean(np.abs(error))),
      "mae_months_ci95": bootstrap_mae_ci95(np.abs(error)),
      "rmse_months": float(np.sqrt(np.mean(error**2))),
      "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else None,
      **{key: float(np.mean(np.abs(error) <= m)) for key, m in zip(within_keys, WITHIN_MONTHS)},
      "count": int(true.size),
  }


def bootstrap_mae_ci95(abs_errors_months: np.ndarray) -> list[float] | None:
  """Percentile bootstrap 95% interval of the mean absolute error, seeded so reports are reproducible.

  None for fewer than two examples, where resampling says nothing.
  """
  abs_errors = np.asarray(abs_errors_months, dtype=np.float64).reshape(-1)
  if abs_errors.size < 2:
    return None
  rng = np.random.default_rng(BOOTSTRAP_SEED)
  means = abs_errors[rng.integers(0, abs_errors.size, size=(BOOTSTRAP_RESAMPLES, abs_errors.size))].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return [float(low), float(high)]


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
  disagreement is zero (every rating in one group), where kappa is undefined,
  and when every reference is in one group (an age band): kappa is then 0
  whatever the predictions, a number that would read as "no agreement".
  """
  observed = confusion_matrix(true_group, pred_group, num_groups).astype(np.float64)
  n = observed.sum()
  if n == 0 or np.count_nonzero(observed.sum(axis=1)) < 2:
    return None
  i, j = np.indices((num_groups, num_groups))
  weights = (i - j) ** 2 / float((num_groups - 1) ** 2)
  expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
  expected_disagreement = float(np.sum(weights * expected))
  if expected_disagreement == 0.0:
    return None
  return float(1.0 - np.sum(weights * observed) / expected_disagreement)


def classification_metrics(true_group, pred_group, num_groups: int) -> dict:
  """group_accuracy (share of exactly right age groups), qwk (None if undefined) and count."""
  true = np.asarray(true_group, dtype=np.int64).reshape(-1)
  pred = np.asarray(pred_group, dtype=np.int64).reshape(-1)
  matrix = confusion_matrix(true, pred, num_groups)
  if true.size == 0:
    return {"group_accuracy": None, "qwk": None, "count": 0}
  return {
      "group_accuracy": float(np.trace(matrix) / true.size),
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
