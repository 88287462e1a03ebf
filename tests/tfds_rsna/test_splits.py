"""The stable split: same ids -> same splits, whatever the row order."""

import random

import pytest

from tfds_rsna.rsna_bone_age import splits


def _rows(n, seed=0):
  rng = random.Random(seed)
  return [(f"{1000 + i}", float(rng.randint(6, 228)), rng.random() < 0.54) for i in range(n)]


def test_independent_of_row_order():
  rows = _rows(500)
  reference = splits.assign_splits(rows)
  for seed in range(3):
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    assert splits.assign_splits(shuffled) == reference


def test_fractions_are_honoured():
  assignment = splits.assign_splits(_rows(1000), validation_fraction=0.2, test_fraction=0.1)
  counts = {s: list(assignment.values()).count(s) for s in ("train", "validation", "test")}
  assert counts == {"train": 700, "validation": 200, "test": 100}


def test_stratified_by_sex_and_age_group():
  rows = _rows(2000, seed=1)
  assignment = splits.assign_splits(rows)
  for male in (True, False):
    young = [i for i, age, m in rows if m == male and age < 60]
    share = sum(assignment[i] == "test" for i in young) / len(young)
    assert 0.10 <= share <= 0.20


def test_salt_changes_the_draw_and_is_the_only_source_of_randomness():
  rows = _rows(300)
  assert splits.assign_splits(rows) == splits.assign_splits(rows, salt=splits.DEFAULT_SALT)
  assert splits.assign_splits(rows) != splits.assign_splits(rows, salt="other")


def test_tiny_and_tied_inputs_do_not_fail():
  assert splits.assign_splits([]) == {}
  tied = [(str(i), 100.0, True) for i in range(10)]  # one age: no age strata possible
  values = list(splits.assign_splits(tied).values())
  assert (values.count("train"), values.count("validation"), values.count("test")) == (6, 2, 2)


@pytest.mark.parametrize("validation,test", [(0.5, 0.5), (-0.1, 0.1), (0.1, 1.0)])
def test_bad_fractions_raise(validation, test):
  with pytest.raises(ValueError):
    splits.assign_splits(_rows(10), validation_fraction=validation, test_fraction=test)
