"""Config resolution, overrides and validation (no TensorFlow needed)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from trainer import configs
from trainer import experiments

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_named_experiments_resolve_to_their_recipes():
  assert {"seed_512", "xception_384", "demo_cpu"} <= set(experiments.names())
  seed = experiments.get("seed_512")
  assert (seed.data.config_name, seed.model.backbone, seed.model.weights) == ("512px", "xception", "imagenet")
  assert (seed.data.per_replica_batch_size, seed.train.epochs, seed.optimizer.learning_rate) == (16, 15, 1e-4)
  assert seed.optimizer.reference_batch_size == 16 and seed.data.global_batch_size == 0  # scales with replicas
  assert (seed.optimizer.schedule, seed.optimizer.plateau_factor, seed.optimizer.plateau_patience) == ("plateau", 0.5, 3)
  assert seed.augment.flip_left_right and seed.augment.rotation_max_deg == 0  # what the notebook really ran
  readme = experiments.get("xception_384")
  assert readme.data.config_name == "384px" and readme.model.backbone == "xception"
  assert readme.augment.rotation_max_deg > 0 and readme.augment.zoom_max_fraction > 0 and readme.augment.flip_left_right
  demo = experiments.get("demo_cpu")
  assert demo.data.config_name == "128px" and configs.image_size_px(demo) == 128
  assert configs.model_weights(demo) is None and configs.model_weights(seed) == "imagenet"
  assert (seed.loss.age_mae_weight, seed.loss.group_ce_weight) == (5.0, 1.0)


def test_overrides_are_typed_and_do_not_mutate_the_registry():
  config = experiments.resolve("demo_cpu", [
      "train.train_steps=12", "optimizer.learning_rate=2e-3", "augment.flip_left_right=true",
      "model.backbone=xception", "loss.group_ce_weight=0"])
  assert config.train.train_steps == 12 and isinstance(config.train.train_steps, int)
  assert config.optimizer.learning_rate == 2e-3
  assert config.augment.flip_left_right is True
  assert config.model.backbone == "xception" and config.loss.group_ce_weight == 0.0
  assert experiments.get("demo_cpu").train.train_steps != 12


@pytest.mark.parametrize("override, message", [
    ("train.no_such_field=1", "unknown config field 'train.no_such_field'"),
    ("nosection.x=1", "unknown config section"),
    ("train.train_steps=ten", "expected int"),
    ("train.train_steps=1.5", "expected int"),
    ("augment.flip_left_right=maybe", "expected true/false"),
    ("train.train_steps", "not of the form"),
    ("data.validation_split=test", "test split is held out"),
    ("runtime.strategy=horovod", "runtime.strategy must be one of"),
    ("runtime.precision=float16", "runtime.precision must be one of"),
    ("optimizer.schedule=step", "optimizer.schedule must be one of"),
    ("data.global_batch_size=-1", "global_batch_size must be >= 0"),
    ("optimizer.lr_scaling=cubic", "optimizer.lr_scaling must be one of"),
    ("model.sync_batchnorm=sometimes", "model.sync_batchnorm must be one of"),
    ("train.steps_per_loop=0", "train.steps_per_loop must be >= 1"),
    ("augment.zoom_max_fraction=1.5", "zoom_max_fraction"),
    ("data.config_name=big", "must look like '384px'"),
])
def test_bad_overrides_fail_with_the_offending_key(override, message):
  with pytest.raises(ValueError, match=message):
    experiments.resolve("demo_cpu", [override])


def test_unknown_experiment_lists_the_registered_ones():
  with pytest.raises(ValueError, match="seed_512"):
    experiments.get("seed_1024")


def test_resolved_config_round_trips_through_json():
  config = experiments.resolve("xception_384", ["train.seed=7", "runtime.deterministic=true"])
  again = configs.from_dict(json.loads(configs.to_json(config)))
  assert again == config and again.name == "xception_384"



def run_cli(*args):
  # A subprocess: trainer.train_main's absl flags would collide with other entry points' in one process.
  return subprocess.run([sys.executable, "-m", "trainer.train_main", "--data_dir=d", "--model_dir=m", *args],
                        capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT,
                        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def test_command_line_flags_become_the_runtime_config():
  result = run_cli("--experiment=xception_384", "--config_override=train.train_steps=5",
                   "--config_override=data.global_batch_size=4", "--strategy=multi_worker",
                   "--precision=mixed_bfloat16", "--deterministic", "--print_config")
  assert result.returncode == 0, result.stderr
  config = configs.from_dict(json.loads(result.stdout))
  assert config.name == "xception_384" and config.train.train_steps == 5 and config.data.global_batch_size == 4
  assert (config.runtime.strategy, config.runtime.precision, config.runtime.deterministic) == (
      "multi_worker", "mixed_bfloat16", True)


def test_command_line_rejects_a_bad_override_before_loading_anything():
  result = run_cli("--config_override=train.train_steps=ten")
  assert result.returncode != 0 and "train.train_steps: expected int" in result.stderr


@pytest.mark.parametrize("replicas, per_replica, global_batch, learning_rate, sync_batchnorm", [
    (1, 16, 16, 1e-4, "false"),
    (8, 16, 128, 1e-4 * 8 ** 0.5, "false"),  # sqrt rule; 16 rows per replica: per-replica statistics
    (32, 16, 512, 1e-4 * 32 ** 0.5, "false"),
])
def test_print_config_shows_per_replica_batch_and_scaled_learning_rate(replicas, per_replica, global_batch,
                                                                       learning_rate, sync_batchnorm):
  result = run_cli("--experiment=seed_512", "--print_config", f"--num_replicas_for_print={replicas}")
  assert result.returncode == 0, result.stderr
  config = configs.from_dict(json.loads(result.stdout))
  assert config.runtime.num_replicas == replicas
  assert (config.data.per_replica_batch_size, config.data.global_batch_size) == (per_replica, global_batch)
  assert config.optimizer.learning_rate == pytest.approx(learning_rate, rel=1e-12)
  assert config.optimizer.min_learning_rate == pytest.approx(1e-6 * (global_batch / 16) ** 0.5, rel=1e-12)
  assert config.optimizer.reference_batch_size == global_batch  # resolving again changes nothing
  assert config.model.sync_batchnorm == sync_batchnorm


def test_scaling_rules_and_sync_batchnorm_default():
  from trainer import scaling  # pylint: disable=g-import-not-at-top
  demo = experiments.resolve("demo_cpu", ["data.per_replica_batch_size=4", "optimizer.lr_scaling=linear"])
  scaled = scaling.resolve(demo, 8)
  assert scaled.data.global_batch_size == 32 and scaled.optimizer.learning_rate == pytest.approx(2e-3 * 32 / 32)
  assert scaled.model.sync_batchnorm == "true"  # 4 rows per replica: too few for per-replica statistics
  assert scaling.resolve(scaled, 8) == scaled  # idempotent
  assert scaling.resolve(demo, 1).model.sync_batchnorm == "false"  # one replica: nothing to synchronise
  fixed = experiments.resolve("demo_cpu", ["data.global_batch_size=64", "optimizer.lr_scaling=none"])
  assert scaling.resolve(fixed, 4).data.per_replica_batch_size == 16
  assert scaling.resolve(fixed, 4).optimizer.learning_rate == 2e-3


def test_a_global_batch_that_does_not_divide_by_the_replicas_is_a_clear_error():
  result = run_cli("--experiment=seed_512", "--config_override=data.global_batch_size=16", "--print_config",
                   "--num_replicas_for_print=32")
  assert result.returncode != 0
  assert "data.global_batch_size=16 does not divide by the 32 replicas" in result.stderr
