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


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
  """Raises ValueError unless both fractions are in [0, 1) and leave room for training."""
  if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
    raise ValueError(f"bad split fractions: validation={validation_fraction}, test={test_fraction}")


def stratum_of(age_months: float, male: bool, edges: Sequence[float]) -> tuple[bool, int]:
  """The (sex, age group) stratum of a row, given `stratum_edges` of all valid ages."""
  return bool(male), int(age_groups.assign(age_months, edges)) if edges else 0


def stratum_quotas(stratum_sizes: dict, *, validation_fraction: float, test_fraction: float
                   ) -> dict[tuple[bool, int], tuple[int, int]]:
  """{stratum: (test count, validation count)} for strata of the given sizes (largest remainder)."""
  n_total = sum(stratum_sizes.values())
  n_test = _largest_remainder({k: n * test_fraction for k, n in stratum_sizes.items()},
                              int(round(n_total * test_fraction)))
  n_val = _largest_remainder({k: n * validation_fraction for k, n in stratum_sizes.items()},
                             int(round(n_total * validation_fraction)))
  quotas = {}
  for key, size in stratum_sizes.items():
    t = min(n_test[key], size)
    quotas[key] = (t, min(n_val[key], size - t))
  return quotas


def split_by_rank(rank: int, quota: tuple[int, int]) -> str:
  """The split of the id at `rank` (0-based, by `id_rank_key`) inside a stratum with `quota`."""
  n_test, n_val = quota
  return TEST if rank < n_test else VALIDATION if rank < n_test + n_val else TRAIN


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
  check_fractions(validation_fraction, test_fraction)
  if not rows:
    return {}
  edges = stratum_edges([age for _, age, _ in rows], num_strata_groups)
  strata: dict[tuple[bool, int], list[str]] = {}
  for example_id, age, male in rows:
    strata.setdefault(stratum_of(age, male, edges), []).append(example_id)
  quotas = stratum_quotas({k: len(v) for k, v in strata.items()}, validation_fraction=validation_fraction,
                          test_fraction=test_fraction)
  assignment = {}
  for key, ids in strata.items():
    ranked = sorted(ids, key=lambda i: (id_rank_key(i, salt), i))
    for rank, example_id in enumerate(ranked):
      assignment[example_id] = split_by_rank(rank, quotas[key])
  return assignment
