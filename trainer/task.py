"""The task: model, optimizer, loss, and the per-replica train and eval steps.

What a step computes, apart from when steps run (trainer.train_lib, the
loop) and from the learning-rate schedule's state (trainer.schedule).

Both steps return SUMS over their rows, never means: the loop adds them over
replicas (strategy.reduce SUM), steps and workers, and divides once, so a
metric is the same whether the rows ran on one device or on many.
"""

import keras
import numpy as np
import tensorflow as tf

from bone_age import age_groups
from bone_age import metrics
from bone_age import model as model_lib
from trainer import configs
from trainer import input_pipeline as ip
from trainer import schedule as schedule_lib

# Per-step training sums, in this order ("stop" is the preemption flag, see train_lib).
TRAIN_STATS = ("loss", "age_loss", "group_loss", "abs_err_months", "sq_err_months", "group_correct", "count", "stop")
# Evaluation sums, in this order, then the confusion matrix (true group x predicted group) flattened.
# true_months are centred on _CENTRE_MONTHS so the float32 sums of squares keep their precision.
EVAL_STATS = ("loss", "abs_err_months", "sq_err_months", "true_months", "true_sq_months", "count")
_CENTRE_MONTHS = age_groups.MAX_AGE_MONTHS / 2
_TRAIN_KEYS = (ip.IMAGE, ip.MALE, ip.BONEAGE, ip.GROUP)
_EVAL_KEYS = (*_TRAIN_KEYS, ip.WEIGHT)


def build_model(config: configs.ExperimentConfig, image_size_px: int, age_group_edges_months, *,
                weights=None) -> keras.Model:
  c = config.model
  return model_lib.build_model(
      image_size_px=image_size_px, age_group_edges_months=age_group_edges_months, backbone=c.backbone,
      weights=weights, dropout_image=c.dropout_image, dropout_fusion=c.dropout_fusion)


def configure_batchnorm(model: keras.Model, synchronized: bool, momentum: float) -> None:
  """Training-only BatchNorm settings (the exported copy keeps the model's defaults)."""
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.synchronized = synchronized
      if momentum:
        layer.momentum = momentum


def build_optimizer(config: configs.ExperimentConfig, total_steps: int):
  """(Adam on the schedule's learning rate, LossScaleOptimizer-wrapped for mixed_float16; that schedule)."""
  learning_rate = schedule_lib.LearningRate(config.optimizer, total_steps)
  optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
  if config.runtime.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer, learning_rate


def inner_optimizer(optimizer):
  return getattr(optimizer, "inner_optimizer", optimizer)


def seed_states(model: keras.Model) -> list:
  """The dropout layers' RNG state variables (a Keras model does not checkpoint them)."""
  states = []
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    generator = getattr(layer, "seed_generator", None)
    if generator is not None:
      states.append(generator.state.value)
  return states


def per_example_losses(outputs: dict, boneage_months, age_group, loss_config: configs.LossConfig):
  """(weighted total, age MAE on months/240, group cross-entropy), each (B,) float32."""
  pred_months = tf.cast(tf.reshape(outputs[model_lib.AGE_OUTPUT], (-1,)), tf.float32)
  age_loss = tf.abs(pred_months - boneage_months) / age_groups.MAX_AGE_MONTHS
  probs = tf.cast(outputs[model_lib.GROUP_OUTPUT], tf.float32)
  group_loss = keras.losses.sparse_categorical_crossentropy(age_group, probs)
  total = loss_config.age_mae_weight * age_loss + loss_config.group_ce_weight * group_loss
  return total, age_loss, group_loss


def make_train_step(model, optimizer, config: configs.ExperimentConfig, *, num_replicas: int = 1,
                    logical_cpus: bool = False):
  """The per-replica step: forward, backward, apply; returns TRAIN_STATS sums (stop = 0).

  runtime.jit_compile compiles with XLA: with one replica the whole step
  (optimizer update included, as a TPU runs it); with several, the forward
  and backward pass, while the gradient all-reduce and the update stay
  outside XLA: XLA cannot compile collectives on CPU devices (TensorFlow
  b/194942685), and a nested tf.function may not hold a cross-replica
  synchronisation point. Synchronised BatchNorm is such a point, so XLA
  with several replicas needs model.sync_batchnorm=false (checked in
  check_jit_compile).

  Args:
    model, optimizer: built under the strategy's scope.
    config: the resolved experiment.
    num_replicas: replicas in sync.
    logical_cpus: the replicas are logical CPU devices of one host. Their
      compiled calls are then left unplaced so each runs where its
      replica's variables live (under the replica's device scope XLA tries
      to reach them from CPU:0).
  """
  global_batch = config.data.global_batch_size
  loss_config = config.loss

  def gradients(batch):
    with tf.GradientTape() as tape:
      outputs = model(ip.model_inputs(batch), training=True)
      total, age_loss, group_loss = per_example_losses(outputs, batch[ip.BONEAGE], batch[ip.GROUP], loss_config)
      loss = tf.reduce_sum(total) / global_batch  # this replica's share of the global mean
      scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    err = tf.reshape(tf.cast(outputs[model_lib.AGE_OUTPUT], tf.float32), (-1,)) - batch[ip.BONEAGE]
    pred_group = tf.argmax(outputs[model_lib.GROUP_OUTPUT], axis=-1, output_type=tf.int32)
    stats = tf.stack([
        tf.reduce_sum(total), tf.reduce_sum(age_loss), tf.reduce_sum(group_loss), tf.reduce_sum(tf.abs(err)),
        tf.reduce_sum(tf.square(err)), tf.reduce_sum(tf.cast(pred_group == batch[ip.GROUP], tf.float32)),
        tf.cast(tf.size(err), tf.float32), 0.0])
    return grads, stats

  def replica_step(batch):
    grads, stats = gradients(batch)
    optimizer.apply(grads, model.trainable_variables)
    return stats

  if not config.runtime.jit_compile:
    return replica_step
  if num_replicas == 1:
    compiled_step = tf.function(replica_step, jit_compile=True)
    return lambda batch: compiled_step({k: batch[k] for k in _TRAIN_KEYS})
  compiled_gradients = tf.function(gradients, jit_compile=True)

  def replica_step_compiled_gradients(batch):
    batch = {k: batch[k] for k in _TRAIN_KEYS}  # only numbers enter XLA (ids stay on the host)
    if logical_cpus:
      with tf.device(None):
        grads, stats = compiled_gradients(batch)
    else:
      grads, stats = compiled_gradients(batch)
    optimizer.apply(grads, model.trainable_variables)
    return stats

  return replica_step_compiled_gradients


def check_jit_compile(config: configs.ExperimentConfig, num_replicas: int) -> None:
  """Raises ValueError for runtime.jit_compile with synchronised BatchNorm over several replicas."""
  if config.runtime.jit_compile and num_replicas > 1 and config.model.sync_batchnorm == "true":
    raise ValueError(
        f"runtime.jit_compile=true with {num_replicas} replicas needs model.sync_batchnorm=false: the "
        "synchronised BatchNorm all-reduce cannot run inside the XLA-compiled forward pass")


def make_eval_step(model, config: configs.ExperimentConfig, num_groups: int, *, logical_cpus: bool = False):
  """The per-replica evaluation step: EVAL_STATS sums and the confusion matrix over rows with weight 1.

  Padding rows (weight 0, see input_pipeline.eval_dataset) count for nothing,
  so every replica can run the same number of full batches. No collectives
  inside, so runtime.jit_compile compiles all of it (logical_cpus: see
  make_train_step).
  """
  loss_config = config.loss

  def replica_step(batch):
    outputs = model(ip.model_inputs(batch), training=False)
    weight = batch[ip.WEIGHT]
    total, _, _ = per_example_losses(outputs, batch[ip.BONEAGE], batch[ip.GROUP], loss_config)
    err = tf.reshape(tf.cast(outputs[model_lib.AGE_OUTPUT], tf.float32), (-1,)) - batch[ip.BONEAGE]
    centred = batch[ip.BONEAGE] - _CENTRE_MONTHS
    pred_group = tf.argmax(outputs[model_lib.GROUP_OUTPUT], axis=-1, output_type=tf.int32)
    cells = tf.one_hot(batch[ip.GROUP] * num_groups + pred_group, num_groups * num_groups) * weight[:, None]
    sums = tf.stack([tf.reduce_sum(weight * total), tf.reduce_sum(weight * tf.abs(err)),
                     tf.reduce_sum(weight * tf.square(err)), tf.reduce_sum(weight * centred),
                     tf.reduce_sum(weight * tf.square(centred)), tf.reduce_sum(weight)])
    return tf.concat([sums, tf.reduce_sum(cells, axis=0)], axis=0)

  if not config.runtime.jit_compile:
    return replica_step
  compiled = tf.function(replica_step, jit_compile=True)
  if not logical_cpus:
    return lambda batch: compiled({k: batch[k] for k in _EVAL_KEYS})

  def unplaced(batch):  # see make_train_step
    with tf.device(None):
      return compiled({k: batch[k] for k in _EVAL_KEYS})

  return unplaced


def eval_metrics(sums: np.ndarray, num_groups: int) -> dict:
  """Validation metrics from the summed eval stats (every worker computes the same numbers).

  R2 uses the summed squares: SST = sum(y^2) - (sum y)^2 / n (y centred,
  which leaves SST unchanged). QWK and
  accuracy come from the summed confusion matrix via bone_age.metrics.
  """
  sums = np.asarray(sums, np.float64)
  values = dict(zip(EVAL_STATS, sums[:len(EVAL_STATS)]))
  matrix = np.rint(sums[len(EVAL_STATS):]).astype(np.int64).reshape(num_groups, num_groups)
  count = values["count"]
  if count <= 0:
    return {"loss": None, "mae_months": None, "rmse_months": None, "r2": None, "group_accuracy": None,
            "qwk": None, "count": 0}
  total = values["true_sq_months"] - values["true_months"] ** 2 / count
  true_group, pred_group = np.indices(matrix.shape).reshape(2, -1)
  classification = metrics.classification_metrics(np.repeat(true_group, matrix.reshape(-1)),
                                                   np.repeat(pred_group, matrix.reshape(-1)), num_groups)
  return {"loss": float(values["loss"] / count), "mae_months": float(values["abs_err_months"] / count),
          "rmse_months": float(np.sqrt(values["sq_err_months"] / count)),
          "r2": float(1.0 - values["sq_err_months"] / total) if total > 0 else None,
          "group_accuracy": classification["group_accuracy"], "qwk": classification["qwk"], "count": int(round(count))}
