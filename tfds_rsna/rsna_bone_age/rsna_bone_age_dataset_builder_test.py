"""rsna_bone_age on its dummy_data (a tiny Kaggle-layout manual_dir)."""

import tensorflow_datasets as tfds

from tfds_rsna.rsna_bone_age import rsna_bone_age_dataset_builder


class RsnaBoneAgeTest(tfds.testing.DatasetBuilderTestCase):
  """Builds 12 labeled phantoms (the 2 unlabeled Kaggle test images are not built)."""
  DATASET_CLASS = rsna_bone_age_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["128px"]  # the smallest: same code path, less time
  SPLITS = {"train": 8, "validation": 2, "test": 2}
  SKIP_CHECKSUMS = True  # manual download only: no URL to checksum


if __name__ == "__main__":
  tfds.testing.test_main()
