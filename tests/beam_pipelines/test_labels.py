"""Label tables in the three RSNA layouts, and every kind of bad row."""

import pytest

from bone_age import errors
from beam_pipelines import labels


def _reasons(rejected):
  return sorted(e.reason for e, _ in rejected)


def test_train_layout_with_true_false():
  rows, rejected = labels.parse_table("id,boneage,male\n1377,180,False\n1392,162.5,True\n", "train.csv",
                                      labels.TRAIN_SPEC)
  assert rejected == []
  assert [(r.id, r.boneage_months, r.male, r.source) for r in rows] == [
      ("1377", 180.0, False, "train.csv:2"), ("1392", 162.5, True, "train.csv:3")]


def test_validation_layout_with_upper_case_booleans():
  rows, rejected = labels.parse_table("Image ID,male,Bone Age (months)\n1386,FALSE,30\n1392,TRUE,162\n",
                                      "Validation.csv", labels.VALIDATION_SPEC, split="validation")
  assert rejected == []
  assert [(r.id, r.boneage_months, r.male, r.split) for r in rows] == [
      ("1386", 30.0, False, "validation"), ("1392", 162.0, True, "validation")]


def test_test_layout_with_m_f_and_decimal_ages():
  rows, _ = labels.parse_table("Case ID,Sex,Ground truth bone age (months)\n4360,M,168.93\n4361,F,169.65\n",
                               "test.csv", labels.TEST_SPEC)
  assert [(r.id, r.boneage_months, r.male) for r in rows] == [("4360", 168.93, True), ("4361", 169.65, False)]


def test_real_official_tables_parse_completely(rsna_labels_dir):
  for name, spec, expected in (("train.csv", labels.TRAIN_SPEC, 12611),
                               ("Validation.csv", labels.VALIDATION_SPEC, 1425),
                               ("test.csv", labels.TEST_SPEC, 200)):
    rows, rejected = labels.parse_table((rsna_labels_dir / name).read_text(), name, spec)
    assert (len(rows), rejected) == (expected, []), name


def test_bad_rows_are_rejected_with_reason_and_line():
  text = ("id,boneage,male\n"
          "1,-3,True\n"       # negative age
          "2,ten,False\n"     # non-numeric
          "3,120,X\n"         # unknown sex
          "4,nan,True\n"      # not finite
          "5,300,True\n"      # above 240 months
          ",100,True\n"       # empty id
          "7,100\n"           # missing cell
          "8,100,True\n")
  rows, rejected = labels.parse_table(text, "labels.csv", labels.TRAIN_SPEC)
  assert [r.id for r in rows] == ["8"]
  assert _reasons(rejected) == sorted([errors.INVALID_LABEL] * 6 + [errors.UNKNOWN_SEX])
  sources = sorted(e.source for e, _ in rejected)
  assert sources == [f"labels.csv:{n}" for n in range(2, 9)]
  assert {i for _, i in rejected} == {"1", "2", "3", "4", "5", None, "7"}


@pytest.mark.parametrize("cell", ["1_2", "nan", "NaN", "inf", "-Infinity", "0x10", "1e999", "12 months", "١٢"])
def test_age_cells_that_python_float_would_read_are_rejected(cell):
  """`float` reads 1_2 as 12 and accepts nan/inf; a label table holds plain decimals only."""
  rows, rejected = labels.parse_table(f"id,boneage,male\n1,{cell},True\n2,12,True\n", "labels.csv", labels.TRAIN_SPEC)
  assert [r.id for r in rows] == ["2"]
  [(error, example_id)] = rejected
  assert (error.reason, error.source, example_id) == (errors.INVALID_LABEL, "labels.csv:2", "1")
  assert "'boneage'" in error.detail and repr(cell) in error.detail


@pytest.mark.parametrize("cell,expected", [("12", 12.0), (" 12.5 ", 12.5), ("+7", 7.0), (".5", 0.5), ("1.2e2", 120.0)])
def test_plain_decimal_ages_still_parse(cell, expected):
  rows, rejected = labels.parse_table(f"id,boneage,male\n1,{cell},True\n", "labels.csv", labels.TRAIN_SPEC)
  assert rejected == [] and rows[0].boneage_months == expected


def test_missing_column_is_a_layout_error_not_a_row_error():
  with pytest.raises(ValueError, match="no column 'boneage'"):
    labels.parse_table("id,age,male\n1,2,True\n", "labels.csv", labels.TRAIN_SPEC)


def test_duplicates_conflicting_rows_all_rejected_identical_kept_once():
  rows, _ = labels.parse_table("id,boneage,male\n1,10,True\n2,20,False\n1,11,True\n3,30,True\n3,30,True\n",
                               "labels.csv", labels.TRAIN_SPEC)
  kept, rejected = labels.resolve_duplicates(rows)
  assert [r.id for r in kept] == ["2", "3"]
  assert sorted((i, e.reason) for e, i in rejected) == [
      ("1", errors.DUPLICATE_ID), ("1", errors.DUPLICATE_ID), ("3", errors.DUPLICATE_ID)]
  # Same decision whatever the row order.
  kept_reversed, rejected_reversed = labels.resolve_duplicates(list(reversed(rows)))
  assert [r.id for r in kept_reversed] == ["2", "3"] and len(rejected_reversed) == 3


def test_a_row_that_is_not_utf8_is_rejected_and_the_others_are_read(tmp_path):
  table = tmp_path / "labels.csv"
  table.write_bytes(b"\xef\xbb\xbfid,boneage,male\n1,10,True\nb\xe9d,20,False\n3,30,F\n")
  got = list(labels.ParseLabelTableFn().process((str(table), labels.TRAIN_SPEC, None)))
  rows = [g for g in got if isinstance(g, labels.LabelRow)]
  tagged = {g.tag: g.value for g in got if not isinstance(g, labels.LabelRow)}
  assert [(r.id, r.male, r.source) for r in rows] == [("1", True, "labels.csv:2"), ("3", False, "labels.csv:4")]
  assert tagged["rows_read"] == 3
  bad = tagged["rejects"]
  assert bad["reason"] == "invalid_label" and bad["id"] == "b\\xe9d" and bad["source"] == "labels.csv:3"
  assert bad["id"].encode("utf-8")  # no lone surrogates left: Beam can encode it
