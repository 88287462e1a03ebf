"""Sex and chronological age: CSV over DICOM, field by field, and the unknown-sex policies."""

import datetime

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from bone_age import errors
from bone_age.imaging import PatientInfo
from batch_inference import patients
from batch_inference import sources

DICOM_F = PatientInfo(sex="F", birth_date=datetime.date(2010, 1, 1), study_date=datetime.date(2020, 1, 1))
DICOM_UNKNOWN = PatientInfo(sex=None, birth_date=None, study_date=None)


def _table(text: str, source: str = "meta.csv") -> dict:
  """id -> settled MetadataRow, parsed line by line as the workers do."""
  lines = text.encode("utf-8").split(b"\n")
  fields = [f.strip().lower() for f in lines[0].decode().split(",")]
  rows = {}
  for line in lines[1:]:
    for example_id, row in patients.parse_metadata_line(line, fields, source):
      rows.setdefault(example_id, []).append(row)
  return {k: patients.settle_rows(k, v, source) for k, v in rows.items()}


def test_csv_parsing_accepts_common_spellings_and_keeps_bad_rows_with_their_problem():
  table = _table("id,male,chronological_age_months\n1,True,100\n2,f,\n3,M,abc\n4,,50\n5,maybe,1\n6,1,20\n6,0,20\n"
                 "7,M,3\n7,M,3\n")
  assert table["1"] == patients.MetadataRow(True, 100.0)
  assert table["2"] == patients.MetadataRow(False, None)
  assert "'3'" in table["3"].problem and "abc" in table["3"].problem
  assert table["4"] == patients.MetadataRow(None, 50.0)
  assert "maybe" in table["5"].problem
  assert "twice" in table["6"].problem
  assert table["7"] == patients.MetadataRow(True, 3.0)  # the same row twice is not a conflict


@pytest.mark.parametrize("cell", ["1_2", "nan", "inf", "-inf", "1e999", "0x10"])
def test_metadata_ages_are_strict_decimals(cell):
  """`float` reads 1_2 as 12; nan once meant "unknown": both are problems naming the line, id and column."""
  table = _table(f"id,male,chronological_age_months\n1,M,{cell}\n2,M,12\n3,M,\n")
  assert "meta.csv" in table["1"].problem and "'1'" in table["1"].problem
  assert "'chronological_age_months'" in table["1"].problem and repr(cell) in table["1"].problem
  assert table["2"] == patients.MetadataRow(True, 12.0)
  assert table["3"] == patients.MetadataRow(True, None)  # An empty cell is an unknown age.


def test_a_line_that_is_not_utf8_is_a_problem_row_not_a_crash():
  fields = ["id", "male", "chronological_age_months"]
  [(example_id, row)] = patients.parse_metadata_line(b"9,M,\xff\xfe", fields, "m.csv")
  assert example_id == "9" and "not UTF-8" in row.problem


def test_csv_without_required_columns_is_a_usage_error(tmp_path):
  (tmp_path / "m.csv").write_text("image,sex\n1,M\n")
  with pytest.raises(ValueError, match="id,male"):
    patients.read_metadata_header(str(tmp_path / "m.csv"))
  (tmp_path / "ok.csv").write_bytes("\ufeffID,Male,chronological_age_months\r\n1,M,3\r\n".encode("utf-8"))
  assert patients.read_metadata_header(str(tmp_path / "ok.csv")) == ["id", "male", "chronological_age_months"]


def test_archive_members_match_the_csv_by_file_stem():
  assert patients.member_stem("batch.zip!images/1377.png") == "1377"
  assert patients.member_stem("1377") is None


def _ref(example_id: str, source: str) -> sources.MemberRef:
  return sources.MemberRef(source.split("!")[0], sources.KIND_FILE, example_id, source)


def test_join_on_the_workers_full_id_wins_then_file_stem(tmp_path):
  (tmp_path / "m.csv").write_text("id,male\n1377,true\nbatch.zip!hands/42.png,false\n42,true\n7,true\n7,false\n")
  refs = [_ref("batch.zip!hands/1377.png", "/in/batch.zip!hands/1377.png"),
          _ref("batch.zip!hands/42.png", "/in/batch.zip!hands/42.png"),
          _ref("1377", "/in/1377.png"), _ref("7", "/in/7.png"), _ref("other", "/in/other.png")]
  with test_pipeline.TestPipeline() as p:
    matched, _ = (p | beam.Create(refs)
                  | patients.JoinMetadata(str(tmp_path / "m.csv"), ["id", "male"]))
    summary = matched | beam.Map(lambda ref_row: (ref_row[0].example_id, None if ref_row[1] is None else (
        ref_row[1].male, bool(ref_row[1].problem))))
    assert_that(summary, equal_to([
        ("batch.zip!hands/1377.png", (True, False)),  # by stem
        ("batch.zip!hands/42.png", (False, False)),  # the full id wins over the stem's row
        ("1377", (True, False)),
        ("7", (None, True)),  # listed twice with different values
        ("other", None)]))


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
    patients.read_metadata_header(str(path))
