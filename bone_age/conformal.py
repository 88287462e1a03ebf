"""Split-conformal prediction intervals for the bone age.

Calibration (at export, bone_age.export's caller): on the validation split,
which the model never trained on, the score of each image is the absolute
residual |y - y_hat| of the point estimate, the mean of the first v TTA
views (bone_age.tta), for every view count v at once. For a miscoverage
alpha the interval's half-width q is the k-th smallest of the n scores,

    k = ceil((n + 1) (1 - alpha)),

and the interval is [y_hat - q, y_hat + q], clipped to [0, MAX_AGE_MONTHS]
(true ages lie there, so clipping loses no coverage). For an image
exchangeable with the calibration images (same population, same scanner mix),
the interval holds its true bone age with probability at least 1 - alpha
(and less than 1 - alpha + 1/(n + 1)). It is marginal: on average over
images, not for every age band or sex; and it says nothing about images
unlike the validation split (see bone_age.ood).

The sorted scores are written to conformal_scores.npz beside
export_metadata.json, so the scorer and the evaluator can take any alpha
and any view count up to the calibrated one; export_metadata.json states
the default interval for readers.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bone_age.age_groups import MAX_AGE_MONTHS
from bone_age import export_files

CONFORMAL_SCORES_FILE = "conformal_scores.npz"
DEFAULT_ALPHA = 0.1
METHOD = "split conformal, absolute residual of the TTA mean"


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Sorted absolute residuals of the calibration split, per TTA view count.

  Attributes:
    scores_by_views: {v: (n,) float64 sorted |y - mean of the first v views|}.
    split: The split they come from (for the record).
  """
  scores_by_views: dict
  split: str = "validation"

  @property
  def num_calibration(self) -> int:
    return len(next(iter(self.scores_by_views.values())))

  @property
  def max_views(self) -> int:
    return max(self.scores_by_views)


def finite_sample_rank(num_calibration: int, alpha: float) -> int:
  """k = ceil((n + 1)(1 - alpha)): which smallest score is the half-width.

  Raises:
    ValueError: for alpha outside (0, 1), or when k > n (too few calibration
      images for this alpha: at least ceil(1/alpha) - 1 are needed).
  """
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  # The small tolerance keeps (n + 1)(1 - alpha) = 90.00000000000001 from rounding up to 91.
  rank = math.ceil((num_calibration + 1) * (1.0 - alpha) - 1e-9)
  if rank > num_calibration:
    raise ValueError(f"{num_calibration} calibration images cannot give a {100 * (1 - alpha):g}% interval "
                     f"(the rank ceil((n+1)(1-alpha)) = {rank} exceeds n)")
  return rank


def quantile(scores: np.ndarray, alpha: float) -> float:
  """The k-th smallest score, k = finite_sample_rank(n, alpha)."""
  scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
  return float(scores[finite_sample_rank(len(scores), alpha) - 1])


def calibrate(true_months: np.ndarray, view_months: np.ndarray, split: str = "validation") -> Calibration:
  """Scores for every view count from the views' months.

  Args:
    true_months: (n,) labels of the calibration images.
    view_months: (V, n) the model's months for each TTA view (bone_age.tta order).
    split: Where they come from.

  Raises:
    ValueError: for mismatched shapes, no images or non-finite values.
  """
  true_months = np.asarray(true_months, dtype=np.float64).reshape(-1)
  view_months = np.asarray(view_months, dtype=np.float64)
  if view_months.ndim != 2 or view_months.shape[1] != true_months.shape[0] or true_months.size == 0:
    raise ValueError(f"need (V, n) view months for n > 0 labels, got {view_months.shape} for {true_months.shape}")
  if not (np.isfinite(true_months).all() and np.isfinite(view_months).all()):
    raise ValueError("calibration labels and predictions must be finite")
  cumulative = np.cumsum(view_months, axis=0)
  return Calibration({v: np.sort(np.abs(true_months - cumulative[v - 1] / v)) for v in range(1, len(view_months) + 1)},
                     split)


def half_width_months(calibration: Calibration, num_views: int, alpha: float = DEFAULT_ALPHA) -> float:
  """q for an interval around the mean of num_views views.

  Raises:
    ValueError: when num_views was not calibrated, or alpha is impossible for n.
  """
  if num_views not in calibration.scores_by_views:
    raise ValueError(f"the export's interval is calibrated for 1 to {calibration.max_views} TTA views, "
                     f"not {num_views}")
  return quantile(calibration.scores_by_views[num_views], alpha)


def bounds(point_months: np.ndarray | float, half_width: float) -> tuple[np.ndarray, np.ndarray]:
  """[point - q, point + q] clipped to [0, MAX_AGE_MONTHS]."""
  point = np.asarray(point_months, dtype=np.float64)
  return np.clip(point - half_width, 0.0, MAX_AGE_MONTHS), np.clip(point + half_width, 0.0, MAX_AGE_MONTHS)


def coverage(true_months: np.ndarray, low_months: np.ndarray, high_months: np.ndarray) -> float:
  """Share of labels inside their interval (NaN for none)."""
  true_months = np.asarray(true_months, dtype=np.float64)
  if true_months.size == 0:
    return float("nan")
  return float(np.mean((true_months >= low_months) & (true_months <= high_months)))


def record(calibration: Calibration, alpha: float = DEFAULT_ALPHA) -> dict:
  """What export_metadata.json says about the interval (the default alpha, every view count)."""
  n = calibration.num_calibration
  rank = finite_sample_rank(n, alpha)
  return {
      "method": METHOD,
      "alpha": alpha,
      "level": round(1.0 - alpha, 6),
      "calibration_split": calibration.split,
      "n_calibration": n,
      "rank": rank,
      "rank_fraction": rank / n,
      "max_tta_views": calibration.max_views,
      "half_width_months_by_tta_views": {str(v): half_width_months(calibration, v, alpha)
                                         for v in sorted(calibration.scores_by_views)},
      "scores_file": CONFORMAL_SCORES_FILE,
  }


def save(calibration: Calibration, export_dir: str) -> str:
  """Writes conformal_scores.npz beside export_metadata.json; returns its path."""
  views = sorted(calibration.scores_by_views)
  return export_files.write_npz(export_dir, CONFORMAL_SCORES_FILE,
                                scores=np.stack([calibration.scores_by_views[v] for v in views]),
                                views=np.asarray(views), split=np.asarray(calibration.split))


def load(export_dir: str) -> Calibration | None:
  """The export's calibration, or None for an export made without one."""
  data = export_files.read_npz(export_dir, CONFORMAL_SCORES_FILE)
  if data is None:
    return None
  return Calibration({int(v): s for v, s in zip(data["views"], data["scores"])}, str(data["split"]))
