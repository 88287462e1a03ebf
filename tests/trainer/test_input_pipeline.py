"""The tf.data pipeline on an in-test TFDS dataset: shapes, determinism, resume, sharding, held-out test split."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from bone_age import errors
from trainer import experiments
from trainer import input_pipeline as ip


@pytest.fixture
def config(trainer_helpers):
  return experiments.resolve("demo_cpu", list(trainer_helpers.SMALL_OVERRIDES) + ["augment.flip_left_right=true"])


def test_reads_the_newest_version_and_its_metadata(phantom_data_dir, config):
  builder = ip.load_builder(str(phantom_data_dir), config.data)
  facts = ip.dataset_facts(builder, config.data)
  assert facts.image_size_px == 64 and facts.version == "1.0.0"
  assert facts.num_train_examples == 256 and facts.num_validation_examples == 32
  assert len(facts.age_group_edges_months) == 2 and facts.age_group_edges_months[0] < facts.age_group_edges_months[1]


def test_missing_dataset_is_an_input_error_naming_the_path(tmp_path, config):
  with pytest.raises(errors.InputError, match="boneage-preprocess") as raised:
    ip.load_builder(str(tmp_path), config.data)
  assert raised.value.reason == errors.MISSING_FILE and str(tmp_path) in raised.value.source


def test_train_batches_are_global_typed_and_deterministic(phantom_data_dir, config):
  builder = ip.load_builder(str(phantom_data_dir), config.data)
  first = list(ip.train_dataset(builder, config, 64).take(35))  # > one epoch (256 / 8 = 32 batches)
  second = list(ip.train_dataset(builder, config, 64).take(35))
  batch = first[0]
  assert batch[ip.IMAGE].shape == (8, 64, 64, 1) and batch[ip.IMAGE].dtype == tf.uint8
  assert batch[ip.MALE].dtype == tf.float32 and batch[ip.BONEAGE].dtype == tf.float32
  assert batch[ip.GROUP].dtype == tf.int32
  indices = np.concatenate([b[ip.INDEX].numpy() for b in first])
  np.testing.assert_array_equal(indices, np.arange(35 * 8))  # every example position once, in order
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a[ip.IMAGE].numpy(), b[ip.IMAGE].numpy())
    np.testing.assert_array_equal(a[ip.ID].numpy(), b[ip.ID].numpy())
  epoch_ids = np.concatenate([b[ip.ID].numpy() for b in first[:32]])
  assert len(set(epoch_ids)) == 256  # one epoch = a permutation of the training split
  next_epoch = np.concatenate([b[ip.ID].numpy() for b in first[32:]])
  assert not np.array_equal(next_epoch, epoch_ids[:24])  # reshuffled each epoch


def test_stream_restarts_exactly_at_any_step(phantom_data_dir, config):
  builder = ip.load_builder(str(phantom_data_dir), config.data)
  reference = [b[ip.ID].numpy() for b in ip.train_dataset(builder, config, 64).take(70)]  # > 2 epochs
  for start_step in (3, 32, 45):  # inside epoch 0, at the epoch boundary, inside epoch 1
    resumed = [b[ip.ID].numpy() for b in ip.train_dataset(builder, config, 64, start_step=start_step).take(3)]
    for got, expected in zip(resumed, reference[start_step:start_step + 3]):
      np.testing.assert_array_equal(got, expected)
  # Far into a run it starts at the right epoch (nothing before it is read): immediate, not 8e9 records.
  far = next(iter(ip.train_dataset(builder, config, 64, start_step=10**9)))
  np.testing.assert_array_equal(far[ip.INDEX].numpy(), np.arange(8) + 8 * 10**9)


def test_each_worker_decodes_only_its_rows_of_every_global_batch(phantom_data_dir, config):
  builder = ip.load_builder(str(phantom_data_dir), config.data)
  steps = 34  # crosses an epoch boundary
  single = list(ip.train_dataset(builder, config, 64).take(steps))
  shards = [list(ip.train_dataset(builder, config, 64, start_step=2, input_context=tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=w, num_replicas_in_sync=2)).take(steps - 2)) for w in (0, 1)]
  for step, (first, second) in enumerate(zip(*shards), start=2):
    assert first[ip.IMAGE].shape == (4, 64, 64, 1)
    np.testing.assert_array_equal(first[ip.INDEX].numpy(), np.arange(4) + 8 * step)
    np.testing.assert_array_equal(second[ip.INDEX].numpy(), np.arange(4, 8) + 8 * step)
    for key in (ip.ID, ip.IMAGE):  # the global batch, split in two: same examples, same augmentation
      np.testing.assert_array_equal(np.concatenate([first[key].numpy(), second[key].numpy()]), single[step][key].numpy())


def test_a_split_that_fits_is_read_from_files_once(phantom_data_dir, config, tmp_path):
  copy = tmp_path / "data"
  shutil.copytree(phantom_data_dir, copy)
  iterator = iter(ip.train_dataset(ip.load_builder(str(copy), config.data), config, 64))
  for _ in range(40):  # past the first epoch (32 batches), which fills the cache
    next(iterator)
  for path in copy.glob("rsna_bone_age/*/*/*-train.tfrecord*"):
    path.unlink()
  for _ in range(80):  # later epochs come from memory
    next(iterator)


def test_eval_dataset_reads_validation_once_and_never_test(phantom_data_dir, config, tmp_path):
  # A copy of the dataset without the test split's files: the trainer's reads must not notice.
  copy = tmp_path / "data"
  shutil.copytree(phantom_data_dir, copy)
  for path in copy.glob("rsna_bone_age/*/*/*-test.tfrecord*"):
    path.unlink()
  builder = ip.load_builder(str(copy), config.data)
  ids = np.concatenate([b[ip.ID].numpy() for b in ip.eval_dataset(builder, config, 64)])
  assert len(ids) == 32 and len(set(ids)) == 32  # 32 examples fill one batch of 32: no padding
  next(iter(ip.train_dataset(builder, config, 64)))
  with pytest.raises(ValueError, match="never reads the test split"):
    ip.eval_dataset(builder, config, 64, split="test")


def config_overrides(config):
  return [f"data.config_name={config.data.config_name}", f"data.global_batch_size={config.data.global_batch_size}"]


def test_eval_shards_are_padded_to_whole_batches_and_cover_the_split_once(phantom_data_dir, config):
  builder = ip.load_builder(str(phantom_data_dir), config.data)
  small = experiments.resolve("demo_cpu", list(config_overrides(config)) + ["data.eval_batch_size=5"])
  # 2 workers x 2 replicas x 5 rows = 20 per step: 32 examples -> 2 steps, 8 padding rows.
  shards = [list(ip.eval_dataset(builder, small, 64, input_context=tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=w, num_replicas_in_sync=4), batch_rows=5)) for w in (0, 1)]
  assert ip.eval_steps(32, small.data, 4) == 2
  assert [len(s) for s in shards] == [4, 4]  # 2 steps x 2 local replicas, all full
  rows = {k: np.concatenate([b[k].numpy() for s in shards for b in s]) for k in (ip.ID, ip.WEIGHT)}
  real = rows[ip.ID][rows[ip.WEIGHT] > 0]
  assert len(real) == 32 and len(set(real)) == 32 and (rows[ip.WEIGHT] == 0).sum() == 8
  assert set(rows[ip.ID][rows[ip.WEIGHT] == 0]) == {b""}

