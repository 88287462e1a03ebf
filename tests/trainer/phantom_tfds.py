"""A TFDS-format `rsna_bone_age` dataset of phantom radiographs, built in-process.

The trainer reads datasets with tfds.builder_from_directory and never
imports the real builder (tfds_rsna), so tests and benchmarks make their own
directory of the same layout, features (bone_age.schema) and metadata
(`age_group_edges_months`) from bone_age.phantoms, in seconds. Imported by
tests/trainer/conftest.py and benchmarks/bench_train.py by file path.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from bone_age import age_groups
from bone_age import letterbox
from bone_age import phantoms
from bone_age import schema

VERSION = "1.0.0"


def _examples(labels, size_px, seed, render_hw):
  for example_id, months, male in labels:
    image = phantoms.render_phantom(months, male, phantoms.image_seed(seed, int(example_id)),
                                    height_px=render_hw[0], width_px=render_hw[1]).image
    square, _ = letterbox.letterbox(image, size_px)
    yield example_id, {
        schema.IMAGE: square[..., None], schema.BONEAGE_MONTHS: np.float32(months), schema.MALE: int(male),
        schema.ID: example_id, schema.ORIGINAL_HEIGHT_PX: render_hw[0], schema.ORIGINAL_WIDTH_PX: render_hw[1],
    }


def build(data_dir: str, *, size_px: int, num_train: int, num_validation: int, num_test: int, seed: int = 0,
          render_hw: tuple[int, int] = (260, 200), num_shards: int | None = None) -> str:
  """Writes <data_dir>/rsna_bone_age/<size>px/1.0.0 and returns that directory.

  num_shards: TFRecord files per split (None = TFDS's choice by size: one file
  for a few hundred small phantoms); file-sharded input needs several.
  """
  labels = phantoms.sample_labels(num_train + num_validation + num_test, seed)
  splits = {"train": labels[:num_train], "validation": labels[num_train:num_train + num_validation],
            "test": labels[num_train + num_validation:]}
  edges = age_groups.quantile_edges([months for _, months, _ in splits["train"]])

  class PhantomBoneAge(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Phantom stand-in for rsna_bone_age (same name, features and metadata)."""
    name = "rsna_bone_age"
    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"{size_px}px")]

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=schema.features_dict(size_px, len(edges) + 1),
                                   metadata=tfds.core.MetadataDict(age_group_edges_months=list(edges)))

    def _split_generators(self, dl_manager):  # pylint: disable=unused-argument
      return {name: self._generate_examples(split) for name, split in splits.items()}

    def _generate_examples(self, split_labels):
      for example_id, example in _examples(split_labels, size_px, seed, render_hw):
        example[schema.AGE_GROUP] = int(age_groups.assign(example[schema.BONEAGE_MONTHS], edges))
        yield example_id, example

  builder = PhantomBoneAge(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir,
                                                                                    num_shards=num_shards))
  return os.fspath(builder.data_dir)
