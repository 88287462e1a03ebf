"""tf.data input: the TFDS `rsna_bone_age` dataset (TFRecords) -> batches.

Split into a reader (TFDS files, parallel interleaved reads, the image kept
PNG-encoded, cached in memory when the split fits), a decoder and a parser
(augmentation), as in tensorflow/models.

Two ways to divide training input among input pipelines (one per worker
host), chosen by `data.input_sharding` (resolve_input_sharding).

`records`: one global order, exact resume on any worker count (with a fixed
`data.global_batch_size`). The training
stream is a GLOBAL order of encoded records that is a pure function of the
seed: epoch e is the split (in its TFDS file order, which TFDS already
shuffled when it wrote the files) cut into consecutive windows of
`shuffle_buffer` records, each permuted by a stateless shuffle seeded with
(seed, e, window); epochs are concatenated and every element is numbered by
its global position. Worker w of N keeps only the positions that fall into
its 1/N of each global batch (rows [w*B/N, (w+1)*B/N) of every batch of B)
and only those are decoded and augmented, so decoding work is divided by N.
What stays replicated is reading: every worker reads the split's encoded
bytes (once when the split fits the cache) and permutes them, which is what
keeps one global order without random access into TFRecords.

`files`: reading divided by N. Worker w reads only its share of the split's
TFRecord files (file i to worker i % N, TFDS's own input-context rule) and
cycles them as its own stream: per epoch of its shard, the file order and
each window are permuted statelessly with (seed, epoch, w). Each step it
takes its rows of the global batch from its own stream. Its position at
step s is s * B/N in that stream, so resume on the SAME worker count is
exact; on another count the shards, hence the data order, change. Shards
differ by up to one file, so workers start their epochs at different steps:
a "training epoch" (train.epochs) is steps, not one pass over every record.
This stream is never cached (it serves splits too big to cache).

Why not checkpoint the tf.data iterator: only the chief's checkpoint
survives (chief-only writes) and a sharded iterator's state (prefetched,
already decoded rows) belongs to one worker. Instead the position is the
checkpointed global step: a worker that restores step s rebuilds the
stream at element s*B by starting at epoch s*B // num_examples and
skipping the rest (less than one epoch) on ENCODED records, before any
decoding (with `files`, the same on the worker's own stream). The
checkpoint also gets smaller (no shuffle buffer in it). The same rule
serves every strategy: one worker (default, mirrored, TPU) is the N=1
case, and with `records` the stream, hence training, does not depend on
the worker count. The permutation is stateless on purpose: tf.data's `shuffle`
mixes the process-wide global seed into its seed (and, with a per-epoch
seed tensor, fails outright when that global seed is 0), so the order would
depend on what else ran in the process.

The test split is never read here: only the splits named in DataConfig,
which config validation keeps distinct from `test`.
"""

import dataclasses
import os

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from bone_age import errors
from bone_age import schema
from trainer import augment as augment_lib
from trainer import configs

# Element keys of a training/validation batch.
IMAGE, MALE, BONEAGE, GROUP, ID, INDEX = "image", "male", "boneage_months", "age_group", "id", "index"
# Evaluation rows carry a weight: 1 for an example, 0 for padding that fills the last batches.
WEIGHT = "weight"
# What training and evaluation need on the device (no strings: ids stay on the host).
_TRAIN_KEYS = (IMAGE, MALE, BONEAGE, GROUP)
# Epochs of the training stream (Dataset.range needs an end; no run gets near it).
_MAX_EPOCHS = 1 << 40


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
    versions = prepared_versions(config_dir)
    if not versions:
      raise errors.InputError(config_dir, errors.MISSING_FILE,
                              "no prepared TFDS dataset here; build it with boneage-preprocess "
                              f"--data_dir={data_dir} --config={data_config.config_name}")
    path = os.path.join(config_dir, versions[-1])
  if not tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
    raise errors.InputError(path, errors.MISSING_FILE, "no dataset_info.json: not a prepared TFDS dataset version")
  return path


def prepared_versions(config_dir: str) -> list[str]:
  """The prepared versions (holding dataset_info.json) under <data_dir>/<name>/<config>, oldest first.

  The one version lookup of the trainer and boneage-evaluate.
  """
  if not tf.io.gfile.isdir(config_dir):
    return []
  names = [v.rstrip("/") for v in tf.io.gfile.listdir(config_dir)]
  versions = [v for v in names if _is_version(v) and tf.io.gfile.exists(os.path.join(config_dir, v, "dataset_info.json"))]
  return sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


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


def _read(builder, split: str, data_config: configs.DataConfig) -> tf.data.Dataset:
  """The split's records in a fixed order (parallel interleaved reads), images still PNG-encoded."""
  read_config = tfds.ReadConfig(
      interleave_cycle_length=data_config.num_parallel_reads,
      num_parallel_calls_for_interleave_files=data_config.num_parallel_reads, try_autocache=False,
      # Keep the record order fixed (resume and determinism depend on it).
      options=_deterministic_options())
  ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
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


def _pipelines(input_context: tf.distribute.InputContext | None) -> tuple[int, int, int]:
  """(number of input pipelines, this pipeline's id, replicas in sync) of a context; (1, 0, 1) for None."""
  if input_context is None:
    return 1, 0, 1
  return input_context.num_input_pipelines, input_context.input_pipeline_id, input_context.num_replicas_in_sync


def train_dataset(builder, config: configs.ExperimentConfig, image_size_px: int, *, start_step: int = 0,
                  input_context: tf.distribute.InputContext | None = None, batch_rows: int | None = None,
                  keep_keys: bool = True) -> tf.data.Dataset:
  """Infinite stream of this worker's share of every global training batch.

  Args:
    builder: the TFDS builder (load_builder).
    config: the experiment; data.global_batch_size is the batch summed over
      workers (0 = per_replica_batch_size x the context's replicas).
    image_size_px: the dataset's image size.
    start_step: global batches already consumed (the restored step): the
      stream starts at element start_step * global_batch_size of the global
      order (`records`) or start_step * worker batch of this worker's own
      stream (`files`).
    input_context: which worker this is (input_pipeline_id of
      num_input_pipelines); None = the only one.
    batch_rows: rows per yielded batch; default this worker's whole share.
      The trainer passes the per-replica batch, and the distributed dataset
      hands consecutive batches to the worker's local replicas in order, so
      replica k of worker w trains on the same rows either way.
    keep_keys: include id and index (host-side bookkeeping: batch logs,
      tests); the trainer leaves them out unless a callback asks, so only
      numeric tensors travel to the devices.

  Returns:
    Batches of global_batch_size / num_input_pipelines rows: image (b, S, S, 1)
    uint8, male (b,) float32, boneage_months (b,) float32, age_group (b,)
    int32, id (b,) string, index (b,) int64 (the global position of the
    row: step x global batch + its row in the global batch; the augmentation
    seed and what the batch log records). Deterministic given the seed (and,
    with `files`, the worker count).

  Raises:
    ValueError: the global batch does not divide by the workers.
    InputError: `files` was asked for on a split with fewer files than
      workers.
  """
  data = config.data
  seed = config.train.seed
  num_workers, worker, num_replicas = _pipelines(input_context)
  global_batch = data.global_batch_size or data.per_replica_batch_size * num_replicas
  if global_batch % num_workers:
    raise ValueError(f"data.global_batch_size={global_batch} is not divisible by {num_workers} workers")
  worker_batch = global_batch // num_workers
  if resolve_input_sharding(builder, data, num_workers) == "files":
    ds = _file_shard_stream(builder, config, num_workers, worker, worker_batch, start_step)
  else:
    ds = _global_stream(builder, config, num_workers, worker, global_batch, start_step)

  def parse(index, example):
    image = decode_image(example[IMAGE], image_size_px)
    image = augment_lib.random_augment(image, tf.stack([tf.constant(seed, tf.int64), index]), config.augment)
    return dict(example, **{IMAGE: image, INDEX: index})

  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not keep_keys:
    ds = ds.map(lambda example: {k: example[k] for k in _TRAIN_KEYS})
  ds = ds.batch(batch_rows or worker_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_deterministic_options())


def resolve_input_sharding(builder, data_config: configs.DataConfig, num_pipelines: int) -> str:
  """"records" or "files": how the training split is divided among `num_pipelines` input pipelines.

  `auto` picks `files` when there is more than one pipeline, the split is too
  big for `data.cache_max_bytes` (a cached split is read from files once, so
  replicated reading costs little and `records` keeps resume exact on any
  worker count) and it has at least one file per pipeline; otherwise
  `records`, logging why when it falls back for lack of files.

  Raises:
    InputError: `files` was asked for but the split has fewer files than
      pipelines, or is not stored as TFRecords (boneage-train exits 2).
  """
  wanted = data_config.input_sharding
  if wanted == "records" or (wanted == "auto" and (
      num_pipelines == 1 or _split_bytes(builder, data_config.train_split) <= data_config.cache_max_bytes)):
    return "records"
  split = data_config.train_split
  num_files = len(builder.info.splits[split].shard_lengths)
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  problem, reason = None, None
  if num_files < num_pipelines:
    problem, reason = f"split {split!r} has {num_files} file(s) for {num_pipelines} input pipelines", errors.MISSING_FILE
  elif file_format not in (None, "tfrecord"):
    problem, reason = f"split {split!r} is stored as {file_format}, not tfrecord", errors.UNSUPPORTED_FORMAT
  if problem and wanted == "files":
    raise errors.InputError(str(builder.data_dir), reason, f"data.input_sharding=files: {problem}; use "
                            "data.input_sharding=records or rebuild the dataset with more files")
  if problem:
    logging.warning("data.input_sharding=auto: every input pipeline reads the whole split (records): %s", problem)
    return "records"
  return "files"


def _global_stream(builder, config, num_workers, worker, global_batch, start_step) -> tf.data.Dataset:
  """(global position, encoded example) of this worker's rows of the one global order (`records`)."""
  data, seed = config.data, config.train.seed
  worker_batch = global_batch // num_workers
  num_examples = int(builder.info.splits[data.train_split].num_examples)
  start_position = start_step * global_batch
  first_epoch, skip = divmod(start_position, num_examples)
  records = _read(builder, data.train_split, data)

  def epoch_records(epoch):
    # A fresh permutation per epoch that depends only on (seed, epoch).
    return _permute_windows(records, data.shuffle_buffer, _epoch_seed(seed, epoch), stream=0, num_streams=1)

  ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch_records)
  ds = ds.skip(skip).enumerate(start=start_position)
  # This worker's rows of every global batch, chosen before decoding.
  return ds.filter(lambda index, _: (index % global_batch) // worker_batch == worker)


def shard_files(builder, split: str, num_pipelines: int, pipeline: int) -> list:
  """The split's file instructions read by `pipeline` of `num_pipelines` under `files` sharding.

  File i goes to pipeline i % num_pipelines, the rule of TFDS's own
  `ReadConfig(input_context=...)` sharding; TFDS writes files of near-equal
  example counts, so shards differ by at most one file.
  """
  return builder.info.splits[split].file_instructions[pipeline::num_pipelines]


def _file_shard_stream(builder, config, num_workers, worker, worker_batch, start_step) -> tf.data.Dataset:
  """(global position, encoded example) of this worker's own stream over its files (`files`).

  The worker cycles its own shard: its epoch e reads its files in an order
  permuted per (seed, e, worker), interleaved, then permuted in windows like
  the global order. Element k of the stream is row k % worker_batch of the
  worker's part of global batch k // worker_batch, so it gets the global
  position that row has under `records` (unique across workers: the
  augmentation seed). Its position at a step depends only on the step, the
  worker batch and its shard, so a restart on the same worker count skips
  encoded records to the exact element.
  """
  data, seed = config.data, config.train.seed
  files = shard_files(builder, data.train_split, num_workers, worker)
  shard_examples = sum(int(f.take) for f in files)
  if not shard_examples:
    raise errors.InputError(str(builder.data_dir), errors.MISSING_FILE,
                            f"input pipeline {worker} of {num_workers} has no training examples in its files")
  filenames = tf.constant([os.fspath(f.filename) for f in files])
  skips = tf.constant([int(f.skip) for f in files], tf.int64)
  takes = tf.constant([int(f.take) for f in files], tf.int64)
  features = builder.info.features
  start_position = start_step * worker_batch
  first_epoch, skip = divmod(start_position, shard_examples)

  def read_file(filename, skip_records, take_records):
    return tf.data.TFRecordDataset(filename).skip(skip_records).take(take_records)

  def parse(serialized):
    return _select(features.deserialize_example(serialized, decoders={schema.IMAGE: tfds.decode.SkipDecoding()}))

  def epoch_records(epoch):
    epoch_seed = _epoch_seed(seed, epoch)
    order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), seed=tf.stack([epoch_seed, -1 - worker]))
    records = tf.data.Dataset.from_tensor_slices(
        (tf.gather(filenames, order), tf.gather(skips, order), tf.gather(takes, order)))
    records = records.interleave(read_file, cycle_length=data.num_parallel_reads,
                                 num_parallel_calls=data.num_parallel_reads, deterministic=True)
    records = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _permute_windows(records, data.shuffle_buffer, epoch_seed, stream=worker, num_streams=num_workers)

  ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch_records)
  ds = ds.skip(skip).enumerate(start=start_position)
  global_batch = worker_batch * num_workers

  def global_position(k, example):
    return (k // worker_batch) * global_batch + worker * worker_batch + k % worker_batch, example

  return ds.map(global_position)


def _epoch_seed(seed: int, epoch) -> tf.Tensor:
  return tf.constant(seed, tf.int64) * 1_000_003 + epoch


def _permute_windows(records: tf.data.Dataset, window: int, epoch_seed, *, stream: int,
                     num_streams: int) -> tf.data.Dataset:
  """Consecutive windows of `window` records, each permuted by a stateless shuffle of (epoch_seed, window, stream)."""
  def permute(window_index, records_in_window):
    size = tf.shape(records_in_window[ID])[0]
    window_seed = tf.stack([epoch_seed, window_index * num_streams + stream])
    order = tf.random.experimental.stateless_shuffle(tf.range(size), seed=window_seed)
    return {k: tf.gather(v, order) for k, v in records_in_window.items()}

  return records.batch(window).enumerate().map(permute).unbatch()


def eval_steps(num_examples: int, data_config: configs.DataConfig, num_replicas: int) -> int:
  """Evaluation steps over a split: ceil(examples / (eval_batch_size per replica x replicas))."""
  return max(1, -(-num_examples // (data_config.eval_batch_size * num_replicas)))


def eval_dataset(builder, config: configs.ExperimentConfig, image_size_px: int, split: str | None = None, *,
                 input_context: tf.distribute.InputContext | None = None, batch_rows: int | None = None,
                 keep_keys: bool = True) -> tf.data.Dataset:
  """This worker's share of one pass over the validation split, padded to whole batches.

  `data.eval_batch_size` is per replica. The split (in file order, no
  augmentation) is cut into global evaluation batches of eval_batch_size x
  replicas rows, like the training stream; the last ones are filled with
  padding rows of weight 0 so every replica of every worker runs the same
  number of full batches (eval_steps) and collectives never wait on a
  replica that ran out. Worker w keeps only its rows of each global batch,
  and only those are decoded.

  Args:
    builder: the TFDS builder (load_builder).
    config: the experiment.
    image_size_px: the dataset's image size.
    split: default data.validation_split; never "test".
    input_context: which worker this is; None = the only one, with one replica.
    batch_rows: rows per yielded batch; default this worker's whole share of
      a global evaluation batch (the trainer passes eval_batch_size).
    keep_keys: include id (host-side only; the trainer leaves it out).

  Returns:
    Batches like train_dataset's plus weight (b,) float32 and id (padding: "").

  Raises:
    ValueError: for the test split.
  """
  data = config.data
  split = split or data.validation_split
  if split == "test":
    raise ValueError("the trainer never reads the test split (use boneage-evaluate)")
  num_workers, worker, num_replicas = _pipelines(input_context)
  worker_rows = data.eval_batch_size * (num_replicas // num_workers)
  global_rows = worker_rows * num_workers
  num_examples = int(builder.info.splits[split].num_examples)
  if data.max_validation_examples:
    num_examples = min(num_examples, data.max_validation_examples)
  num_padding = eval_steps(num_examples, data, num_replicas) * global_rows - num_examples

  ds = _read(builder, split, data).take(num_examples)
  ds = ds.map(lambda e: dict(e, **{WEIGHT: tf.constant(1.0)}))
  padding = {IMAGE: tf.io.encode_png(tf.zeros((image_size_px, image_size_px, 1), tf.uint8)),
             MALE: tf.constant(0.0), BONEAGE: tf.constant(0.0), GROUP: tf.constant(0), ID: tf.constant(""),
             WEIGHT: tf.constant(0.0)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.enumerate().filter(lambda index, _: (index % global_rows) // worker_rows == worker)
  ds = ds.map(lambda _, e: dict(e, **{IMAGE: decode_image(e[IMAGE], image_size_px)}),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not keep_keys:
    ds = ds.map(lambda e: {k: e[k] for k in (*_TRAIN_KEYS, WEIGHT)})
  ds = ds.batch(batch_rows or worker_rows, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_deterministic_options())


def model_inputs(batch: dict) -> dict:
  """The model's input dict from a batch (male as (B, 1))."""
  from bone_age import model as model_lib  # pylint: disable=g-import-not-at-top
  return {model_lib.IMAGE_INPUT: batch[IMAGE], model_lib.MALE_INPUT: tf.reshape(batch[MALE], (-1, 1))}
