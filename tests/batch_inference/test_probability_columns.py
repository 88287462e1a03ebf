"""Age-group names and column slugs: the scorer and the evaluator must name the same columns."""

import pytest

from batch_inference import writers
from bone_age import age_groups


@pytest.mark.parametrize("edges", [[113.0, 150.0], [60.0, 113.5, 150.0, 200.0], [100.0]])
def test_names_give_back_their_edges(edges):
  assert age_groups.edges_from_names(age_groups.group_names(edges)) == edges


def test_scorer_columns_equal_the_evaluator_slugs():
  edges = [113.0, 150.0]
  assert writers.probability_columns(age_groups.group_names(edges)) == [
      "prob_under_113_months", "prob_113_to_150_months", "prob_150_months_and_over"]
  assert writers.probability_columns(age_groups.group_names(edges)) == [
      f"prob_{slug}" for slug in age_groups.group_slugs(edges)]


def test_names_not_made_by_group_names_are_refused():
  with pytest.raises(ValueError, match="not age-group names"):
    age_groups.edges_from_names(["young", "old"])


def test_names_an_export_chose_itself_become_lower_case_columns():
  assert writers.probability_columns(["Pre-puberty", "Early puberty"]) == ["prob_pre_puberty", "prob_early_puberty"]
