"""Bone age in words and chronological age at the study date."""

import datetime

import pytest

from bone_age import reporting


@pytest.mark.parametrize("months,text", [
    (124, "10 years 4 months"), (123.5, "10 years 4 months"), (123.49, "10 years 3 months"),
    (13, "1 year 1 month"), (0, "0 years 0 months"), (11.6, "1 year 0 months"), (240, "20 years 0 months"),
])
def test_format_years_months(months, text):
  assert reporting.format_years_months(months) == text


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_format_refuses_non_ages(bad):
  with pytest.raises(ValueError):
    reporting.format_years_months(bad)


def test_chronological_age_months():
  age = reporting.chronological_age_months(datetime.date(2010, 3, 1), datetime.date(2020, 3, 1))
  assert age == pytest.approx(120.0, abs=0.05)
  assert reporting.chronological_age_months(None, datetime.date(2020, 1, 1)) is None
  assert reporting.chronological_age_months(datetime.date(2020, 1, 2), datetime.date(2020, 1, 1)) is None
