"""The three accepted `manual_dir` layouts, detected from the files present.

  kaggle:   boneage-training-dataset.csv (id,boneage,male) + images anywhere
            below (boneage-training-dataset/<id>.png); an unlabeled Kaggle
            test set (boneage-test-dataset.csv, Case ID,Sex) is counted and
            reported but never built (it has no labels).
  official: train.csv, Validation.csv and test.csv, each in its RSNA column
            layout, with their image folders below; the official splits.
  generic:  labels.csv (id,boneage,male) + images/<id>.<png|jpg|jpeg|dcm|none>,
            the layout of the phantoms, of the RSNA sample and of a hospital
            export. Only `images/` is searched: other folders may hold files
            with the same stems (the phantoms' `masks/<id>.png`).

Images are found by file stem anywhere below the layout's image root
(`manual_dir` itself for Kaggle and official), so any folder naming works; an
id with two image files (`1.png` and `1.dcm`) is ambiguous and rejected
rather than guessed. The tables are read and joined with the images inside
the Beam job (`labeled_images`); this module only detects the layout.
"""

import dataclasses
import logging

from etils import epath

from beam_pipelines import labels as labels_lib
from tfds_rsna.rsna_bone_age import splits

KAGGLE, OFFICIAL, GENERIC = "kaggle", "official", "generic"
KAGGLE_TRAIN_TABLE = "boneage-training-dataset.csv"
KAGGLE_TEST_TABLE = "boneage-test-dataset.csv"
GENERIC_TABLE = "labels.csv"
GENERIC_IMAGES_DIR = "images"
OFFICIAL_TABLES = (  # file name (case-insensitive), columns, split
    ("train.csv", labels_lib.TRAIN_SPEC, splits.TRAIN),
    ("validation.csv", labels_lib.VALIDATION_SPEC, splits.VALIDATION),
    ("test.csv", labels_lib.TEST_SPEC, splits.TEST),
)
# "" = no extension: DICOM files from PACS exports often have none.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""})


@dataclasses.dataclass(frozen=True)
class Layout:
  """A detected layout.

  Attributes:
    name: kaggle / official / generic.
    tables: (path, column spec, official split or None) per label table.
    image_root: Folder searched (recursively) for image files.
    unlabeled_table: The Kaggle unlabeled test table, if present.
  """
  name: str
  tables: tuple[tuple[epath.Path, labels_lib.TableSpec, str | None], ...]
  image_root: epath.Path
  unlabeled_table: epath.Path | None = None

  @property
  def has_official_splits(self) -> bool:
    return self.name == OFFICIAL


def _top_level_files(manual_dir: epath.Path) -> dict[str, epath.Path]:
  return {p.name.lower(): p for p in manual_dir.iterdir() if p.is_file()}


def detect_layout(manual_dir) -> Layout:
  """Which layout `manual_dir` holds.

  Raises:
    ValueError: none or several layouts match, or the official layout is
      incomplete; the message lists what was expected and what was found.
  """
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise ValueError(f"manual_dir {manual_dir} does not exist or is not a folder")
  files = _top_level_files(manual_dir)
  candidates = []
  if KAGGLE_TRAIN_TABLE in files:
    candidates.append(Layout(KAGGLE, ((files[KAGGLE_TRAIN_TABLE], labels_lib.TRAIN_SPEC, None),), manual_dir,
                             unlabeled_table=files.get(KAGGLE_TEST_TABLE)))
  official_found = [name for name, _, _ in OFFICIAL_TABLES if name in files]
  if official_found:
    missing = [name for name, _, _ in OFFICIAL_TABLES if name not in files]
    if missing:
      raise ValueError(
          f"manual_dir {manual_dir} looks like the official RSNA layout ({official_found} found) but lacks "
          f"{missing}: put train.csv, Validation.csv and test.csv next to their image folders")
    candidates.append(Layout(
        OFFICIAL, tuple((files[name], spec, split) for name, spec, split in OFFICIAL_TABLES), manual_dir))
  if GENERIC_TABLE in files:
    candidates.append(Layout(GENERIC, ((files[GENERIC_TABLE], labels_lib.TRAIN_SPEC, None),),
                             manual_dir / GENERIC_IMAGES_DIR))
  if len(candidates) == 1:
    return candidates[0]
  expected = (f"Kaggle ({KAGGLE_TRAIN_TABLE} + images), official RSNA (train.csv, Validation.csv, test.csv + "
              f"images) or generic ({GENERIC_TABLE} + images/<id>.<ext>)")
  if not candidates:
    raise ValueError(f"manual_dir {manual_dir} matches no supported layout. Expected {expected}; "
                     f"found top-level files {sorted(files)}")
  raise ValueError(f"manual_dir {manual_dir} matches several layouts ({[c.name for c in candidates]}); "
                   f"keep the label tables of one layout only. Expected {expected}")


def check_headers(layout: Layout) -> None:
  """Reads only the first line of each label table and checks its columns.

  Raises:
    ValueError: a table is empty or lacks a column of its layout (nothing of
      it could be used: a usage error, not a bad row).
  """
  for path, spec, _ in layout.tables:
    with path.open("rb") as f:
      first_line = f.readline().decode("utf-8-sig", errors="replace")
    labels_lib.check_header(first_line, path.name, spec)


def count_label_rows(layout: Layout) -> int:
  """Non-blank data lines of every label table: the images the build will write or reject (its progress total).

  Streams each table once on the launching machine; the workers still read and parse them.
  """
  rows = 0
  for path, _, _ in layout.tables:
    with path.open("rb") as f:
      rows += sum(1 for line in f if line.strip()) - 1  # the header
  return max(rows, 0)


def count_unlabeled_rows(layout: Layout) -> int:
  """Rows of the Kaggle unlabeled test table (reported, not built)."""
  if layout.unlabeled_table is None:
    return 0
  lines = [l for l in layout.unlabeled_table.read_text(encoding="utf-8-sig").splitlines()[1:] if l.strip()]
  logging.info("Kaggle unlabeled test set: %d rows in %s, not built (no labels; score them with boneage-score)",
               len(lines), layout.unlabeled_table)
  return len(lines)
