"""Batch size, learning rate and synchronised BatchNorm for a replica count.

Experiments state a PER-REPLICA batch: a run on R replicas trains on a
global batch of R x per_replica rows, so one chip, 8 GPUs and a pod slice
each keep every replica equally busy. `data.global_batch_size`, when set,
wins instead and must divide by R (a clear error otherwise).

Learning rate: `optimizer.learning_rate` is the rate at the global batch
`optimizer.reference_batch_size` (what the recipe was tuned at). At a
global batch B the rate is multiplied by

  sqrt(B / reference)   lr_scaling=sqrt (default)
  B / reference         lr_scaling=linear
  1                     lr_scaling=none

Why square root for Adam: linear scaling (Goyal et al. 2017) follows from
SGD, whose step is proportional to the gradient; Adam divides by the
gradient's running RMS, so its step size does not grow with the batch the
way SGD's does, and the stochastic-differential-equation analysis of
adaptive methods (Malladi et al., NeurIPS 2022) gives the square-root rule
for Adam: growing the batch k-fold cuts the gradient-noise variance k-fold,
which a sqrt(k) larger rate restores. Linear scaling stays available for
runs that add a long warm-up (`optimizer.warmup_steps`), which large
global batches need with either rule in their first steps.

`min_learning_rate` scales by the same factor, so a plateau schedule keeps
its dynamic range. The resolved config records the numbers actually used
(reference = the run's own global batch), so resolving it again changes
nothing.

This module imports no TensorFlow: `boneage-train --print_config` resolves
for any replica count without devices.
"""

import math

from trainer import configs

# Below this many rows per replica, BatchNorm statistics from one replica
# are noisy enough to hurt (Wu & He 2018 show BatchNorm's error rising
# steeply below 16 images per worker; Peng et al. 2018, MegDet, synchronise
# BatchNorm for that reason). At or above it, per-replica statistics are
# good enough and synchronising costs one all-reduce per BatchNorm layer per
# forward pass (about forty for Xception), slow across nodes.
SYNC_BATCHNORM_BELOW = 16


def lr_factor(lr_scaling: str, global_batch: int, reference_batch: int) -> float:
  """The learning-rate multiplier for a global batch relative to the reference batch."""
  ratio = global_batch / reference_batch
  if lr_scaling == "sqrt":
    return math.sqrt(ratio)
  if lr_scaling == "linear":
    return ratio
  if lr_scaling == "none":
    return 1.0
  raise ValueError(f"unknown optimizer.lr_scaling {lr_scaling!r}; one of {configs.LR_SCALINGS}")


def use_sync_batchnorm(setting: str, num_replicas: int, per_replica_batch: int) -> bool:
  """Whether BatchNorm statistics are all-reduced across replicas ("auto": small per-replica batches only)."""
  if num_replicas <= 1:
    return False  # one replica: nothing to synchronise.
  if setting == "auto":
    return per_replica_batch < SYNC_BATCHNORM_BELOW
  return setting == "true"


def resolve(config: configs.ExperimentConfig, num_replicas: int) -> configs.ExperimentConfig:
  """A copy of `config` with the batch, learning rate and BatchNorm mode fixed for `num_replicas`.

  Fills data.global_batch_size and data.per_replica_batch_size, scales
  optimizer.learning_rate and min_learning_rate from reference_batch_size
  (then set to the global batch), resolves model.sync_batchnorm="auto" and
  records runtime.num_replicas.

  Raises:
    ValueError: if num_replicas < 1, or a set global batch does not divide
      by the replica count.
  """
  if num_replicas < 1:
    raise ValueError(f"the replica count must be >= 1, got {num_replicas}")
  config = configs.from_dict(configs.to_dict(config))
  d, o = config.data, config.optimizer
  if d.global_batch_size:
    if d.global_batch_size % num_replicas:
      raise ValueError(
          f"data.global_batch_size={d.global_batch_size} does not divide by the {num_replicas} replicas; "
          f"set a multiple of {num_replicas}, or state data.per_replica_batch_size and leave "
          "data.global_batch_size=0")
    per_replica = d.global_batch_size // num_replicas
  else:
    per_replica = d.per_replica_batch_size
  global_batch = per_replica * num_replicas
  factor = lr_factor(o.lr_scaling, global_batch, o.reference_batch_size or global_batch)
  o.learning_rate *= factor
  o.min_learning_rate *= factor
  o.reference_batch_size = global_batch
  d.global_batch_size, d.per_replica_batch_size = global_batch, per_replica
  sync = use_sync_batchnorm(config.model.sync_batchnorm, num_replicas, per_replica)
  config.model.sync_batchnorm = "true" if sync else "false"
  config.runtime.num_replicas = num_replicas
  configs.validate(config)
  return config
