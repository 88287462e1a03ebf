"""Typed training configs: dataclasses, override parsing and validation.

An `ExperimentConfig` is the whole recipe of one run (data, augmentation,
model, optimizer, loss, schedule, runtime). Named experiments
(`trainer.experiments`) override only what differs from the defaults here;
`--config_override section.field=value` changes one field from the command
line. The resolved config (after overrides and after the trainer fills in
dataset-dependent numbers such as the step count) is written to
`<model_dir>/config.json` so a run can always be reproduced.

This module imports no TensorFlow: configs are cheap to build and test.
"""

import dataclasses
import json
import typing
from collections.abc import Iterable

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("plateau", "cosine", "constant")
LR_SCALINGS = ("sqrt", "linear", "none")
SYNC_BATCHNORM = ("auto", "true", "false")
INPUT_SHARDINGS = ("auto", "records", "files")


@dataclasses.dataclass
class DataConfig:
  """Where the TFDS dataset is and how batches are formed."""
  dataset_name: str = "rsna_bone_age"
  config_name: str = "384px"  # TFDS builder config; fixes the image size.
  version: str = ""  # "" = newest version found under the data dir.
  train_split: str = "train"
  validation_split: str = "validation"
  # The batch is stated per replica (global = per replica x replicas, see
  # trainer.scaling) unless global_batch_size is set, which then wins and must
  # divide by the replica count.
  per_replica_batch_size: int = 16
  global_batch_size: int = 0  # summed over all replicas of all workers; 0 = per replica x replicas.
  eval_batch_size: int = 32
  shuffle_buffer: int = 2048  # examples; encoded PNGs, so cheap to hold.
  num_parallel_reads: int = 4  # TFRecord files read concurrently.
  cache_max_bytes: int = 1 << 30  # cache a split in memory only if its files fit.
  max_validation_examples: int = 0  # 0 = the whole validation split.
  # How training input is divided among input pipelines (one per worker host):
  # "records" = one global order read by every pipeline (exact resume on any
  # worker count), "files" = each pipeline reads only its share of the split's
  # files (reading divided by the pipelines; exact resume only on the same
  # count), "auto" = files when reading is the cost (see
  # trainer.input_pipeline.resolve_input_sharding).
  input_sharding: str = "auto"


@dataclasses.dataclass
class AugmentConfig:
  """Random augmentation of training images (pure TF, seeded per example)."""
  rotation_max_deg: float = 0.0  # uniform in [-max, +max] degrees.
  zoom_max_fraction: float = 0.0  # scale uniform in [1 - z, 1 + z].
  flip_left_right: bool = False  # mirror with probability 1/2.
  brightness_max_delta: float = 0.0  # additive, fraction of full scale (255).
  contrast_max_fraction: float = 0.0  # contrast factor uniform in [1 - c, 1 + c].


@dataclasses.dataclass
class ModelConfig:
  """Arguments of bone_age.model.build_model (the image size comes from the data)."""
  backbone: str = "xception"
  weights: str = "imagenet"  # "imagenet", "none" (random init) or a local weights file.
  dropout_image: float = 0.5
  dropout_fusion: float = 0.4
  # BatchNorm moving-average momentum during training; 0 = the model's own (0.99).
  # 0.99 averages over ~700 steps: longer than a short CPU run, whose inference
  # statistics would then lag far behind the weights.
  batchnorm_momentum: float = 0.0
  # Synchronised BatchNorm across replicas: "auto" = on when more than one
  # replica trains on fewer than trainer.scaling.SYNC_BATCHNORM_BELOW rows
  # each (see trainer.scaling.use_sync_batchnorm), "true", or "false".
  sync_batchnorm: str = "auto"


@dataclasses.dataclass
class OptimizerConfig:
  """Adam with a learning-rate schedule.

  `learning_rate` and `min_learning_rate` are the rates at a global batch of
  `reference_batch_size` (0 = the run's own global batch, i.e. no scaling).
  At another global batch B they are multiplied by sqrt(B / reference)
  (`lr_scaling=sqrt`, the default for Adam), B / reference (`linear`) or 1
  (`none`); trainer.scaling says why. `warmup_steps` ramps the rate up
  linearly from 0 for every schedule.

  `plateau` is Keras' ReduceLROnPlateau done by hand on the validation loss
  (multiply by `plateau_factor` after `plateau_patience` evaluations without
  improvement, never below `min_learning_rate`); its state is checkpointed
  so resume is exact. `cosine` decays from `learning_rate` to
  `min_learning_rate` over the run after `warmup_steps` of linear warm-up.
  """
  learning_rate: float = 1e-4
  reference_batch_size: int = 0
  lr_scaling: str = "sqrt"
  schedule: str = "plateau"
  plateau_factor: float = 0.5
  plateau_patience: int = 3
  min_learning_rate: float = 1e-6
  warmup_steps: int = 0
  early_stopping_patience: int = 0  # evaluations without improvement; 0 = off.


@dataclasses.dataclass
class LossConfig:
  """Loss = age_mae_weight * MAE(age / 240) + group_ce_weight * CCE(age group)."""
  age_mae_weight: float = 5.0
  group_ce_weight: float = 1.0


@dataclasses.dataclass
class TrainConfig:
  """Length of the run and how often to evaluate, checkpoint and log."""
  epochs: float = 15.0  # used when train_steps is 0.
  train_steps: int = 0  # 0 = epochs * train examples / global batch size.
  eval_every_steps: int = 0  # 0 = once per epoch.
  checkpoint_every_steps: int = 0  # 0 = at every evaluation.
  max_checkpoints_to_keep: int = 3
  log_every_steps: int = 50
  seed: int = 42
  num_gradcam_images: int = 4  # validation images with Grad-CAM per evaluation.
  # Training steps per tf.function call: the host reads metrics, checks for
  # preemption and decides on evaluation/checkpoints only between loops. A loop
  # also ends at every log, evaluation and checkpoint step, so those stay exact.
  steps_per_loop: int = 1


@dataclasses.dataclass
class RuntimeConfig:
  """Distribution strategy and numerics (the flags of boneage-train)."""
  strategy: str = "default"
  precision: str = "float32"
  tpu: str = ""  # TPU name or address for strategy=tpu; "" = the local TPU VM.
  deterministic: bool = False  # op determinism: identical weights on rerun/resume.
  jit_compile: bool = False  # compile the per-replica train step with XLA (what a TPU runs).
  # Replicas the batch and learning rate were resolved for (trainer.scaling);
  # 0 = not resolved yet. The trainer fills it from the strategy.
  num_replicas: int = 0


@dataclasses.dataclass
class ExperimentConfig:
  """One training recipe; see trainer.experiments for the named ones."""
  name: str = "base"
  description: str = ""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


def to_dict(config: ExperimentConfig) -> dict:
  return dataclasses.asdict(config)


def to_json(config: ExperimentConfig) -> str:
  return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(values: dict) -> ExperimentConfig:
  """Rebuilds a config from `to_dict` output (e.g. a saved config.json).

  Raises:
    ValueError: for unknown sections or fields.
  """
  config = ExperimentConfig()
  for key, value in values.items():
    if isinstance(value, dict):
      for field, field_value in value.items():
        _set(config, f"{key}.{field}", field_value)
    else:
      _set(config, key, value)
  validate(config)
  return config


def _field_types(obj) -> dict:
  hints = typing.get_type_hints(type(obj))
  return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _coerce(key: str, text_or_value, wanted_type):
  """Converts an override value (string from the command line, or JSON value) to the field's type."""
  value = text_or_value
  if wanted_type is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
      return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"{key}: expected true/false, got {value!r}")
  if wanted_type in (int, float):
    if isinstance(value, bool):
      raise ValueError(f"{key}: expected a number, got {value!r}")
    try:
      number = float(value) if wanted_type is float else int(value) if not isinstance(value, str) else int(value, 0)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{key}: expected {wanted_type.__name__}, got {value!r}") from e
    if wanted_type is int and isinstance(value, float) and value != int(value):
      raise ValueError(f"{key}: expected an integer, got {value!r}")
    return number
  if wanted_type is str:
    if not isinstance(value, str):
      raise ValueError(f"{key}: expected a string, got {value!r}")
    return value
  raise ValueError(f"{key}: cannot override a field of type {wanted_type}")


def _set(config: ExperimentConfig, key: str, value) -> None:
  parts = key.split(".")
  target = config
  for part in parts[:-1]:
    if part not in _field_types(target) or not dataclasses.is_dataclass(getattr(target, part)):
      raise ValueError(f"unknown config section {part!r} in {key!r}; sections: {_sections()}")
    target = getattr(target, part)
  types = _field_types(target)
  field = parts[-1]
  if field not in types or dataclasses.is_dataclass(types[field]):
    raise ValueError(f"unknown config field {key!r}; valid fields: {sorted(_all_keys(config))}")
  setattr(target, field, _coerce(key, value, types[field]))


def _sections() -> list[str]:
  return [f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in ("name", "description")]


def _all_keys(config: ExperimentConfig) -> set[str]:
  keys = set()
  for name, value in vars(config).items():
    if dataclasses.is_dataclass(value):
      keys.update(f"{name}.{field.name}" for field in dataclasses.fields(value))
    else:
      keys.add(name)
  return keys


def apply_overrides(config: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
  """Applies `section.field=value` strings in order, then validates.

  Raises:
    ValueError: naming the override, for a malformed string, an unknown key,
      a value of the wrong type or a resulting config that is invalid.
  """
  config = from_dict(to_dict(config))  # a deep copy, so the registry's configs are never mutated.
  for override in overrides:
    if "=" not in override:
      raise ValueError(f"override {override!r} is not of the form section.field=value")
    key, value = override.split("=", 1)
    _set(config, key.strip(), value.strip())
  validate(config)
  return config


def validate(config: ExperimentConfig) -> None:
  """Checks values that would otherwise fail late (after minutes of setup).

  Raises:
    ValueError: listing every problem found.
  """
  problems = []
  d, a, o, t, r = config.data, config.augment, config.optimizer, config.train, config.runtime

  def need(condition, message):
    if not condition:
      problems.append(message)

  need(d.global_batch_size >= 0, "data.global_batch_size must be >= 0 (0 = per replica x replicas)")
  need(d.per_replica_batch_size >= 1 or d.global_batch_size >= 1,
       "data.per_replica_batch_size must be >= 1 (or set data.global_batch_size)")
  need(d.eval_batch_size >= 1, "data.eval_batch_size must be >= 1")
  need(d.shuffle_buffer >= 1, "data.shuffle_buffer must be >= 1")
  need(d.num_parallel_reads >= 1, "data.num_parallel_reads must be >= 1")
  need(d.max_validation_examples >= 0, "data.max_validation_examples must be >= 0")
  need(d.input_sharding in INPUT_SHARDINGS,
       f"data.input_sharding must be one of {INPUT_SHARDINGS}, got {d.input_sharding!r}")
  need(d.config_name.endswith("px") and d.config_name[:-2].isdigit(),
       f"data.config_name must look like '384px', got {d.config_name!r}")
  need("test" not in (d.train_split, d.validation_split),
       "the test split is held out: it can be neither the training nor the validation split")
  need(0 <= a.rotation_max_deg <= 180, "augment.rotation_max_deg must be in [0, 180]")
  need(0 <= a.zoom_max_fraction < 1, "augment.zoom_max_fraction must be in [0, 1)")
  need(0 <= a.brightness_max_delta <= 1, "augment.brightness_max_delta must be in [0, 1]")
  need(0 <= a.contrast_max_fraction < 1, "augment.contrast_max_fraction must be in [0, 1)")
  need(0 <= config.model.batchnorm_momentum < 1, "model.batchnorm_momentum must be in [0, 1)")
  need(0 <= config.model.dropout_image < 1 and 0 <= config.model.dropout_fusion < 1, "model dropouts must be in [0, 1)")
  need(o.learning_rate > 0, "optimizer.learning_rate must be > 0")
  need(o.reference_batch_size >= 0, "optimizer.reference_batch_size must be >= 0")
  need(o.lr_scaling in LR_SCALINGS, f"optimizer.lr_scaling must be one of {LR_SCALINGS}, got {o.lr_scaling!r}")
  need(config.model.sync_batchnorm in SYNC_BATCHNORM,
       f"model.sync_batchnorm must be one of {SYNC_BATCHNORM}, got {config.model.sync_batchnorm!r}")
  need(o.schedule in LR_SCHEDULES, f"optimizer.schedule must be one of {LR_SCHEDULES}, got {o.schedule!r}")
  need(0 < o.plateau_factor < 1, "optimizer.plateau_factor must be in (0, 1)")
  need(o.plateau_patience >= 1, "optimizer.plateau_patience must be >= 1")
  need(0 <= o.min_learning_rate <= o.learning_rate, "optimizer.min_learning_rate must be in [0, learning_rate]")
  need(o.warmup_steps >= 0 and o.early_stopping_patience >= 0, "warmup_steps and early_stopping_patience must be >= 0")
  need(config.loss.age_mae_weight >= 0 and config.loss.group_ce_weight >= 0, "loss weights must be >= 0")
  need(config.loss.age_mae_weight + config.loss.group_ce_weight > 0, "at least one loss weight must be > 0")
  need(t.epochs > 0 or t.train_steps > 0, "set train.train_steps > 0 or train.epochs > 0")
  need(t.train_steps >= 0 and t.eval_every_steps >= 0 and t.checkpoint_every_steps >= 0,
       "train step counts must be >= 0")
  need(t.max_checkpoints_to_keep >= 1, "train.max_checkpoints_to_keep must be >= 1")
  need(t.log_every_steps >= 1, "train.log_every_steps must be >= 1")
  need(t.steps_per_loop >= 1, "train.steps_per_loop must be >= 1")
  need(r.num_replicas >= 0, "runtime.num_replicas must be >= 0")
  need(t.num_gradcam_images >= 0, "train.num_gradcam_images must be >= 0")
  need(r.strategy in STRATEGIES, f"runtime.strategy must be one of {STRATEGIES}, got {r.strategy!r}")
  need(r.precision in PRECISIONS, f"runtime.precision must be one of {PRECISIONS}, got {r.precision!r}")
  if problems:
    raise ValueError(f"invalid config {config.name!r}: " + "; ".join(problems))


def image_size_px(config: ExperimentConfig) -> int:
  """S of the TFDS config the experiment reads ('384px' -> 384)."""
  return int(config.data.config_name[:-2])


def model_weights(config: ExperimentConfig) -> str | None:
  """build_model's `weights` argument ('none' -> None)."""
  return None if config.model.weights.lower() in ("", "none") else config.model.weights
