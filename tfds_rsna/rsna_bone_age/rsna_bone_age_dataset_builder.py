"""rsna_bone_age: RSNA Pediatric Bone Age radiographs, letterboxed, with labels.

A Beam-based TFDS builder over a manually downloaded `manual_dir` in one of
three layouts (see `layouts`). The launcher reads and validates the label
tables' headers; the Beam job reads the tables, fixes the splits (official
ones, or a stable hashed stratified split) and the age-group edges (quantiles
of the TRAINING labels, stored in the metadata so trainer and scorer use
exactly the same groups), joins the labels with the image files by id
(`labeled_images`) and decodes, validates and letterboxes every image. Every
refused input is listed in `rejects.jsonl` beside the dataset files and
counted per reason in `info.metadata["rejected"]`; the quality gate's
decisions per split (image rejects by reason, flags by code, hand crops) are
in `info.metadata["quality_by_split"]`.
"""

import dataclasses
import json
import logging

import tensorflow_datasets as tfds

from bone_age import age_groups
from bone_age import imaging
from bone_age import quality
from bone_age import schema
from beam_pipelines import examples as examples_lib
from beam_pipelines import progress as progress_lib
from tfds_rsna.rsna_bone_age import labeled_images
from tfds_rsna.rsna_bone_age import layouts
from tfds_rsna.rsna_bone_age import splits as splits_lib

REJECTS_FILE = "rejects.jsonl"
EDGES_KEY = "age_group_edges_months"


@dataclasses.dataclass(eq=False)
class RsnaBoneAgeConfig(tfds.core.BuilderConfig):
  """One resolution of the dataset.

  Attributes:
    image_size_px: Side of the letterboxed square image.
    num_age_groups: Quantile bins of the training labels (ClassLabel size).
    validation_fraction: Share of validation examples when the layout has
      no official splits.
    test_fraction: Share of test examples likewise.
    max_pixels: Images whose header claims more pixels are rejected as bombs.
  """
  image_size_px: int = schema.DEFAULT_IMAGE_SIZE_PX
  num_age_groups: int = age_groups.DEFAULT_NUM_GROUPS
  validation_fraction: float = 0.15
  test_fraction: float = 0.15
  max_pixels: int = imaging.DEFAULT_MAX_PIXELS


def _resolution_config(size_px: int) -> RsnaBoneAgeConfig:
  return RsnaBoneAgeConfig(
      name=f"{size_px}px", image_size_px=size_px,
      description=f"{size_px}x{size_px}x1 uint8, aspect ratio kept (black letterbox), "
                  f"{age_groups.DEFAULT_NUM_GROUPS} age groups, 15%/15% validation/test when not official.")


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for rsna_bone_age."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: letterboxed images, stable splits, rejects file."}
  BUILDER_CONFIGS = [_resolution_config(384), _resolution_config(512), _resolution_config(128)]
  DEFAULT_CONFIG_NAME = "384px"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  The RSNA images cannot be downloaded automatically (they need an account and
  acceptance of the terms). Put ONE of these layouts in `manual_dir`
  (`--manual_dir=DIR`; default `<data_dir>/downloads/manual/`):

  1. Kaggle (https://www.kaggle.com/datasets/kmader/rsna-bone-age): unzip so
     that manual_dir holds `boneage-training-dataset.csv` (id,boneage,male)
     and the folder `boneage-training-dataset/` of `<id>.png`. The unlabeled
     `boneage-test-dataset.csv` + `boneage-test-dataset/` may stay: they are
     counted but not built (no labels). Splits: stable hashed, stratified.
  2. Official RSNA (https://www.rsna.org/rsnai/ai-image-challenge/rsna-pediatric-bone-age-challenge-2017):
     manual_dir holds `train.csv` (id,boneage,male), `Validation.csv`
     (Image ID,male,Bone Age (months)) and `test.csv` (Case ID,Sex,Ground
     truth bone age (months)) next to the unzipped image folders (any folder
     names: images are found by file stem below manual_dir). Splits: official.
  3. Generic (a hospital export, `boneage-phantoms` output): `labels.csv`
     (id,boneage,male) and `images/<id>.<png|jpg|jpeg|dcm>` (or DICOM files
     without extension). Splits: stable hashed, stratified.
  """

  def __init__(self, *, rejects_path: str | None = None, quality_gate: str = quality.DEFAULT_POLICY,
               progress: "progress_lib.ProgressMonitor | None" = None, **kwargs):
    """Args: rejects_path: extra copy of the rejects file (e.g. `--rejects`); quality_gate: the content
    gate's policy (`bone_age.quality`: strict, flag or off); progress: counts each split's examples for
    boneage-preprocess's progress line."""
    self._extra_rejects_path = rejects_path
    self._progress = progress
    self._quality_gate = quality_gate
    self._build_summary: dict = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return self.dataset_info_from_configs(
        features=schema.features_dict(config.image_size_px, config.num_age_groups),
        supervised_keys=None,
        homepage="https://www.rsna.org/rsnai/ai-image-challenge/rsna-pediatric-bone-age-challenge-2017",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager, pipeline):
    config = self.builder_config
    manual_dir = dl_manager.manual_dir
    layout = layouts.detect_layout(manual_dir)
    layouts.check_headers(layout)  # a wrong layout fails here, before any worker starts
    split_rule = labeled_images.SplitRule(
        official=layout.has_official_splits, validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction, num_strata_groups=config.num_age_groups)
    self.info.metadata.update({
        "layout": layout.name,
        "synthetic": (manual_dir / schema.SYNTHETIC_MARKER_FILE).exists(),  # manual_dir is an epath.Path
        "kaggle_unlabeled_test_rows_not_built": layouts.count_unlabeled_rows(layout),
        "split_rule": "official" if layout.has_official_splits else (
            f"sha256 rank within sex x age-group strata, validation={config.validation_fraction}, "
            f"test={config.test_fraction}"),
    })
    rejects_paths = [str(self.data_path / REJECTS_FILE)]
    if self._extra_rejects_path:
      rejects_paths.append(str(self._extra_rejects_path))
    # Label tables are read, split and joined with the image files by the
    # workers: the job graph holds paths only, whatever the number of rows.
    labeled = pipeline | "Labels" >> labeled_images.LabeledImages(
        [(str(path), spec, split) for path, spec, split in layout.tables], str(layout.image_root), split_rule,
        config.num_age_groups, str(self.data_path / labeled_images.FACTS_FILE))
    rejects_progress = None
    if self._progress is not None:
      self._progress.total = layouts.count_label_rows(layout)  # written + rejected reach it
      rejects_progress = (self._progress.progress_dir, self._progress.stage_of(progress_lib.REJECTED_PART))
    examples = (labeled["records"], labeled["rejects"]) | "RsnaBoneAge" >> examples_lib.BuildExamples(
        config.image_size_px, rejects_paths, max_pixels=config.max_pixels, quality_gate=self._quality_gate,
        rejects_progress=rejects_progress)
    return {split: self._generate_examples(examples, split) for split in self._declared_splits(layout)}

  def _declared_splits(self, layout: layouts.Layout) -> list[str]:
    """Splits announced before the job runs: every official table, else every non-zero fraction."""
    if layout.has_official_splits:
      return sorted({split for _, _, split in layout.tables},
                    key=(splits_lib.TRAIN, splits_lib.VALIDATION, splits_lib.TEST).index)
    config = self.builder_config
    fractions = {splits_lib.TRAIN: 1.0, splits_lib.VALIDATION: config.validation_fraction,
                 splits_lib.TEST: config.test_fraction}
    return [split for split, fraction in fractions.items() if fraction > 0]

  def _generate_examples(self, examples, split: str):
    """The split's examples from the shared Beam stage, as (id, example)."""
    selected = examples_lib.SelectSplit(examples, split)
    if self._progress is None:
      return selected
    return selected | f"Progress_{split}" >> progress_lib.CountProgress(self._progress.progress_dir,
                                                                       self._progress.stage_of(split))

  def _read_facts(self) -> None:
    facts_path = self.data_path / labeled_images.FACTS_FILE
    facts = json.loads(facts_path.read_text())
    self.info.metadata.update({
        EDGES_KEY: facts["age_group_edges_months"],
        "rows_read": facts["rows_read"],
        "image_files_without_label": facts["image_files_without_label"],
    })
    if facts["image_files_without_label"]:
      logging.warning("%d image files have no label row; they are not part of the dataset",
                      facts["image_files_without_label"])
    facts_path.unlink()  # its content now lives in the metadata

  def _count_rejects_file(self) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (self.data_path / REJECTS_FILE).read_text().splitlines():
      reason = json.loads(line)["reason"]
      counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))

  def _process_pipeline_result(self, pipeline_result) -> None:
    # Runs after the Beam job, before the DatasetInfo is written: the facts
    # and rejects counted by the workers go into the dataset's metadata.
    self._read_facts()
    try:
      totals = examples_lib.counter_totals(pipeline_result)
      rejected_counts = examples_lib.rejected_by_reason(totals)
    except Exception as e:  # pylint: disable=broad-except
      # Some runners cannot query metrics; the rejects file has the same facts.
      logging.warning("Beam counters unavailable (%r); counting %s instead", e, REJECTS_FILE)
      totals, rejected_counts = None, self._count_rejects_file()
    self.info.metadata["rejected"] = rejected_counts
    # The gate's decisions per split: image rejects by reason, flags by code
    # and hand crops. Only the counters hold them: null when the runner has none.
    by_split = None if totals is None else examples_lib.quality_by_split(totals)
    totals = totals or {}
    written = {k[len("examples_"):]: v for k, v in sorted(totals.items()) if k.startswith("examples_")}
    if by_split is not None:
      for split in written:
        by_split.setdefault(split, {"rejected": {}, "flagged": {}, "hand_cropped": 0})
    self.info.metadata["quality_by_split"] = by_split
    self.info.metadata["written_by_counter"] = written
    read = self.info.metadata.get("rows_read", 0)
    rejected = sum(self.info.metadata["rejected"].values())
    # For `tfds build`, which does not run boneage-preprocess's summary; under boneage-preprocess (which passes a
    # progress monitor and prints the same counts) a balanced build says it at DEBUG only. A mismatch always warns.
    accounted = read == sum(written.values()) + rejected
    logging.log(logging.WARNING if not accounted else logging.INFO if self._progress is None else logging.DEBUG,
                "rsna_bone_age: read %d label rows; written %s; rejected %s (rejects.jsonl); "
                "read = written + rejected: %s", read, written, self.info.metadata["rejected"],
                "OK" if accounted else "MISMATCH")
