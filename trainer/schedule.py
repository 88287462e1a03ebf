"""The learning-rate schedule and the validation-driven decisions, with checkpointable state.

- `LearningRate`: linear warm-up, then `plateau` (a scale variable that
  `Schedule.after_evaluation` lowers), `cosine` (a function of the step)
  or `constant`. Its scale variable lives with the model (under the
  strategy's scope) so the replica step reads it on the device.
- `Schedule`: best validation loss and MAE, plateau and early-stopping
  counters; `after_evaluation` decides from one evaluation's metrics.
  Every worker runs it on identical, all-reduced metrics, so every worker
  takes the same decisions at the same step.

Both are checkpointed with the model, so a resumed run continues the same
schedule.
"""

import dataclasses
import math

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from trainer import configs


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """Warm-up x (plateau scale | cosine decay | constant), in resolved (already scaled) rates."""

  def __init__(self, optimizer_config: configs.OptimizerConfig, total_steps: int):
    self.config = optimizer_config
    self.total_steps = total_steps
    # Multiplies learning_rate under `plateau`; lowered by Schedule.after_evaluation.
    self.scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="plateau_lr_scale")

  def __call__(self, step):
    o = self.config
    step = tf.cast(step, tf.float32)
    if o.schedule == "cosine":
      decay_steps = float(max(1, self.total_steps - o.warmup_steps))
      progress = tf.minimum(tf.maximum(step - o.warmup_steps, 0.0), decay_steps) / decay_steps
      lr = o.min_learning_rate + (o.learning_rate - o.min_learning_rate) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif o.schedule == "plateau":
      lr = tf.maximum(o.learning_rate * self.scale, o.min_learning_rate)
    else:
      lr = tf.constant(o.learning_rate, tf.float32)
    if o.warmup_steps:
      lr = lr * tf.minimum(step / o.warmup_steps, 1.0)
    return lr

  def get_config(self):
    return {"optimizer": dataclasses.asdict(self.config), "total_steps": self.total_steps}


class Schedule(tf.Module):
  """Best values and the plateau / early-stopping counters (all tf.Variables, checkpointed)."""

  def __init__(self, optimizer_config: configs.OptimizerConfig, learning_rate: LearningRate | None = None):
    super().__init__(name="schedule")
    self.config = optimizer_config
    self.learning_rate = learning_rate
    self.best_val_loss = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.best_val_mae = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False)

  def checkpoint_items(self) -> dict:
    """What a tf.train.Checkpoint must hold to resume this schedule."""
    items = {"best_val_loss": self.best_val_loss, "best_val_mae": self.best_val_mae, "best_step": self.best_step,
             "plateau_wait": self.plateau_wait, "stale_evals": self.stale_evals}
    if self.learning_rate is not None:
      items["plateau_lr_scale"] = self.learning_rate.scale
    return items

  @property
  def stopped(self) -> bool:
    """Early stopping has fired (a rerun of a stopped run stays stopped)."""
    patience = self.config.early_stopping_patience
    return bool(patience and self.stale_evals.numpy() >= patience)

  def after_evaluation(self, step: int, result: dict) -> bool:
    """Updates best values, the plateau scale and early stopping from one evaluation; True = stop.

    A metric that is None or NaN never counts as an improvement.
    """
    o = self.config
    mae, loss = _finite(result.get("mae_months")), _finite(result.get("loss"))
    if mae < self.best_val_mae.numpy():
      self.best_val_mae.assign(mae)
      self.best_step.assign(step)
    if loss < self.best_val_loss.numpy():
      self.best_val_loss.assign(loss)
      self.plateau_wait.assign(0)
      self.stale_evals.assign(0)
      return False
    self.stale_evals.assign_add(1)
    if o.schedule == "plateau" and self.learning_rate is not None:
      self.plateau_wait.assign_add(1)
      if self.plateau_wait.numpy() >= o.plateau_patience:
        floor = o.min_learning_rate / o.learning_rate
        new_scale = max(float(self.learning_rate.scale.numpy()) * o.plateau_factor, floor)
        self.learning_rate.scale.assign(new_scale)
        self.plateau_wait.assign(0)
        logging.info("step %d: validation loss plateaued, learning rate -> %g", step, o.learning_rate * new_scale)
    return self.stopped


def _finite(value) -> float:
  return float(value) if value is not None and math.isfinite(float(value)) else math.inf
