"""Label tables joined with image files inside the Beam job.

Everything that grows with the number of rows runs on workers, so the job
graph holds only the table paths and the image folder, whatever the size of
the dataset (Dataflow refuses job requests over 20 MB):

  tables --ParseTables--> rows --GroupById--> unique rows (+ label rejects)
        --(hashed layouts) strata edges, stratum sizes, rank inside a stratum--> rows with a split
        --training ages--> age-group edges (a singleton)
  image folder --MatchFiles **--> (stem, path)
  rows + images --CoGroupByKey by id--> ImageRecords, `missing_file` / `duplicate_id` rejects,
                                        a count of image files without a label row

The split and age-group rules are exactly those of `splits.assign_splits`
and `age_groups.quantile_edges`: quantiles are computed from the full
multiset of ages (counted per distinct value, so the combine stays small),
and ranks inside a stratum from the full sorted stratum.
"""

import dataclasses
import json
import posixpath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
import numpy as np

from bone_age import age_groups
from bone_age import errors
from beam_pipelines import examples as examples_lib
from beam_pipelines import labels as labels_lib
from beam_pipelines import rejects
from tfds_rsna.rsna_bone_age import layouts
from tfds_rsna.rsna_bone_age import splits as splits_lib

# Written by the job beside the dataset files, read (and removed) by the
# builder once the job has finished: what the metadata needs from the data.
FACTS_FILE = "label_facts.json"
UNLABELED_TAG = "unlabeled"


def ages_from_counts(age_counts) -> np.ndarray:
  """The multiset of ages back from (age, count) pairs (order does not change quantiles)."""
  pairs = sorted(age_counts)
  ages = np.asarray([a for a, _ in pairs], dtype=np.float64)
  return np.repeat(ages, [int(n) for _, n in pairs])


def _age(row: labels_lib.LabelRow) -> float:
  return row.boneage_months


class _AgeCounts(beam.PTransform):
  """LabelRows -> a single list of (age in months, number of rows with that age)."""

  def expand(self, rows):
    return (rows
            | "Ages" >> beam.Map(_age)
            | "CountAges" >> beam.combiners.Count.PerElement()
            | "Gather" >> beam.combiners.ToList())


def _strata_edges(age_counts, num_groups: int) -> list[float]:
  return splits_lib.stratum_edges(ages_from_counts(age_counts), num_groups)


def _quotas(stratum_sizes, validation_fraction: float, test_fraction: float) -> dict:
  return splits_lib.stratum_quotas(dict(stratum_sizes), validation_fraction=validation_fraction,
                                   test_fraction=test_fraction)


def _key_by_stratum(row: labels_lib.LabelRow, edges):
  return splits_lib.stratum_of(row.boneage_months, row.male, edges), row


class RankStratumFn(beam.DoFn):
  """(stratum, rows) -> rows with their split, by rank of the salted id hash (`splits`)."""

  def __init__(self, salt: str):
    super().__init__()
    self._salt = salt

  def process(self, grouped, quotas):
    stratum, rows = grouped
    ranked = sorted(rows, key=lambda r: (splits_lib.id_rank_key(r.id, self._salt), r.id))
    for rank, row in enumerate(ranked):
      yield dataclasses.replace(row, split=splits_lib.split_by_rank(rank, quotas[stratum]))


class AssignHashedSplits(beam.PTransform):
  """Unique LabelRows -> the same rows with `split` set as `splits.assign_splits` would."""

  def __init__(self, *, validation_fraction: float, test_fraction: float, num_strata_groups: int,
               salt: str = splits_lib.DEFAULT_SALT):
    super().__init__()
    splits_lib.check_fractions(validation_fraction, test_fraction)
    self._validation_fraction = validation_fraction
    self._test_fraction = test_fraction
    self._num_strata_groups = num_strata_groups
    self._salt = salt

  def expand(self, rows):
    edges = (rows
             | "AgeCounts" >> _AgeCounts()
             | "StrataEdges" >> beam.Map(_strata_edges, self._num_strata_groups))
    keyed = rows | "KeyByStratum" >> beam.Map(_key_by_stratum, edges=beam.pvalue.AsSingleton(edges))
    quotas = (keyed
              | "CountPerStratum" >> beam.combiners.Count.PerKey()
              | "GatherStratumSizes" >> beam.combiners.ToList()
              | "Quotas" >> beam.Map(_quotas, self._validation_fraction, self._test_fraction))
    return (keyed
            | "GroupByStratum" >> beam.GroupByKey()
            | "RankInStratum" >> beam.ParDo(RankStratumFn(self._salt), quotas=beam.pvalue.AsSingleton(quotas)))


def _is_training(row: labels_lib.LabelRow) -> bool:
  return row.split == splits_lib.TRAIN


def training_edges(age_counts, num_groups: int) -> list[float]:
  """Age-group edges from the training ages' (age, count) pairs.

  Raises:
    ValueError: too few or too tied training labels (`age_groups.quantile_edges`).
  """
  ages = ages_from_counts(age_counts)
  try:
    return age_groups.quantile_edges(ages, num_groups)
  except ValueError as e:
    raise ValueError(f"cannot compute {num_groups} age groups from {ages.size} valid training labels: {e}") from e


def stem_and_path(path: str):
  """(file stem, path) for a candidate image file; nothing for hidden files and other suffixes."""
  name = posixpath.basename(path)  # "" for a gs:// folder placeholder ending in "/"
  if not name or name.startswith("."):
    return
  stem, suffix = posixpath.splitext(name)
  if suffix.lower() in layouts.IMAGE_SUFFIXES:
    yield stem, path


def _id_of_reject(record: dict):
  """(id, 1) for a rejected label row that names its id; nothing for one without an id."""
  if record.get("id"):
    yield record["id"], 1


def _metadata_path(metadata) -> str:
  return metadata.path


class JoinLabelsAndImagesFn(beam.DoFn):
  """(id, {"labels": [row], "images": [paths]}) -> ImageRecord, or a reject.

  A label without an image file becomes a record without a path (rejected
  as `missing_file` when it is read); an id with two image files is
  rejected as `duplicate_id` rather than guessed; image files whose id no
  label row names (valid or rejected) are counted, file by file, on
  `UNLABELED_TAG` (they are not part of the dataset).
  """

  def process(self, joined, edges):
    example_id, groups = joined
    rows = list(groups["labels"])
    paths = sorted(groups["images"])
    if not rows:
      # An id whose row was rejected has a label (its reject accounts for it);
      # only files whose id no table row names are without a label, each file counted.
      if paths and not list(groups["rejected_label_rows"]):
        yield beam.pvalue.TaggedOutput(UNLABELED_TAG, len(paths))
      return
    for row in rows:  # one per id after duplicate resolution
      if len(paths) > 1:
        yield rejects.reject(errors.InputError(
            example_id, errors.DUPLICATE_ID, f"{len(paths)} image files share this id: {', '.join(paths)}"),
            example_id)
        continue
      yield examples_lib.ImageRecord(
          id=row.id, path=paths[0] if paths else None, boneage_months=row.boneage_months, male=row.male,
          age_group=int(age_groups.assign(row.boneage_months, edges)), split=row.split)


def write_facts(path: str, edges, rows_read: int, image_files_without_label: int) -> str:
  """Writes the facts the dataset metadata needs (see `FACTS_FILE`)."""
  facts = {"age_group_edges_months": list(edges), "rows_read": int(rows_read),
           "image_files_without_label": int(image_files_without_label)}
  with FileSystems.create(path) as f:
    f.write(json.dumps(facts, sort_keys=True).encode("utf-8"))
  return path


@dataclasses.dataclass(frozen=True)
class SplitRule:
  """How rows get their split: from their table (official) or by salted hash rank in strata."""
  official: bool
  validation_fraction: float = 0.15
  test_fraction: float = 0.15
  num_strata_groups: int = age_groups.DEFAULT_NUM_GROUPS


class LabeledImages(beam.PTransform):
  """PBegin -> {"records": ImageRecords, "rejects": reject records}; writes the facts file.

  Args:
    tables: (path, TableSpec, official split or None) per label table.
    image_root: Folder searched recursively for image files (local or gs://).
    split_rule: Official splits, or the hashed stratified split's parameters.
    num_age_groups: Age groups of the dataset (edges from the training labels).
    facts_path: Where the job writes `FACTS_FILE`.
  """

  def __init__(self, tables, image_root: str, split_rule: SplitRule, num_age_groups: int, facts_path: str):
    super().__init__()
    self._tables = list(tables)
    self._image_root = str(image_root).rstrip("/")
    self._split_rule = split_rule
    self._num_age_groups = num_age_groups
    self._facts_path = str(facts_path)

  def expand(self, pbegin):
    labels = pbegin | "ReadLabelTables" >> labels_lib.ReadLabelTables(self._tables)
    rows = labels["rows"]
    if not self._split_rule.official:
      rows = rows | "AssignSplits" >> AssignHashedSplits(
          validation_fraction=self._split_rule.validation_fraction, test_fraction=self._split_rule.test_fraction,
          num_strata_groups=self._split_rule.num_strata_groups)
    edges = (rows
             | "TrainingRows" >> beam.Filter(_is_training)
             | "TrainingAgeCounts" >> _AgeCounts()
             | "AgeGroupEdges" >> beam.Map(training_edges, self._num_age_groups))
    images = (pbegin
              | "ListImages" >> fileio.MatchFiles(f"{self._image_root}/**",
                                                  empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
              | "ImagePaths" >> beam.Map(_metadata_path)
              | "KeyImagesByStem" >> beam.FlatMap(stem_and_path))
    joined = (
        {"labels": rows | "KeyRowsById" >> beam.Map(labels_lib.by_id), "images": images,
         "rejected_label_rows": labels["rejects"] | "KeyLabelRejectsById" >> beam.FlatMap(_id_of_reject)}
        | "JoinById" >> beam.CoGroupByKey()
        | "ToRecords" >> beam.ParDo(JoinLabelsAndImagesFn(), edges=beam.pvalue.AsSingleton(edges)).with_outputs(
            rejects.REJECTS_TAG, UNLABELED_TAG, main="records"))
    unlabeled = joined[UNLABELED_TAG] | "CountUnlabeledImages" >> beam.CombineGlobally(sum)
    _ = (pbegin
         | "FactsPath" >> beam.Create([self._facts_path])
         | "WriteFacts" >> beam.Map(
             write_facts, edges=beam.pvalue.AsSingleton(edges),
             rows_read=beam.pvalue.AsSingleton(labels[labels_lib.READ_COUNT_TAG]),
             image_files_without_label=beam.pvalue.AsSingleton(unlabeled)))
    all_rejects = ((labels["rejects"], joined[rejects.REJECTS_TAG]) | "FlattenLabelRejects" >> beam.Flatten())
    return {"records": joined.records, "rejects": all_rejects}
