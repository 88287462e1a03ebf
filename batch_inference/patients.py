"""Sex and chronological age of each image: from the metadata CSV or DICOM tags.

The model needs the patient's sex, and the report needs the age at the study
to state BA - CA. Both may come from a `--metadata_csv` (id,male[,chronological_
age_months]) or from the DICOM header (PatientSex, PatientBirthDate,
StudyDate); the CSV wins field by field, and every output row says which
source each value came from. The CSV is read and joined by id on the
workers (`JoinMetadata`), never loaded by the launcher. A missing sex is never silently filled in: the
`--unknown_sex` policy decides, and its choice is recorded in the row.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator

import apache_beam as beam
from apache_beam import coders

from beam_pipelines import labels
from beam_pipelines import rejects
from bone_age import errors
from bone_age import reporting
from bone_age import table_numbers
from batch_inference import sources

# Where a row's sex came from.
SEX_FROM_CSV = "csv"
SEX_FROM_DICOM = "dicom"
SEX_ASSUMED = "assumed"  # --unknown_sex=male|female
SEX_ASSUMED_BOTH = "assumed_both"  # --unknown_sex=both: one row per sex

UNKNOWN_SEX_REJECT = "reject"
UNKNOWN_SEX_BOTH = "both"
UNKNOWN_SEX_POLICIES = (UNKNOWN_SEX_REJECT, UNKNOWN_SEX_BOTH, "male", "female")

MAX_CHRONOLOGICAL_AGE_MONTHS = 300.0  # 25 years: beyond any paediatric study
# Spellings that mean "sex not known" (an empty cell, DICOM's O): such a row
# leaves the decision to --unknown_sex; any other unrecognised value is an error.
_UNKNOWN = frozenset({"", "unknown", "o", "other", "nan", "none"})
_UNKNOWN_AGE = frozenset({"", "unknown"})
AGE_COLUMN = "chronological_age_months"
_HEADER_BYTES = 64 * 1024  # the header line must fit in this
BY_STEM_TAG = "by_stem"


@dataclasses.dataclass(frozen=True)
class MetadataRow:
  """One metadata CSV row. `problem` is set when the row cannot be trusted."""
  male: bool | None
  chronological_age_months: float | None
  problem: str | None = None


@dataclasses.dataclass(frozen=True)
class Subject:
  """What one image is scored as: sex, and the known chronological age."""
  sex: str  # "M" or "F"
  sex_source: str
  chronological_age_months: float | None
  chronological_age_source: str | None  # "csv" | "dicom" | None

  @property
  def male(self) -> float:
    return 1.0 if self.sex == "M" else 0.0


def _parse_male(text: str) -> bool | None:
  # The label tables' parser, so the builder and the scorer read sexes alike.
  male = labels.parse_sex(text)
  if male is not None or text.strip().lower() in _UNKNOWN:
    return male
  raise ValueError(f"male={text!r} is not one of true/false, 1/0, M/F")


def _parse_age(text: str | None) -> float | None:
  """An empty cell (or "unknown") is an unknown age; anything else must be a strict decimal.

  `nan` is not "unknown": a table that says nan was written by a tool that
  lost a value, and `1_2` is not 12 (`bone_age.table_numbers`).
  """
  if text is None or text.strip().lower() in _UNKNOWN_AGE:
    return None
  age = table_numbers.parse_decimal(text, AGE_COLUMN)
  if not 0.0 <= age <= MAX_CHRONOLOGICAL_AGE_MONTHS:
    raise ValueError(f"column {AGE_COLUMN!r}: {text!r} is not in [0, {MAX_CHRONOLOGICAL_AGE_MONTHS:g}]")
  return age


def _parse_row(row: dict) -> MetadataRow:
  try:
    return MetadataRow(male=_parse_male(row.get("male") or ""),
                       chronological_age_months=_parse_age(row.get(AGE_COLUMN)))
  except ValueError as e:
    return MetadataRow(male=None, chronological_age_months=None, problem=str(e))


def read_metadata_header(path: str) -> list[str]:
  """The metadata CSV's column names (lower case), read from its first line only.

  The rows themselves are read by the pipeline's workers (`JoinMetadata`),
  so the job graph does not grow with the table.

  Raises:
    ValueError: when the file is not UTF-8 text or its header lacks `id` or
      `male` (a usage error: the job would otherwise ignore the file and
      score everything by DICOM tags).
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  with FileSystems.open(path, compression_type="uncompressed") as f:
    head = f.read(_HEADER_BYTES)
  first_line = head.split(b"\n", 1)[0]
  try:
    text = first_line.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: the metadata CSV is not UTF-8 text ({e})") from e
  fields = [f.strip().lower() for f in next(csv.reader([text]), [])]
  if "id" not in fields or "male" not in fields:
    raise ValueError(f"{path}: metadata CSV needs columns id,male[,chronological_age_months], has {fields}")
  return fields


def parse_metadata_line(line: bytes, fields: list[str], source: str) -> Iterator[tuple[str, MetadataRow]]:
  """(id, MetadataRow) of one CSV data line; nothing for a blank line or an empty id.

  A line that is not UTF-8 or does not parse keeps its problem (its images
  get rejected as invalid_label).
  """
  try:
    text, not_utf8 = line.decode("utf-8"), False
  except UnicodeDecodeError:
    text, not_utf8 = line.decode("utf-8", "backslashreplace"), True
  if not text.strip():
    return
  values = next(csv.reader([text]), [])
  raw = dict(zip(fields, values))
  example_id = (raw.get("id") or "").strip()
  if not example_id:
    return
  row = MetadataRow(None, None, "the line is not UTF-8 text") if not_utf8 else _parse_row(raw)
  if row.problem:
    row = dataclasses.replace(row, problem=f"{source}: id {example_id!r}: {row.problem}")
  yield example_id, row


def settle_rows(example_id: str, rows: list[MetadataRow], source: str) -> MetadataRow | None:
  """The one row of an id: None without rows, a problem row when its rows disagree."""
  distinct = set(rows)
  if not distinct:
    return None
  if len(distinct) > 1:
    return MetadataRow(None, None, f"{source}: id {example_id!r} is listed twice with different values")
  return distinct.pop()


def member_stem(example_id: str) -> str | None:
  """The file stem an archive member also matches the CSV by; None for a plain file's id.

  So a CSV keyed by RSNA ids ('1377') serves images shipped as 'batch.zip!
  images/1377.png' without the user knowing how we name members.
  """
  if "!" not in example_id:
    return None
  return sources.strip_image_suffix(example_id.split("!", 1)[1])


class MatchRowsFn(beam.DoFn):
  """(key, {'refs': [MemberRef], 'rows': [MetadataRow]}) -> (MemberRef, row or None).

  Keyed by full id (`by_stem=False`), it also refuses the second and later
  copies of a member name within one archive (same id and same source), and
  sends archive members without a row on to the stem join (BY_STEM_TAG).
  """

  def __init__(self, source: str | None, by_stem: bool):
    super().__init__()
    self._source = source
    self._by_stem = by_stem

  def process(self, element):
    key, grouped = element
    row = settle_rows(key, list(grouped.get("rows", ())), self._source or "")
    refs = sorted(grouped["refs"], key=lambda r: (r.source, r.index))
    seen = set()
    for ref in refs:
      if not self._by_stem:
        if ref.source in seen:
          yield rejects.reject(errors.InputError(ref.source, errors.DUPLICATE_ID,
                                                 "the archive holds this member name twice"), ref.example_id)
          continue
        seen.add(ref.source)
        stem = member_stem(ref.example_id)
        if row is None and self._source is not None and stem is not None:
          yield beam.pvalue.TaggedOutput(BY_STEM_TAG, (stem, ref))
          continue
      yield ref, row


class JoinMetadata(beam.PTransform):
  """MemberRefs -> (MemberRef, MetadataRow or None), joined on the workers.

  A row keyed by the full id wins; an archive member without one takes the
  row keyed by its file stem. Without a CSV every reference gets None. Same-
  name members of one archive are settled here, before any bytes are read.
  Returns (matched, rejects).
  """

  def __init__(self, metadata_csv: str | None, fields: list[str] | None):
    super().__init__()
    self._csv = metadata_csv
    self._fields = list(fields or [])

  def expand(self, refs):
    keyed = refs | "KeyById" >> beam.Map(lambda r: (r.example_id, r))
    inputs = {"refs": keyed}
    if self._csv:
      inputs["rows"] = (refs.pipeline
                        | "ReadMetadataCsv" >> beam.io.ReadFromText(self._csv, skip_header_lines=1,
                                                                    coder=coders.BytesCoder())
                        | "ParseMetadata" >> beam.FlatMap(parse_metadata_line, fields=self._fields,
                                                          source=self._csv))
    by_id = (inputs | "GroupById" >> beam.CoGroupByKey()
             | "MatchById" >> beam.ParDo(MatchRowsFn(self._csv, by_stem=False)).with_outputs(
                 rejects.REJECTS_TAG, BY_STEM_TAG, main="matched"))
    if not self._csv:
      return by_id.matched, by_id[rejects.REJECTS_TAG]
    by_stem = ({"refs": by_id[BY_STEM_TAG], "rows": inputs["rows"]}
               | "GroupByStem" >> beam.CoGroupByKey()
               | "MatchByStem" >> beam.ParDo(MatchRowsFn(self._csv, by_stem=True)))
    matched = (by_id.matched, by_stem) | "AllMatched" >> beam.Flatten()
    return matched, by_id[rejects.REJECTS_TAG]


def resolve_subjects(example_id: str, source: str, patient, row: MetadataRow | None, unknown_sex: str) -> list[Subject]:
  """The subject(s) an image is scored as, or an InputError.

  Args:
    example_id: The image id (for error messages).
    source: The image's source (for error messages).
    patient: bone_age.imaging.PatientInfo from DICOM tags, or None.
    row: Its metadata CSV row, or None.
    unknown_sex: One of UNKNOWN_SEX_POLICIES.

  Returns:
    One Subject, or two (male and female) under the `both` policy.

  Raises:
    InputError: `invalid_label` for a bad CSV row, `unknown_sex` under the
      `reject` policy when neither source knows the sex.
  """
  del example_id
  if row is not None and row.problem:
    raise errors.InputError(source, errors.INVALID_LABEL, row.problem)
  age, age_source = None, None
  if row is not None and row.chronological_age_months is not None:
    age, age_source = row.chronological_age_months, "csv"
  elif patient is not None:
    age = reporting.chronological_age_months(patient.birth_date, patient.study_date)
    age_source = "dicom" if age is not None else None

  def subject(sex, sex_source):
    return Subject(sex, sex_source, age, age_source)

  if row is not None and row.male is not None:
    return [subject("M" if row.male else "F", SEX_FROM_CSV)]
  if patient is not None and patient.sex in ("M", "F"):
    return [subject(patient.sex, SEX_FROM_DICOM)]
  if unknown_sex == UNKNOWN_SEX_BOTH:
    return [subject("M", SEX_ASSUMED_BOTH), subject("F", SEX_ASSUMED_BOTH)]
  if unknown_sex in ("male", "female"):
    return [subject("M" if unknown_sex == "male" else "F", SEX_ASSUMED)]
  raise errors.InputError(source, errors.UNKNOWN_SEX,
                          "sex is in neither the metadata CSV nor the DICOM header (see --unknown_sex)")
