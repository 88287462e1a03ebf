"""Label tables -> validated (id, bone age, sex) rows, with every bad row named.

RSNA publishes its labels in three CSV layouts (train `id,boneage,male`,
validation `Image ID,male,Bone Age (months)` with TRUE/FALSE, test
`Case ID,Sex,Ground truth bone age (months)` with M/F and decimal ages), and
hospitals export their own. `TableSpec` names the columns of one layout; the
parser checks every row and returns the good ones plus one InputError per bad
row (non-numeric or out-of-range age, unknown sex, empty id, duplicate id), so
the job can list them in its rejects file instead of dropping them.
"""

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Sequence

from bone_age import age_groups
from bone_age import errors

_MALE_WORDS = frozenset({"true", "1", "m", "male", "t", "yes"})
_FEMALE_WORDS = frozenset({"false", "0", "f", "female", "no"})


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """Column names of one label-table layout (matched case-insensitively)."""
  id_column: str
  age_column: str
  sex_column: str


TRAIN_SPEC = TableSpec("id", "boneage", "male")  # RSNA train.csv, Kaggle, generic labels.csv
VALIDATION_SPEC = TableSpec("Image ID", "Bone Age (months)", "male")  # RSNA Validation.csv
TEST_SPEC = TableSpec("Case ID", "Ground truth bone age (months)", "Sex")  # RSNA test.csv


@dataclasses.dataclass(frozen=True)
class LabelRow:
  """One validated label.

  Attributes:
    id: Image id as written in the table (also the image file's stem).
    boneage_months: Bone age in months, finite, within [0, MAX_AGE_MONTHS].
    male: True for boys (RSNA convention).
    source: `<table>:<line>` so a user can find the row.
    split: The official split this table belongs to, or None.
  """
  id: str
  boneage_months: float
  male: bool
  source: str
  split: str | None = None


def parse_sex(value: str) -> bool | None:
  """True (male) / False (female) from any RSNA spelling; None when unknown."""
  word = value.strip().lower()
  if word in _MALE_WORDS:
    return True
  if word in _FEMALE_WORDS:
    return False
  return None


def parse_age_months(value: str, source: str) -> float:
  """Bone age in months, or InputError(invalid_label) for what is not one."""
  try:
    age = float(value.strip())
  except ValueError:
    raise errors.InputError(source, errors.INVALID_LABEL, f"bone age {value!r} is not a number") from None
  if not math.isfinite(age):
    raise errors.InputError(source, errors.INVALID_LABEL, f"bone age {value!r} is not finite")
  if age < 0 or age > age_groups.MAX_AGE_MONTHS:
    raise errors.InputError(
        source, errors.INVALID_LABEL, f"bone age {age:g} months is outside [0, {age_groups.MAX_AGE_MONTHS:g}]")
  return age


def _column_index(header: Sequence[str], name: str, table_name: str) -> int:
  wanted = name.strip().lower()
  for i, column in enumerate(header):
    if column.strip().lstrip("\ufeff").lower() == wanted:
      return i
  raise ValueError(f"label table {table_name} has no column {name!r} (columns: {list(header)})")


def parse_table(text: str, table_name: str, spec: TableSpec, split: str | None = None
                ) -> tuple[list[LabelRow], list[tuple[errors.InputError, str | None]]]:
  """Parses one CSV label table.

  Args:
    text: The CSV text (header line first).
    table_name: Name shown in rejects (`labels.csv`), with the line number.
    spec: Which columns hold id, age and sex.
    split: Official split of every row of this table, if any.

  Returns:
    (rows, rejected): valid rows in table order, and (InputError, id) for
    each bad row. Duplicates are NOT resolved here (see `resolve_duplicates`).

  Raises:
    ValueError: the table lacks one of the spec's columns (a layout mismatch,
      not a bad row: nothing of it could be used).
  """
  reader = csv.reader(io.StringIO(text))
  header = next(reader, None)
  if header is None:
    raise ValueError(f"label table {table_name} is empty")
  id_i = _column_index(header, spec.id_column, table_name)
  age_i = _column_index(header, spec.age_column, table_name)
  sex_i = _column_index(header, spec.sex_column, table_name)
  rows, rejected = [], []
  for line_number, cells in enumerate(reader, start=2):
    if not any(c.strip() for c in cells):
      continue  # blank line, e.g. a trailing newline: not a row
    source = f"{table_name}:{line_number}"
    example_id = cells[id_i].strip() if id_i < len(cells) else ""
    try:
      if len(cells) <= max(id_i, age_i, sex_i):
        raise errors.InputError(source, errors.INVALID_LABEL, f"row has {len(cells)} cells, expected {len(header)}")
      if not example_id:
        raise errors.InputError(source, errors.INVALID_LABEL, "empty id")
      age = parse_age_months(cells[age_i], source)
      male = parse_sex(cells[sex_i])
      if male is None:
        raise errors.InputError(source, errors.UNKNOWN_SEX, f"sex {cells[sex_i]!r} is neither male nor female")
    except errors.InputError as e:
      rejected.append((e, example_id or None))
      continue
    rows.append(LabelRow(id=example_id, boneage_months=age, male=male, source=source, split=split))
  return rows, rejected


def resolve_duplicates(rows: Iterable[LabelRow]) -> tuple[list[LabelRow], list[tuple[errors.InputError, str | None]]]:
  """Keeps one row per id, independent of row order.

  Identical repeats (same age, sex and split) keep one row and reject the
  others; conflicting rows are ALL rejected, since picking one would
  silently choose a label.

  Returns:
    (unique_rows sorted by id, rejected).
  """
  by_id: dict[str, list[LabelRow]] = {}
  for row in rows:
    by_id.setdefault(row.id, []).append(row)
  kept, rejected = [], []
  for example_id in sorted(by_id):
    group = sorted(by_id[example_id], key=lambda r: r.source)
    if len(group) == 1:
      kept.append(group[0])
      continue
    labels = {(r.boneage_months, r.male, r.split) for r in group}
    sources = ", ".join(r.source for r in group)
    if len(labels) == 1:
      kept.append(group[0])
      extra = group[1:]
      detail = f"id repeated with the same label in {sources}; kept {group[0].source}"
    else:
      extra = group
      detail = f"id appears with different labels in {sources}; none used"
    rejected.extend((errors.InputError(r.source, errors.DUPLICATE_ID, detail), example_id) for r in extra)
  return kept, rejected
