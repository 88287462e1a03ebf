"""Deterministic, stratified train/validation/test split by hashed id.

For layouts without official splits (Kaggle training set, a hospital's own
export) the split must be reproducible and auditable: an id lands in the
same split on every machine, runner and rerun.

What "stable" guarantees, exactly:
  * Rows are grouped into strata by sex x age group (quantile bins of all
    valid labels). Within a stratum ids are ranked by SHA-256(salt + id); the
    first round(n x test_fraction) go to test, the next
    round(n x validation_fraction) to validation, the rest to train (the
    rounding is balanced across strata by largest remainder so the totals
    match the fractions).
  * The result depends only on the SET of (id, age, sex) rows and the salt,
    fractions and number of strata: never on row order, file order, runner,
    worker count, Python hash seed or platform.
  * It does not promise that adding or removing rows leaves every other id
    in place: a new id in a stratum can shift the rank boundary by one, and
    changed age quantiles can move an id to another stratum.
"""

import hashlib
from collections.abc import Sequence

import numpy as np

from bone_age import age_groups

TRAIN, VALIDATION, TEST = "train", "validation", "test"
DEFAULT_SALT = "rsna_bone_age"


def id_rank_key(example_id: str, salt: str = DEFAULT_SALT) -> str:
  """Sort key of an id inside its stratum (hex SHA-256; id breaks ties)."""
  return hashlib.sha256(f"{salt}:{example_id}".encode("utf-8")).hexdigest()


def stratum_edges(ages_months: Sequence[float], num_groups: int) -> list[float]:
  """Quantile edges for stratification, fewer groups when ties collapse them."""
  for groups in range(num_groups, 1, -1):
    try:
      return age_groups.quantile_edges(ages_months, groups)
    except ValueError:
      continue
  return []


def _largest_remainder(quotas: dict, total: int) -> dict:
  """Integer counts per key summing to `total`, closest to float `quotas`."""
  counts = {k: int(np.floor(q)) for k, q in quotas.items()}
  leftover = total - sum(counts.values())
  order = sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), k))
  for k in order[:max(leftover, 0)]:
    counts[k] += 1
  return counts


def assign_splits(rows: Sequence[tuple[str, float, bool]], *, validation_fraction: float = 0.15,
                  test_fraction: float = 0.15, num_strata_groups: int = 3,
                  salt: str = DEFAULT_SALT) -> dict[str, str]:
  """Maps each id to train / validation / test (see the module docstring).

  Args:
    rows: (id, bone age in months, male) with unique ids.
    validation_fraction: Wanted share of validation examples.
    test_fraction: Wanted share of test examples.
    num_strata_groups: Age groups per sex used for stratification.
    salt: Changes the whole draw when changed (keep the default to reproduce).

  Returns:
    {id: split}.
  """
  if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
    raise ValueError(f"bad split fractions: validation={validation_fraction}, test={test_fraction}")
  if not rows:
    return {}
  edges = stratum_edges([age for _, age, _ in rows], num_strata_groups)
  strata: dict[tuple[bool, int], list[str]] = {}
  for example_id, age, male in rows:
    key = (bool(male), int(age_groups.assign(age, edges)) if edges else 0)
    strata.setdefault(key, []).append(example_id)
  n_total = len(rows)
  n_test = _largest_remainder({k: len(v) * test_fraction for k, v in strata.items()},
                              int(round(n_total * test_fraction)))
  n_val = _largest_remainder({k: len(v) * validation_fraction for k, v in strata.items()},
                             int(round(n_total * validation_fraction)))
  assignment = {}
  for key, ids in strata.items():
    ranked = sorted(ids, key=lambda i: (id_rank_key(i, salt), i))
    t = min(n_test[key], len(ranked))
    v = min(n_val[key], len(ranked) - t)
    for i, example_id in enumerate(ranked):
      assignment[example_id] = TEST if i < t else VALIDATION if i < t + v else TRAIN
  return assignment
