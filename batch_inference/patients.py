"""Sex and chronological age of each image: from the metadata CSV or DICOM tags.

The model needs the patient's sex, and the report needs the age at the study
to state BA - CA. Both may come from a `--metadata_csv` (id,male[,chronological_
age_months]) or from the DICOM header (PatientSex, PatientBirthDate,
StudyDate); the CSV wins field by field, and every output row says which
source each value came from. A missing sex is never silently filled in: the
`--unknown_sex` policy decides, and its choice is recorded in the row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

from beam_pipelines import labels
from bone_age import errors
from bone_age import reporting
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
  if text is None or text.strip().lower() in _UNKNOWN:
    return None
  age = float(text)
  if not math.isfinite(age) or not 0.0 <= age <= MAX_CHRONOLOGICAL_AGE_MONTHS:
    raise ValueError(f"chronological_age_months={text!r} is not in [0, {MAX_CHRONOLOGICAL_AGE_MONTHS:g}]")
  return age


def _parse_row(row: dict) -> MetadataRow:
  try:
    return MetadataRow(male=_parse_male(row.get("male") or ""),
                       chronological_age_months=_parse_age(row.get("chronological_age_months")))
  except ValueError as e:
    return MetadataRow(male=None, chronological_age_months=None, problem=str(e))


def parse_metadata_csv(text: str, source: str) -> dict[str, MetadataRow]:
  """id -> MetadataRow. Bad rows are kept with their problem (their images get rejected).

  Raises:
    ValueError: when the header lacks `id` or `male` (a usage error: the job
      would otherwise ignore the file and score everything by DICOM tags).
  """
  reader = csv.DictReader(io.StringIO(text))
  fields = [f.strip().lower() for f in (reader.fieldnames or [])]
  if "id" not in fields or "male" not in fields:
    raise ValueError(f"{source}: metadata CSV needs columns id,male[,chronological_age_months], has {fields}")
  reader.fieldnames = fields
  table: dict[str, MetadataRow] = {}
  for line_number, raw in enumerate(reader, start=2):
    example_id = (raw.get("id") or "").strip()
    if not example_id:
      continue
    row = _parse_row(raw)
    if row.problem:
      row = dataclasses.replace(row, problem=f"{source} line {line_number}: {row.problem}")
    previous = table.get(example_id)
    if previous is not None and previous != row:
      row = MetadataRow(None, None, f"{source}: id {example_id!r} is listed twice with different values")
    table[example_id] = row
  return table


def load_metadata_csv(path: str) -> dict[str, MetadataRow]:
  """Reads the CSV through Beam's filesystems (local or gs://)."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  with FileSystems.open(path, compression_type="uncompressed") as f:
    data = f.read()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: the metadata CSV is not UTF-8 text ({e})") from e
  return parse_metadata_csv(text, path)


def lookup(table: dict[str, MetadataRow], example_id: str) -> MetadataRow | None:
  """The row of an id; archive members also match by their file stem.

  So a CSV keyed by RSNA ids ('1377') serves images shipped as 'batch.zip!
  images/1377.png' without the user knowing how we name members.
  """
  row = table.get(example_id)
  if row is None and "!" in example_id:
    row = table.get(sources.strip_image_suffix(example_id.split("!", 1)[1]))
  return row


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
