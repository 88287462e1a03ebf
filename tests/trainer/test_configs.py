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
  assert (seed.data.global_batch_size, seed.train.epochs, seed.optimizer.learning_rate) == (16, 15, 1e-4)
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
    ("data.global_batch_size=0", "global_batch_size must be >= 1"),
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
