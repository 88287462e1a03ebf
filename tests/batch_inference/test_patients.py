"""Sex and chronological age: CSV over DICOM, field by field, and the unknown-sex policies."""

import datetime

import pytest

from bone_age import errors
from bone_age.imaging import PatientInfo
from batch_inference import patients

DICOM_F = PatientInfo(sex="F", birth_date=datetime.date(2010, 1, 1), study_date=datetime.date(2020, 1, 1))
DICOM_UNKNOWN = PatientInfo(sex=None, birth_date=None, study_date=None)


def test_csv_parsing_accepts_common_spellings_and_keeps_bad_rows_with_their_problem():
  table = patients.parse_metadata_csv(
      "id,male,chronological_age_months\n1,True,100\n2,f,\n3,M,abc\n4,,50\n5,maybe,1\n6,1,20\n6,0,20\n", "meta.csv")
  assert table["1"] == patients.MetadataRow(True, 100.0)
  assert table["2"] == patients.MetadataRow(False, None)
  assert "line 4" in table["3"].problem
  assert table["4"] == patients.MetadataRow(None, 50.0)
  assert "maybe" in table["5"].problem
  assert "twice" in table["6"].problem


def test_csv_without_required_columns_is_a_usage_error():
  with pytest.raises(ValueError, match="id,male"):
    patients.parse_metadata_csv("image,sex\n1,M\n", "m.csv")


def test_archive_members_match_the_csv_by_file_stem():
  table = patients.parse_metadata_csv("id,male\n1377,true\n", "m.csv")
  assert patients.lookup(table, "batch.zip!images/1377.png").male is True
  assert patients.lookup(table, "1377").male is True
  assert patients.lookup(table, "other") is None


def test_csv_wins_over_dicom_field_by_field():
  [subject] = patients.resolve_subjects("x", "x.dcm", DICOM_F, patients.MetadataRow(True, None), "reject")
  assert (subject.sex, subject.sex_source) == ("M", "csv")
  assert subject.chronological_age_source == "dicom"
  assert subject.chronological_age_months == pytest.approx(120.0, abs=0.1)
  [subject] = patients.resolve_subjects("x", "x.dcm", DICOM_F, patients.MetadataRow(None, 99.0), "reject")
  assert (subject.sex, subject.sex_source, subject.chronological_age_months, subject.chronological_age_source) == (
      "F", "dicom", 99.0, "csv")


def test_unknown_sex_policies():
  with pytest.raises(errors.InputError) as e:
    patients.resolve_subjects("x", "x.png", None, None, "reject")
  assert e.value.reason == errors.UNKNOWN_SEX
  both = patients.resolve_subjects("x", "x.dcm", DICOM_UNKNOWN, None, "both")
  assert [(s.sex, s.sex_source) for s in both] == [("M", "assumed_both"), ("F", "assumed_both")]
  [female] = patients.resolve_subjects("x", "x.png", None, None, "female")
  assert (female.sex, female.sex_source, female.male) == ("F", "assumed", 0.0)


def test_bad_csv_row_rejects_its_image_as_invalid_label():
  with pytest.raises(errors.InputError) as e:
    patients.resolve_subjects("x", "x.png", None, patients.MetadataRow(None, None, "m.csv line 3: bad"), "both")
  assert e.value.reason == errors.INVALID_LABEL


def test_binary_metadata_file_is_a_usage_error(tmp_path):
  path = tmp_path / "meta.csv"
  path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
  with pytest.raises(ValueError, match="not UTF-8"):
    patients.load_metadata_csv(str(path))
