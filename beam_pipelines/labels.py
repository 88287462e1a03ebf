"""Label tables -> validated (id, bone age, sex) rows, with every bad row named.

RSNA publishes its labels in three CSV layouts (train `id,boneage,male`,
validation `Image ID,male,Bone Age (months)` with TRUE/FALSE, test
`Case ID,Sex,Ground truth bone age (months)` with M/F and decimal ages), and
hospitals export their own. `TableSpec` names the columns of one layout; the
parser checks every row and returns the good ones plus one InputError per bad
row (non-numeric or out-of-range age, unknown sex, empty id, bytes that are
not UTF-8, duplicate id), so the job can list them in its rejects file
instead of dropping them. `ReadLabelTables` does the same inside a Beam job,
streaming each table on a worker, so no row ever enters the job graph.
"""

import csv
import dataclasses
import io
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam

from bone_age import age_groups
from bone_age import errors
from bone_age import table_numbers
from beam_pipelines import rejects

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


def parse_age_months(value: str, source: str, column: str = "boneage") -> float:
  """Bone age in months, or InputError(invalid_label) for what is not one.

  Strict decimal notation only (`bone_age.table_numbers`): `1_2`, `nan` and
  `inf` are rejects naming the row (`source`) and the column, never 12 or an
  unknown.
  """
  try:
    age = table_numbers.parse_decimal(value, column)
  except ValueError as error:
    raise errors.InputError(source, errors.INVALID_LABEL, f"bone age: {error}") from None
  if age < 0 or age > age_groups.MAX_AGE_MONTHS:
    raise errors.InputError(
        source, errors.INVALID_LABEL,
        f"bone age {age:g} months (column {column!r}) is outside [0, {age_groups.MAX_AGE_MONTHS:g}]")
  return age


def _column_index(header: Sequence[str], name: str, table_name: str) -> int:
  wanted = name.strip().lower()
  for i, column in enumerate(header):
    if column.strip().lstrip("\ufeff").lower() == wanted:
      return i
  raise ValueError(f"label table {table_name} has no column {name!r} (columns: {list(header)})")


def _is_not_utf8(text: str) -> bool:
  return any("\udc80" <= ch <= "\udcff" for ch in text)


def _escape_not_utf8(text: str) -> str:
  """Lone surrogates from surrogateescape shown as backslash escapes of their bytes."""
  return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _header_indices(header: Sequence[str] | None, spec: TableSpec, table_name: str) -> tuple[int, int, int]:
  if header is None:
    raise ValueError(f"label table {table_name} is empty")
  return (_column_index(header, spec.id_column, table_name), _column_index(header, spec.age_column, table_name),
          _column_index(header, spec.sex_column, table_name))


def check_header(first_line: str, table_name: str, spec: TableSpec) -> None:
  """Raises ValueError when a table's header line lacks one of the spec's columns (or the table is empty)."""
  _header_indices(next(csv.reader([first_line]), None) if first_line.strip() else None, spec, table_name)


def iter_table(lines: Iterable[str], table_name: str, spec: TableSpec, split: str | None = None
               ) -> Iterator[LabelRow | tuple[errors.InputError, str | None]]:
  """Parses one CSV label table row by row, holding one row in memory at a time.

  Args:
    lines: The table's text lines (header first), e.g. an open text file.
    table_name: Name shown in rejects (`labels.csv`), with the line number.
    spec: Which columns hold id, age and sex.
    split: Official split of every row of this table, if any.

  Yields:
    A LabelRow per valid row, an (InputError, id) pair per bad row, in table
    order. Duplicates are NOT resolved here (see `resolve_duplicates`).

  Raises:
    ValueError: the table lacks one of the spec's columns (a layout mismatch,
      not a bad row: nothing of it could be used).
  """
  reader = csv.reader(lines)
  header = next(reader, None)
  id_i, age_i, sex_i = _header_indices(header, spec, table_name)
  for cells in reader:
    if not any(c.strip() for c in cells):
      continue  # blank line, e.g. a trailing newline: not a row
    # The line the row ends on, as an editor shows it (a quoted cell may span lines).
    source = f"{table_name}:{reader.line_num}"
    example_id = cells[id_i].strip() if id_i < len(cells) else ""
    try:
      if any(_is_not_utf8(c) for c in cells):
        # Read with surrogateescape: the bytes that are not UTF-8 become lone
        # surrogates, which Beam cannot encode; name the row with them escaped.
        example_id = _escape_not_utf8(example_id)
        raise errors.InputError(source, errors.INVALID_LABEL, "row is not valid UTF-8")
      if len(cells) <= max(id_i, age_i, sex_i):
        raise errors.InputError(source, errors.INVALID_LABEL, f"row has {len(cells)} cells, expected {len(header)}")
      if not example_id:
        raise errors.InputError(source, errors.INVALID_LABEL, "empty id")
      age = parse_age_months(cells[age_i], source, header[age_i].strip().lstrip("\ufeff"))
      male = parse_sex(cells[sex_i])
      if male is None:
        raise errors.InputError(source, errors.UNKNOWN_SEX, f"sex {cells[sex_i]!r} is neither male nor female")
    except errors.InputError as e:
      yield e, example_id or None
      continue
    yield LabelRow(id=example_id, boneage_months=age, male=male, source=source, split=split)


def parse_table(text: str, table_name: str, spec: TableSpec, split: str | None = None
                ) -> tuple[list[LabelRow], list[tuple[errors.InputError, str | None]]]:
  """Parses a whole CSV label table held in memory (see `iter_table`).

  Returns:
    (rows, rejected): valid rows in table order, and (InputError, id) for
    each bad row.
  """
  rows, rejected = [], []
  for item in iter_table(io.StringIO(text), table_name, spec, split):
    (rows if isinstance(item, LabelRow) else rejected).append(item)
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


READ_COUNT_TAG = "rows_read"


class ParseLabelTableFn(beam.DoFn):
  """(path, TableSpec, split or None) -> LabelRow, or a counted reject per bad row.

  Streams the table through Beam's filesystems on a worker (one row in
  memory at a time), so a table's size never enters the job graph. Also
  emits, on `READ_COUNT_TAG`, the number of rows the table held.
  """

  def process(self, table: tuple[str, TableSpec, str | None]):
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
    path, spec, split = table
    table_name = path.rstrip("/").rsplit("/", 1)[-1]
    num_read = 0
    with FileSystems.open(path, compression_type="uncompressed") as raw:
      text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
      for item in iter_table(text, table_name, spec, split):
        num_read += 1
        if isinstance(item, LabelRow):
          yield item
        else:
          yield rejects.reject(*item)
    yield beam.pvalue.TaggedOutput(READ_COUNT_TAG, num_read)


def by_id(row: LabelRow) -> tuple[str, LabelRow]:
  return row.id, row


class ResolveDuplicatesFn(beam.DoFn):
  """(id, rows) -> the row kept for the id (`resolve_duplicates`), rejects for the others."""

  def process(self, grouped: tuple[str, Iterable[LabelRow]]):
    _, group = grouped
    kept, rejected = resolve_duplicates(group)
    yield from kept
    for error, example_id in rejected:
      yield rejects.reject(error, example_id)


class ReadLabelTables(beam.PTransform):
  """PBegin -> {"rows": unique valid LabelRows, "rejects": reject records, "rows_read": int}.

  Args:
    tables: (path, TableSpec, official split or None) per label table; paths
      any Beam filesystem can open (local, gs://).
  """

  def __init__(self, tables: Sequence[tuple[str, TableSpec, str | None]]):
    super().__init__()
    self._tables = [(str(path), spec, split) for path, spec, split in tables]

  def expand(self, pbegin):
    parsed = (pbegin
              | "ListTables" >> beam.Create(self._tables)
              | "ParseTables" >> beam.ParDo(ParseLabelTableFn()).with_outputs(
                  rejects.REJECTS_TAG, READ_COUNT_TAG, main="rows"))
    resolved = (parsed.rows
                | "KeyById" >> beam.Map(by_id)
                | "GroupById" >> beam.GroupByKey()
                | "ResolveDuplicates" >> beam.ParDo(ResolveDuplicatesFn()).with_outputs(
                    rejects.REJECTS_TAG, main="rows"))
    label_rejects = ((parsed[rejects.REJECTS_TAG], resolved[rejects.REJECTS_TAG])
                     | "FlattenLabelRejects" >> beam.Flatten())
    rows_read = parsed[READ_COUNT_TAG] | "SumRowsRead" >> beam.CombineGlobally(sum)
    return {"rows": resolved.rows, "rejects": label_rejects, READ_COUNT_TAG: rows_read}
