"""TFDS dataset builders of this project; importing the package registers them.

  import tfds_rsna  # registers `rsna_bone_age`
  builder = tfds.builder("rsna_bone_age/128px", data_dir=...)

Readers that must not import this package (trainer, scorer) load a built
dataset with `tfds.builder_from_directory(<data_dir>/rsna_bone_age/<config>/<version>)`.
"""

from tfds_rsna.rsna_bone_age import rsna_bone_age_dataset_builder  # pylint: disable=unused-import  # registers
