"""The loop: steps per loop, XLA (runtime.jit_compile) on CPU as the TPU proxy, damaged checkpoints."""

import json
import logging as py_logging
import os

import keras
import numpy as np
import pytest

from trainer import checkpointing
from trainer import experiments
from trainer import train_lib

STEPS = 20


def train_in_process(data_dir, model_dir, helpers, *overrides):
  config = experiments.resolve("demo_cpu", list(helpers.SMALL_OVERRIDES) + list(overrides))
  previous = keras.mixed_precision.global_policy()
  try:
    trainer = train_lib.Trainer(config, str(data_dir), str(model_dir))
    result = trainer.run()
    return trainer, result
  finally:
    keras.mixed_precision.set_global_policy(previous)


def test_ten_steps_per_loop_give_the_same_weights_as_one(phantom_data_dir, tmp_path, trainer_helpers):
  common = (f"train.train_steps={STEPS}", "train.eval_every_steps=20", "train.log_every_steps=20",
            "runtime.deterministic=true", "train.num_gradcam_images=0", "augment.flip_left_right=true")
  one, result_one = train_in_process(phantom_data_dir, tmp_path / "one", trainer_helpers, *common,
                                     "train.steps_per_loop=1")
  ten, result_ten = train_in_process(phantom_data_dir, tmp_path / "ten", trainer_helpers, *common,
                                     "train.steps_per_loop=10")
  assert result_one.steps == result_ten.steps == STEPS
  for a, b, variable in zip(one.model.get_weights(), ten.model.get_weights(), one.model.weights):
    np.testing.assert_array_equal(a, b, err_msg=variable.path)
  assert result_one.final_validation == result_ten.final_validation


@pytest.mark.parametrize("precision", ["float32", pytest.param("mixed_bfloat16", marks=pytest.mark.slow)])
def test_jit_compile_trains_demo_cpu_with_the_default_strategy(phantom_data_dir, tmp_path, trainer_helpers,
                                                               precision):
  trainer, result = train_in_process(phantom_data_dir, tmp_path / "run", trainer_helpers, "train.train_steps=4",
                                     "train.eval_every_steps=4", "train.steps_per_loop=2",
                                     "runtime.jit_compile=true", f"runtime.precision={precision}")
  assert result.steps == 4 and np.isfinite(result.final_validation["loss"])
  assert all(np.isfinite(w).all() for w in trainer.model.get_weights())
  assert trainer._train_loop.experimental_get_tracing_count() == 1  # pylint: disable=protected-access


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_jit_compile_trains_demo_cpu_mirrored_over_two_logical_cpus(phantom_data_dir, tmp_path, trainer_helpers,
                                                                    precision):
  result = trainer_helpers.run_trainer(trainer_helpers.trainer_command(
      phantom_data_dir, tmp_path / "run", "--strategy=mirrored", "--num_cpu_devices=2", f"--precision={precision}",
      overrides=("train.train_steps=4", "train.eval_every_steps=4", "train.steps_per_loop=2",
                 "runtime.jit_compile=true", "model.sync_batchnorm=false"), hooks=True))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 replica(s)" in result.stderr and (tmp_path / "run" / "export" / "model.keras").exists()


def test_jit_compile_with_synchronised_batchnorm_over_replicas_is_refused():
  from trainer import task  # pylint: disable=g-import-not-at-top
  config = experiments.resolve("demo_cpu", ["runtime.jit_compile=true", "model.sync_batchnorm=true"])
  with pytest.raises(ValueError, match="needs model.sync_batchnorm=false"):
    task.check_jit_compile(config, num_replicas=2)
  task.check_jit_compile(config, num_replicas=1)  # one replica: nothing to synchronise


@pytest.fixture(scope="module")
def phantom_128px(tmp_path_factory):
  import phantom_tfds  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("phantom_128")
  phantom_tfds.build(str(data_dir), size_px=128, num_train=16, num_validation=8, num_test=2, render_hw=(128, 100))
  return data_dir


XCEPTION = ("data.config_name=128px", "data.global_batch_size=4", "data.eval_batch_size=4", "model.backbone=xception",
            "model.weights=none", "train.train_steps=2", "train.eval_every_steps=2", "train.steps_per_loop=2",
            "train.num_gradcam_images=0", "runtime.jit_compile=true")


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_jit_compile_trains_xception_at_128px(phantom_128px, tmp_path, trainer_helpers, precision):
  # A fresh process: op determinism, once enabled by an in-process deterministic run of
  # the same test worker, cannot be switched off, and XLA has no deterministic MaxPool gradient.
  result = trainer_helpers.run_trainer(trainer_helpers.trainer_command(
      phantom_128px, tmp_path / "run", f"--precision={precision}", overrides=XCEPTION, hooks=True), timeout_s=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
  assert summary["steps"] == 2 and np.isfinite(summary["final_validation"]["loss"])


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_jit_compile_trains_xception_at_128px_mirrored(phantom_128px, tmp_path, trainer_helpers, precision):
  result = trainer_helpers.run_trainer(trainer_helpers.trainer_command(
      phantom_128px, tmp_path / "run", "--strategy=mirrored", "--num_cpu_devices=2", f"--precision={precision}",
      overrides=(*XCEPTION, "model.sync_batchnorm=false"), hooks=True), timeout_s=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 replica(s)" in result.stderr


def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one_and_names_the_file(
    phantom_data_dir, tmp_path, trainer_helpers, caplog):
  model_dir = tmp_path / "run"
  common = ("train.checkpoint_every_steps=2", "train.eval_every_steps=6", "train.num_gradcam_images=0")
  train_in_process(phantom_data_dir, model_dir, trainer_helpers, "train.train_steps=6", *common)
  data_file = model_dir / "checkpoints" / "ckpt-6.data-00000-of-00001"
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  caplog.set_level(py_logging.WARNING)
  trainer, result = train_in_process(phantom_data_dir, model_dir, trainer_helpers, "train.train_steps=8", *common)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= py_logging.WARNING]
  assert any(str(data_file) in w and "unreadable" in w for w in warnings), warnings
  assert any("resumed from" in w and w.split("resumed from ")[1].startswith(str(model_dir / "checkpoints" / "ckpt-4"))
             for w in warnings), warnings
  assert result.steps == 8 and trainer.manager.latest_checkpoint.endswith("ckpt-8")


def test_no_readable_checkpoint_is_an_error_never_a_fresh_start(phantom_data_dir, tmp_path, trainer_helpers):
  model_dir = tmp_path / "run"
  train_in_process(phantom_data_dir, model_dir, trainer_helpers, "train.train_steps=2", "train.eval_every_steps=2",
                   "train.num_gradcam_images=0")
  index = model_dir / "checkpoints" / "ckpt-2.index"
  index.write_bytes(index.read_bytes()[:10])
  result = trainer_helpers.run_trainer(trainer_helpers.trainer_command(
      phantom_data_dir, model_dir, overrides=("train.train_steps=4", "train.eval_every_steps=2")))
  assert result.returncode == checkpointing.UNREADABLE_CHECKPOINT_EXIT_CODE, result.stderr[-3000:]
  assert "no readable checkpoint" in result.stderr and str(index) in result.stderr
  assert not (model_dir / "checkpoints" / "ckpt-4.index").exists()


def test_progress_line_says_where_how_fast_how_good_and_how_long():
  line = train_lib.progress_line(1400, 2800, 775.4, 9.64, 12.83, 100.0)
  assert line == "step 1400/2800 (50%) · 775 img/s · train MAE 9.6 months · val MAE 12.8 months · ETA 1m40s"
  assert train_lib.progress_line(5, 2800, 3.0, 40.0, None, 4000.0).endswith("train MAE 40.0 months · ETA 1h06m")


def test_console_progress_lines_stay_about_ten_per_run_whatever_its_length():
  """The demo's 2800 steps logged every 100 print a line every 300 steps; short runs every window."""
  assert train_lib.console_every_steps(2800, 100) == 300
  assert train_lib.console_every_steps(200, 100) == 100
  assert train_lib.console_every_steps(100_000, 50) == 10_000
  for total, every in ((2800, 100), (200, 100), (100_000, 50), (37, 5)):
    cadence = train_lib.console_every_steps(total, every)
    lines = len(range(cadence, total + 1, cadence)) + (total % cadence != 0)  # the last step always prints
    assert cadence % every == 0 and lines <= train_lib.CONSOLE_LINES_PER_RUN + 1, (total, every, lines)
