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


def _equals(expected):
  def check(actual):
    (got,) = actual
    assert got == expected, {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
  return check


def test_the_beam_split_equals_assign_splits():
  """The split computed by the workers (`labeled_images`) is the launcher-side rule, row for row."""
  from apache_beam.testing.test_pipeline import TestPipeline  # pylint: disable=g-import-not-at-top
  from apache_beam.testing.util import assert_that  # pylint: disable=g-import-not-at-top
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from beam_pipelines import labels  # pylint: disable=g-import-not-at-top
  from tfds_rsna.rsna_bone_age import labeled_images  # pylint: disable=g-import-not-at-top
  rows = _rows(700, seed=5) + [(f"t{i}", 120.0, True) for i in range(40)]  # ties across a stratum edge
  expected = splits.assign_splits(rows, validation_fraction=0.2, test_fraction=0.1)
  label_rows = [labels.LabelRow(id=i, boneage_months=a, male=m, source=f"labels.csv:{n}")
                for n, (i, a, m) in enumerate(rows)]
  with TestPipeline(options=beam.options.pipeline_options.PipelineOptions(
      ["--runner=DirectRunner", "--direct_running_mode=in_memory"])) as p:
    assigned = (p
                | beam.Create(label_rows)
                | labeled_images.AssignHashedSplits(validation_fraction=0.2, test_fraction=0.1, num_strata_groups=3)
                | beam.Map(lambda r: (r.id, r.split))
                | beam.combiners.ToList()
                | beam.Map(dict))
    assert_that(assigned, _equals(expected))
