"""Age groups: quantile bins of bone age, shared by builder, trainer and scorer.

The edges are computed once from the training labels when the dataset is
built, stored in the dataset metadata and copied into every exported model,
so a group index means the same thing everywhere. With the RSNA training
table and 3 groups the edges are the notebook's tertiles (113 and 150 months).
"""

from collections.abc import Sequence

import numpy as np

DEFAULT_NUM_GROUPS = 3
MAX_AGE_MONTHS = 240.0  # RSNA labels span 1-228 months; outputs are clamped to [0, 240].


def quantile_edges(ages_months: Sequence[float], num_groups: int = DEFAULT_NUM_GROUPS) -> list[float]:
  """Inner bin edges (num_groups - 1 of them) at equal quantiles of the ages.

  Raises:
    ValueError: if there are fewer labels than groups or the edges collapse
      (too many ties), since empty groups would make the classifier meaningless.
  """
  ages = np.asarray(ages_months, dtype=np.float64)
  if num_groups < 2:
    raise ValueError(f"num_groups must be >= 2, got {num_groups}")
  if ages.size < num_groups:
    raise ValueError(f"need at least {num_groups} labels for {num_groups} age groups, got {ages.size}")
  qs = np.linspace(0.0, 1.0, num_groups + 1)[1:-1]
  edges = [float(e) for e in np.quantile(ages, qs)]
  if any(b <= a for a, b in zip(edges, edges[1:])):
    raise ValueError(f"age-group edges are not strictly increasing: {edges}")
  return edges


def assign(age_months, edges: Sequence[float]):
  """Group index of each age: group i holds edges[i-1] <= age < edges[i]."""
  return np.searchsorted(np.asarray(edges, dtype=np.float64), age_months, side="right")


def group_slugs(edges: Sequence[float]) -> list[str]:
  """Column-safe names such as 'under_113_months', '113_to_150_months', '150_months_and_over'."""
  fmt = lambda e: f"{e:g}".replace(".", "_")
  slugs = [f"under_{fmt(edges[0])}_months"]
  slugs += [f"{fmt(a)}_to_{fmt(b)}_months" for a, b in zip(edges, edges[1:])]
  slugs.append(f"{fmt(edges[-1])}_months_and_over")
  return slugs


def edges_from_names(names: Sequence[str]) -> list[float]:
  """The edges that group_names made these names from ('<113 mo', '113-150 mo', '>=150 mo' -> [113, 150]).

  Exports record the group names; this lets readers of an export name the
  probability columns with group_slugs, as the evaluator does.
  """
  if len(names) < 2 or not names[0].startswith("<") or not names[-1].startswith(">="):
    raise ValueError(f"not age-group names made by group_names: {list(names)}")
  return [float(names[0][1:].removesuffix(" mo"))] + [float(n.removesuffix(" mo").split("-")[1]) for n in names[1:-1]]


def group_names(edges: Sequence[float]) -> list[str]:
  """Human names such as '<113 mo', '113-150 mo', '>=150 mo'."""
  fmt = lambda e: f"{e:g}"
  names = [f"<{fmt(edges[0])} mo"]
  names += [f"{fmt(a)}-{fmt(b)} mo" for a, b in zip(edges, edges[1:])]
  names.append(f">={fmt(edges[-1])} mo")
  return names
