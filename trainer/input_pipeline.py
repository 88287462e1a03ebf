"""tf.data input: the TFDS `rsna_bone_age` dataset (TFRecords) -> batches.

Split into a reader (TFDS files, parallel interleaved reads, the image kept
PNG-encoded), a decoder and a parser (augmentation), as in tensorflow/models.

Why every worker builds the same GLOBAL batch: exact resume restores the
tf.data iterator from the chief's checkpoint on every worker (chief-only
writes, the standard MultiWorkerMirrored pattern). That only works if the
iterator state is the same on every worker, so the pipeline is identical
everywhere and each replica takes its rows of the global batch inside the
training step (`train_lib`). The price is redundant decoding on multi-worker
runs: with Xception the pipeline is ~300x faster than the model on CPU, with
the demo's tiny network only ~3x (benchmarks/bench_train.py). In exchange the
stream is independent of the worker count, which makes runs comparable
across topologies. Reads, decoding and
augmentation are still parallel within each worker.

The test split is never read here: only the splits named in DataConfig,
which config validation keeps distinct from `test`.
"""

import dataclasses
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from bone_age import errors
from bone_age import schema
from trainer import augment as augment_lib
from trainer import configs

# Element keys of a training/validation batch.
IMAGE, MALE, BONEAGE, GROUP, ID, INDEX = "image", "male", "boneage_months", "age_group", "id", "index"


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What the trainer needs to know about the dataset before building anything."""
  image_size_px: int
  age_group_edges_months: list
  num_train_examples: int
  num_validation_examples: int
  version: str
  data_dir: str  # the version directory actually read.


def dataset_dir(data_dir: str, data_config: configs.DataConfig) -> str:
  """<data_dir>/<name>/<config>/<version>; the newest version when none is set.

  Raises:
    InputError: if no prepared dataset is there (with the path it looked at).
  """
  config_dir = os.path.join(data_dir, data_config.dataset_name, data_config.config_name)
  if data_config.version:
    path = os.path.join(config_dir, data_config.version)
  else:
    versions = [v for v in tf.io.gfile.listdir(config_dir) if _is_version(v.rstrip("/"))] \
        if tf.io.gfile.isdir(config_dir) else []
    versions = [v.rstrip("/") for v in versions
                if tf.io.gfile.exists(os.path.join(config_dir, v.rstrip("/"), "dataset_info.json"))]
    if not versions:
      raise errors.InputError(config_dir, errors.MISSING_FILE,
                              "no prepared TFDS dataset here; build it with boneage-preprocess "
                              f"--data_dir={data_dir} --config={data_config.config_name}")
    path = os.path.join(config_dir, max(versions, key=lambda v: tuple(int(p) for p in v.split("."))))
  if not tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
    raise errors.InputError(path, errors.MISSING_FILE, "no dataset_info.json: not a prepared TFDS dataset version")
  return path


def _is_version(name: str) -> bool:
  parts = name.split(".")
  return len(parts) == 3 and all(p.isdigit() for p in parts)


def load_builder(data_dir: str, data_config: configs.DataConfig):
  """The read-only TFDS builder (no import of the dataset's code)."""
  return tfds.builder_from_directory(dataset_dir(data_dir, data_config))


def dataset_facts(builder, data_config: configs.DataConfig) -> DatasetFacts:
  """Image size, age-group edges and split sizes from the dataset's metadata.

  Raises:
    InputError: if the metadata lacks the age-group edges or a split is missing.
  """
  info = builder.info
  edges = (info.metadata or {}).get("age_group_edges_months")
  source = str(builder.data_dir)
  if not edges:
    raise errors.InputError(source, errors.MISSING_FILE, "dataset metadata has no age_group_edges_months")
  for split in (data_config.train_split, data_config.validation_split):
    if split not in info.splits:
      raise errors.InputError(source, errors.MISSING_FILE,
                              f"dataset has no split {split!r} (has {sorted(info.splits.keys())})")
  return DatasetFacts(
      image_size_px=int(info.features[schema.IMAGE].shape[0]),
      age_group_edges_months=[float(e) for e in edges],
      num_train_examples=int(info.splits[data_config.train_split].num_examples),
      num_validation_examples=int(info.splits[data_config.validation_split].num_examples),
      version=str(info.version),
      data_dir=source)


def _read(builder, split: str, data_config: configs.DataConfig, seed: int, shuffle_files: bool) -> tf.data.Dataset:
  read_config = tfds.ReadConfig(
      shuffle_seed=seed, interleave_cycle_length=data_config.num_parallel_reads,
      num_parallel_calls_for_interleave_files=data_config.num_parallel_reads, try_autocache=False,
      # Keep file order a function of the seed (resume and determinism depend on it).
      options=_deterministic_options())
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                          decoders={schema.IMAGE: tfds.decode.SkipDecoding()})
  ds = ds.map(_select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if _split_bytes(builder, split) <= data_config.cache_max_bytes:
    ds = ds.cache()  # encoded records, small; avoids re-reading files every epoch.
  return ds


def _deterministic_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _split_bytes(builder, split: str) -> int:
  try:
    return int(builder.info.splits[split].num_bytes) or (1 << 62)
  except (KeyError, TypeError):
    return 1 << 62


def _select(example: dict) -> dict:
  return {
      IMAGE: example[schema.IMAGE],  # still PNG bytes
      MALE: tf.cast(example[schema.MALE], tf.float32),
      BONEAGE: tf.cast(example[schema.BONEAGE_MONTHS], tf.float32),
      GROUP: tf.cast(example[schema.AGE_GROUP], tf.int32),
      ID: example[schema.ID],
  }


def decode_image(png_bytes: tf.Tensor, image_size_px: int) -> tf.Tensor:
  """PNG bytes -> (S, S, 1) uint8 with a static shape (the model's input)."""
  image = tf.io.decode_png(png_bytes, channels=1)
  return tf.ensure_shape(image, (image_size_px, image_size_px, 1))


def train_dataset(builder, config: configs.ExperimentConfig, image_size_px: int) -> tf.data.Dataset:
  """Infinite stream of GLOBAL training batches, augmented, deterministic given the seed.

  Each element: image (B, S, S, 1) uint8, male (B,) float32, boneage_months
  (B,) float32, age_group (B,) int32, id (B,) string, index (B,) int64 (the
  position of the example in the training stream: the augmentation seed and
  what the batch log records).
  """
  data = config.data
  seed = config.train.seed
  ds = _read(builder, data.train_split, data, seed, shuffle_files=True)
  # A fresh permutation every epoch (the shuffle op's seed state is part of the iterator checkpoint).
  ds = ds.shuffle(data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate()

  def parse(index, example):
    image = decode_image(example[IMAGE], image_size_px)
    image = augment_lib.random_augment(image, tf.stack([tf.constant(seed, tf.int64), index]), config.augment)
    return dict(example, **{IMAGE: image, INDEX: index})

  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(data.global_batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_deterministic_options())


def eval_dataset(builder, config: configs.ExperimentConfig, image_size_px: int, split: str | None = None) -> tf.data.Dataset:
  """One pass over the validation split (in file order, no augmentation), batched."""
  data = config.data
  split = split or data.validation_split
  if split == "test":
    raise ValueError("the trainer never reads the test split (use boneage-evaluate)")
  ds = _read(builder, split, data, config.train.seed, shuffle_files=False)
  if data.max_validation_examples:
    ds = ds.take(data.max_validation_examples)
  ds = ds.map(lambda e: dict(e, **{IMAGE: decode_image(e[IMAGE], image_size_px)}),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(data.eval_batch_size).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_deterministic_options())


def model_inputs(batch: dict) -> dict:
  """The model's input dict from a batch (male as (B, 1))."""
  from bone_age import model as model_lib  # pylint: disable=g-import-not-at-top
  return {model_lib.IMAGE_INPUT: batch[IMAGE], model_lib.MALE_INPUT: tf.reshape(batch[MALE], (-1, 1))}
