"""Feature keys and the TFDS feature spec: one definition for every package.

The dataset builder writes these features, the trainer reads them, and the
scorer produces the same image representation (letterboxed uint8, one
channel) so a model never sees a different input at serving time.
"""

IMAGE = "image"  # uint8 (S, S, 1), letterboxed, aspect ratio kept.
BONEAGE_MONTHS = "boneage"  # float32 bone age in months (RSNA column name).
MALE = "male"  # bool-like int64: 1 = male, 0 = female (RSNA convention).
AGE_GROUP = "age_group"  # ClassLabel index over the stored age-group edges.
ID = "id"  # the image id as given by the label table / file stem.
ORIGINAL_HEIGHT_PX = "original_height_px"
ORIGINAL_WIDTH_PX = "original_width_px"

DEFAULT_IMAGE_SIZE_PX = 384

# Beside a labels table: the folder holds synthetic phantoms (boneage-phantoms
# writes it), so a dataset built from it, and every plot of a model trained or
# evaluated on it, can say so.
SYNTHETIC_MARKER_FILE = "SYNTHETIC_PHANTOMS.json"


def features_dict(image_size_px: int, num_age_groups: int):
  """The TFDS FeaturesDict of one example (imports tfds lazily).

  The age-group edges are not known until the training labels are read, so
  the ClassLabel only fixes the number of groups; the edges themselves live in
  the dataset metadata (`age_group_edges_months`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.features.FeaturesDict({
      IMAGE: tfds.features.Image(shape=(image_size_px, image_size_px, 1), dtype=tf.uint8, encoding_format="png"),
      BONEAGE_MONTHS: tfds.features.Scalar(dtype=tf.float32, doc="Bone age in months."),
      MALE: tfds.features.Scalar(dtype=tf.int64, doc="1 = male, 0 = female."),
      AGE_GROUP: tfds.features.ClassLabel(num_classes=num_age_groups),
      ID: tfds.features.Text(),
      ORIGINAL_HEIGHT_PX: tfds.features.Scalar(dtype=tf.int64),
      ORIGINAL_WIDTH_PX: tfds.features.Scalar(dtype=tf.int64),
  })
