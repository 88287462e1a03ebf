"""`data.input_sharding=files`: each input pipeline reads only its share of the split's TFRecord files.

The dataset here has 5 training files of 20 phantoms, so 2 pipelines get
shards of unequal size (3 files = 60 examples and 2 files = 40), which is
what makes each worker cycle its own epochs.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bone_age import errors
from trainer import configs
from trainer import experiments
from trainer_hooks import read_batch_log  # tests/trainer is on sys.path (conftest)
from trainer import input_pipeline as ip

NUM_FILES = 5
NUM_TRAIN = 100
SHARD_EXAMPLES = (60, 40)  # files 0, 2, 4 and files 1, 3
WORKER_BATCH = 4  # global batch 8 over 2 pipelines


@pytest.fixture(scope="module")
def sharded_data_dir(tmp_path_factory):
  import phantom_tfds  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("sharded_tfds")
  phantom_tfds.build(str(data_dir), size_px=64, num_train=NUM_TRAIN, num_validation=16, num_test=8,
                     render_hw=(128, 100), num_shards=NUM_FILES)
  return data_dir


@pytest.fixture
def config(trainer_helpers):
  return experiments.resolve("demo_cpu", list(trainer_helpers.SMALL_OVERRIDES) + [
      "augment.flip_left_right=true", "data.shuffle_buffer=16", "data.input_sharding=files"])


def context(worker, num_pipelines=2):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=worker,
                                    num_replicas_in_sync=num_pipelines)


def stream(builder, config, worker, steps, start_step=0):
  return list(ip.train_dataset(builder, config, 64, input_context=context(worker), start_step=start_step).take(steps))


def ids_of(batches):
  return np.concatenate([b[ip.ID].numpy() for b in batches])


def tfds_shard_ids(builder, worker) -> set:
  """The ids TFDS itself gives pipeline `worker` of 2 with ReadConfig(input_context=...)."""
  ds = builder.as_dataset(split="train", read_config=tfds.ReadConfig(input_context=context(worker)),
                          decoders={"image": tfds.decode.SkipDecoding()})
  return {e["id"] for e in tfds.as_numpy(ds)}


def test_two_pipelines_read_disjoint_files_and_one_epoch_each_covers_the_split(sharded_data_dir, config):
  builder = ip.load_builder(str(sharded_data_dir), config.data)
  assert len(builder.info.splits["train"].shard_lengths) == NUM_FILES
  epochs = []
  for worker, shard in enumerate(SHARD_EXAMPLES):
    assert ip.resolve_input_sharding(builder, config.data, 2) == "files"
    files = [str(f.filename) for f in ip.shard_files(builder, "train", 2, worker)]
    assert len(files) == (3, 2)[worker]
    steps = shard // WORKER_BATCH
    batches = stream(builder, config, worker, steps + 5)
    first_epoch = ids_of(batches[:steps])
    assert len(first_epoch) == shard and len(set(first_epoch)) == shard  # each of its examples once
    assert set(first_epoch) == tfds_shard_ids(builder, worker)  # exactly its files' records, as TFDS shards them
    next_epoch = ids_of(batches[steps:])
    assert set(next_epoch) <= set(first_epoch)  # then it cycles its own shard
    assert not np.array_equal(next_epoch, first_epoch[:len(next_epoch)])  # in a new order
    # Positions: row r of its half of global batch s (the records layout), so augmentation seeds never collide.
    indices = np.concatenate([b[ip.INDEX].numpy() for b in batches[:3]])
    np.testing.assert_array_equal(indices, [8 * s + 4 * worker + r for s in range(3) for r in range(4)])
    epochs.append(set(first_epoch))
  assert not epochs[0] & epochs[1]  # disjoint
  every_id = {e["id"] for e in tfds.as_numpy(builder.as_dataset(split="train", decoders={
      "image": tfds.decode.SkipDecoding()}))}
  assert epochs[0] | epochs[1] == every_id and len(every_id) == NUM_TRAIN  # together: the whole split


def test_each_pipelines_stream_restarts_exactly_at_any_step(sharded_data_dir, config):
  builder = ip.load_builder(str(sharded_data_dir), config.data)
  for worker in (0, 1):
    reference = stream(builder, config, worker, 40)  # > 2 epochs of either shard
    for start_step in (3, 10, 15, 27):  # inside an epoch, at worker 1's and worker 0's epoch boundaries, later
      resumed = stream(builder, config, worker, 3, start_step=start_step)
      for got, expected in zip(resumed, reference[start_step:start_step + 3], strict=True):
        for key in (ip.ID, ip.IMAGE, ip.INDEX):  # same examples, same augmentation
          np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())
    far = stream(builder, config, worker, 1, start_step=10**9)[0]  # starts at its epoch, reads nothing before
    np.testing.assert_array_equal(far[ip.INDEX].numpy(), np.arange(4) + 4 * worker + 8 * 10**9)


def test_auto_shards_files_only_for_several_pipelines_on_a_split_too_big_to_cache(sharded_data_dir, config):
  builder = ip.load_builder(str(sharded_data_dir), config.data)
  auto = configs.DataConfig(config_name="64px", input_sharding="auto")
  assert ip.resolve_input_sharding(builder, auto, 2) == "records"  # the split fits the cache: read once anyway
  big = configs.DataConfig(config_name="64px", input_sharding="auto", cache_max_bytes=0)
  assert ip.resolve_input_sharding(builder, big, 1) == "records"
  assert ip.resolve_input_sharding(builder, big, 2) == "files"
  assert ip.resolve_input_sharding(builder, big, NUM_FILES) == "files"
  records = configs.DataConfig(config_name="64px", input_sharding="records", cache_max_bytes=0)
  assert ip.resolve_input_sharding(builder, records, 2) == "records"


def test_auto_with_fewer_files_than_pipelines_falls_back_to_records_and_says_why(sharded_data_dir, config, caplog):
  builder = ip.load_builder(str(sharded_data_dir), config.data)
  big = configs.DataConfig(config_name="64px", input_sharding="auto", cache_max_bytes=0)
  with caplog.at_level("WARNING"):
    assert ip.resolve_input_sharding(builder, big, NUM_FILES + 1) == "records"
  assert f"has {NUM_FILES} file(s) for {NUM_FILES + 1} input pipelines" in caplog.text


def test_files_with_fewer_files_than_pipelines_is_a_clear_error(sharded_data_dir, config):
  builder = ip.load_builder(str(sharded_data_dir), config.data)
  cfg = experiments.resolve("demo_cpu", ["data.config_name=64px", "data.global_batch_size=12",
                                         "data.input_sharding=files"])
  with pytest.raises(errors.InputError, match=r"input_sharding=files: split 'train' has 5 file\(s\) for 6 input pipe"
                     ) as raised:
    ip.train_dataset(builder, cfg, 64, input_context=context(0, num_pipelines=6))
  assert raised.value.reason == errors.MISSING_FILE and str(sharded_data_dir) in raised.value.source


def test_an_unknown_sharding_is_rejected_by_config_validation():
  with pytest.raises(ValueError, match="data.input_sharding must be one of"):
    experiments.resolve("demo_cpu", ["data.input_sharding=hosts"])


def load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_two_workers_train_identically_on_file_sharded_input(sharded_data_dir, tmp_path, trainer_helpers):
  steps = 12  # > worker 1's epoch of 10 steps: it starts its second epoch first
  args = trainer_helpers.trainer_command(
      sharded_data_dir, tmp_path / "run", "--strategy=multi_worker", f"--worker_weights_dir={tmp_path / 'weights'}",
      f"--batch_log={tmp_path / 'batches.log'}", hooks=True,
      overrides=(f"train.train_steps={steps}", "train.eval_every_steps=6", "data.input_sharding=files"))[2:]
  launcher = [sys.executable, "-m", "launch.local_multiworker", "--num_workers=2", f"--log_dir={tmp_path / 'logs'}",
              "--timeout_s=240", f"--entry={trainer_helpers.HOOKS_SCRIPT}", "--", *args]
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  result = subprocess.run(launcher, cwd=trainer_helpers.REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=trainer_helpers.subprocess_env(TMPDIR=str(scratch), TF_NUM_INTRAOP_THREADS="1"),
                          check=False)
  logs = {i: (tmp_path / "logs" / f"worker_{i}.log").read_text() for i in (0, 1)}
  assert result.returncode == 0, logs[0][-2000:] + logs[1][-2000:]
  chief, other = load(tmp_path / "weights" / "worker_0.npz"), load(tmp_path / "weights" / "worker_1.npz")
  assert chief.keys() == other.keys() and len(chief) > 10
  for key in chief:
    np.testing.assert_array_equal(chief[key], other[key], err_msg=key)

  # Each worker trained on its own files only: the stream input_pipeline builds for it, row for row.
  config = experiments.resolve("demo_cpu", list(trainer_helpers.SMALL_OVERRIDES) + ["data.input_sharding=files"])
  builder = ip.load_builder(str(sharded_data_dir), config.data)
  for worker, log in enumerate((tmp_path / "batches.log", tmp_path / "batches.log.worker1")):
    rows = read_batch_log(log)
    assert [r[0] for r in rows] == list(range(1, steps + 1))
    expected = stream(builder, config, worker, steps)
    for (step, indices, ids), batch in zip(rows, expected, strict=True):
      assert indices == list(range(8 * (step - 1) + 4 * worker, 8 * (step - 1) + 4 * worker + 4))
      assert ids == [i.decode() for i in batch[ip.ID].numpy()]
    assert {i.encode() for _, _, ids in rows for i in ids} <= tfds_shard_ids(builder, worker)


def test_resuming_file_sharded_input_on_another_replica_count_warns(tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  from trainer import configs  # pylint: disable=g-import-not-at-top
  from trainer import train_lib  # pylint: disable=g-import-not-at-top

  previous = configs.ExperimentConfig()
  previous.runtime.num_replicas = 2
  (tmp_path / train_lib.CONFIG_FILE).write_text(configs.to_json(previous))
  now = configs.ExperimentConfig()
  now.runtime.num_replicas = 4
  with caplog.at_level(logging.WARNING):
    train_lib._warn_if_resume_is_not_exact(str(tmp_path), now, "records")  # pylint: disable=protected-access
    assert not caplog.records, "records order does not depend on the worker count"
    train_lib._warn_if_resume_is_not_exact(str(tmp_path), now, "files")  # pylint: disable=protected-access
  assert any("on 4 replicas" in r.getMessage() and "trained on 2" in r.getMessage() for r in caplog.records)
