"""SD scores against hand-computed interpolations of the Brush Foundation table."""

import pytest

from bone_age import reference


@pytest.mark.parametrize("sex, ca_months, ba_months, expected_sd, expected_reading", [
    # Boys, 100 months: between 96 (SD 9.10) and 108 (SD 9.00): 9.10 - 4/12 * 0.10.
    ("M", 100.0, 120.0, 9.10 - 4.0 / 12.0 * 0.10, "advanced"),
    # Boys, 150 months: between 144 (10.38) and 156 (10.44): the midpoint.
    ("M", 150.0, 128.0, 10.41, "delayed"),
    # Boys, 200 months: between 192 (12.86) and 204 (13.05).
    ("M", 200.0, 190.0, 12.86 + 8.0 / 12.0 * 0.19, "normal"),
    # Girls, 50 months: between 48 (8.98) and 54 (10.73).
    ("F", 50.0, 40.0, 8.98 + 2.0 / 6.0 * 1.75, "normal"),
    # Girls, exactly on a row and at both ends of the table.
    ("F", 72.0, 93.0, 10.23, "advanced"),
    ("F", 3.0, 3.5, 0.72, "normal"),
    ("F", 192.0, 170.0, 7.31, "delayed"),
    ("M", 204.0, 204.0, 13.05, "normal"),
])
def test_sds_matches_hand_interpolation(sex, ca_months, ba_months, expected_sd, expected_reading):
  assert reference.sd_months(ca_months, sex) == pytest.approx(expected_sd, abs=1e-9)
  result = reference.sd_score(ba_months, ca_months, sex)
  assert result.sds == pytest.approx((ba_months - ca_months) / expected_sd, abs=1e-9)
  assert result.reading == expected_reading
  assert result.missing_reason is None


@pytest.mark.parametrize("sex, ca_months", [
    ("M", 2.9), ("M", 204.5), ("F", 2.0), ("F", 193.0),
    ("F", 200.0),  # inside the boys' table, outside the girls': no row at 204 months for girls
])
def test_outside_the_table_gives_no_sds_and_says_why(sex, ca_months):
  result = reference.sd_score(150.0, ca_months, sex)
  assert result == reference.SdsResult(None, None, reference.MISSING_CA_OUTSIDE_TABLE)
  assert reference.sd_months(ca_months, sex) is None


def test_unknown_age_or_sex_gives_the_reason():
  assert reference.sd_score(100.0, None, "M").missing_reason == reference.MISSING_CA_UNKNOWN
  assert reference.sd_score(100.0, float("nan"), "F").missing_reason == reference.MISSING_CA_UNKNOWN
  assert reference.sd_score(100.0, 100.0, None).missing_reason == reference.MISSING_SEX_UNKNOWN


def test_threshold_is_strict():
  sd = reference.sd_months(120.0, "M")
  assert reference.sd_score(120.0 + 2.0 * sd, 120.0, "M").reading == "normal"
  assert reference.sd_score(120.0 + 2.0 * sd + 1e-6, 120.0, "M").reading == "advanced"
  assert reference.sd_score(120.0 - 2.0 * sd - 1e-6, 120.0, "M").reading == "delayed"


def test_table_ships_as_package_data_with_both_sexes():
  assert reference.age_range_months("M") == (3.0, 204.0)
  assert reference.age_range_months("F") == (3.0, 192.0)
  assert len(reference.sd_table()["M"]) == 24 and len(reference.sd_table()["F"]) == 23
