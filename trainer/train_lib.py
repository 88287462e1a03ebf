"""The training loop: one custom loop under `strategy.run` for every strategy.

Why not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy
with 2+ workers (keras-team/keras#20329: its trainer calls strategy.reduce
on a nested batch and with axis=0 on scalars), and `BackupAndRestore` only
restores the epoch. A custom loop (tf.function train step, strategy.run,
strategy.reduce of the per-replica sums, optimizer.apply under the strategy)
works the same under default, mirrored, multi_worker and tpu, and lets a
tf.train.Checkpoint capture the exact position (model, optimizer, step,
dropout RNG, schedule state) for step-exact resume; the input position is a
function of the step (input_pipeline), so each worker rebuilds its own
shard of the stream at the restored step.

Per step: each worker takes its share of the global batch from its own
input pipeline (1/N of the rows for N workers, only those decoded) and each
of its local replicas trains on its rows of that share.
Multi-replica runs use synchronised BatchNorm so every replica (and worker)
keeps identical moving statistics, i.e. the same model as one device
training on the global batch.

Validation runs on every worker on the whole validation split (outside
strategy.run, no collectives), so every worker makes the same learning-rate
and early-stopping decisions. (On a TPU that means validation runs
unreplicated; tested here only on CPU strategies.) It reports the final and the best validation
MAE; the export is the FINAL model (validation selects nothing silently).

Learning rate: `plateau` (ReduceLROnPlateau on the validation loss, the
seed's choice; its state is checkpointed) or `cosine` (with warm-up; a
function of the step, used by demo_cpu because its short run has too few
evaluations for plateau detection).
"""

import dataclasses
import json
import math
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bone_age import age_groups
from bone_age import model as model_lib
from trainer import checkpointing
from trainer import configs
from trainer import distribution
from trainer import input_pipeline as ip
from trainer import summaries

CONFIG_FILE = "config.json"
SUMMARY_FILE = "training_summary.json"
EXPORT_SUBDIR = "export"
# Per-step statistics summed over replicas, in this order.
_STATS = ("loss", "age_loss", "group_loss", "abs_err_months", "sq_err_months", "group_correct", "count", "stop")


@dataclasses.dataclass
class TrainResult:
  steps: int
  final_validation: dict
  best_validation_mae_months: float
  best_step: int
  export_dir: str | None
  preempted: bool
  # Training throughput after the first logging window (tracing excluded), evaluation and checkpoints excluded.
  steady_images_per_second: float = float("nan")


def resolve_schedule(config: configs.ExperimentConfig, facts: ip.DatasetFacts) -> configs.ExperimentConfig:
  """Fills the dataset-dependent step counts (so config.json shows the numbers used)."""
  config = configs.from_dict(configs.to_dict(config))
  t = config.train
  steps_per_epoch = max(1, facts.num_train_examples // config.data.global_batch_size)
  if not t.train_steps:
    t.train_steps = max(1, int(math.ceil(t.epochs * steps_per_epoch)))
  if not t.eval_every_steps:
    t.eval_every_steps = min(steps_per_epoch, t.train_steps)
  if not t.checkpoint_every_steps:
    t.checkpoint_every_steps = t.eval_every_steps
  return config


def build_optimizer(config: configs.ExperimentConfig, total_steps: int) -> keras.optimizers.Optimizer:
  o = config.optimizer
  if o.schedule == "cosine":
    decay_steps = max(1, total_steps - o.warmup_steps)
    alpha = o.min_learning_rate / o.learning_rate
    if o.warmup_steps:
      lr = keras.optimizers.schedules.CosineDecay(0.0, decay_steps, alpha=alpha,
                                                  warmup_target=o.learning_rate, warmup_steps=o.warmup_steps)
    else:
      lr = keras.optimizers.schedules.CosineDecay(o.learning_rate, decay_steps, alpha=alpha)
  else:
    lr = o.learning_rate
  optimizer = keras.optimizers.Adam(learning_rate=lr)
  if config.runtime.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _inner(optimizer):
  return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer) -> float:
  return float(keras.ops.convert_to_numpy(_inner(optimizer).learning_rate))


def _seed_states(model: keras.Model) -> list:
  """The dropout layers' RNG state variables (a Keras model does not checkpoint them)."""
  states = []
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    generator = getattr(layer, "seed_generator", None)
    if generator is not None:
      states.append(generator.state.value)
  return states


def _configure_batchnorm(model: keras.Model, synchronized: bool, momentum: float) -> None:
  """Training-only BatchNorm settings (the exported copy keeps the model's defaults)."""
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.synchronized = synchronized
      if momentum:
        layer.momentum = momentum


def per_example_losses(outputs: dict, boneage_months, age_group, loss_config: configs.LossConfig):
  """(weighted total, age MAE on months/240, group cross-entropy), each (B,) float32."""
  pred_months = tf.cast(tf.reshape(outputs[model_lib.AGE_OUTPUT], (-1,)), tf.float32)
  age_loss = tf.abs(pred_months - boneage_months) / age_groups.MAX_AGE_MONTHS
  probs = tf.cast(outputs[model_lib.GROUP_OUTPUT], tf.float32)
  group_loss = keras.losses.sparse_categorical_crossentropy(age_group, probs)
  total = loss_config.age_mae_weight * age_loss + loss_config.group_ce_weight * group_loss
  return total, age_loss, group_loss


class Trainer:
  """Builds everything for one run and drives the loop; see train_and_evaluate."""

  def __init__(self, config, data_dir, model_dir, *, batch_log_path=None, worker_weights_dir=None):
    self.model_dir = model_dir
    self.batch_log_path = batch_log_path
    self.worker_weights_dir = worker_weights_dir
    runtime = config.runtime
    keras.utils.set_random_seed(config.train.seed)
    if runtime.deterministic:
      tf.config.experimental.enable_op_determinism()
    self.strategy = distribution.create_strategy(runtime.strategy, runtime.tpu)
    self.chief = distribution.is_chief(self.strategy)
    self.builder = ip.load_builder(data_dir, config.data)
    self.facts = ip.dataset_facts(self.builder, config.data)
    if self.facts.image_size_px != configs.image_size_px(config):
      raise ValueError(f"dataset {self.facts.data_dir} holds {self.facts.image_size_px} px images but "
                       f"data.config_name is {config.data.config_name}")
    self.config = config = resolve_schedule(config, self.facts)
    self.num_replicas = self.strategy.num_replicas_in_sync
    if config.data.global_batch_size % self.num_replicas:
      raise ValueError(f"data.global_batch_size={config.data.global_batch_size} is not divisible by the "
                       f"{self.num_replicas} replicas")
    if self.chief:
      tf.io.gfile.makedirs(model_dir)
      with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        f.write(configs.to_json(config))

    keras.mixed_precision.set_global_policy(runtime.precision)
    with self.strategy.scope():
      self.model = self._build_model(configs.model_weights(config))
      _configure_batchnorm(self.model, synchronized=self.num_replicas > 1, momentum=config.model.batchnorm_momentum)
      self.optimizer = build_optimizer(config, config.train.train_steps)
      self.optimizer.build(self.model.trainable_variables)
    self.input_context = distribution.input_context(self.strategy)
    self.iterator = None  # built in run(), at the restored step.
    self.eval_data = ip.eval_dataset(self.builder, config, self.facts.image_size_px)

    # Host-side loop state, checkpointed with everything else.
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    self.best_val_loss = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.best_val_mae = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.stale_evals = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step,
        dropout_rng=_seed_states(self.model), best_val_loss=self.best_val_loss, best_val_mae=self.best_val_mae,
        best_step=self.best_step, plateau_wait=self.plateau_wait, stale_evals=self.stale_evals)
    self.manager = checkpointing.ChiefOnlyManager(checkpoint, model_dir, self.chief,
                                                  config.train.max_checkpoints_to_keep)
    self.writers = summaries.Writers(model_dir, self.chief)
    self._train_step = self._make_train_step()
    self._predict = tf.function(lambda inputs: self.model(inputs, training=False))

  def _make_train_step(self):
    strategy, model, optimizer = self.strategy, self.model, self.optimizer
    global_batch = self.config.data.global_batch_size
    loss_config = self.config.loss

    def replica_step(batch, stop_flag):
      with tf.GradientTape() as tape:
        outputs = model(ip.model_inputs(batch), training=True)
        total, age_loss, group_loss = per_example_losses(outputs, batch[ip.BONEAGE], batch[ip.GROUP], loss_config)
        loss = tf.reduce_sum(total) / global_batch  # per-replica share of the global mean
        scaled = optimizer.scale_loss(loss)
      grads = tape.gradient(scaled, model.trainable_variables)
      optimizer.apply(grads, model.trainable_variables)
      err = tf.reshape(tf.cast(outputs[model_lib.AGE_OUTPUT], tf.float32), (-1,)) - batch[ip.BONEAGE]
      pred_group = tf.argmax(outputs[model_lib.GROUP_OUTPUT], axis=-1, output_type=tf.int32)
      return tf.stack([
          tf.reduce_sum(total), tf.reduce_sum(age_loss), tf.reduce_sum(group_loss), tf.reduce_sum(tf.abs(err)),
          tf.reduce_sum(tf.square(err)), tf.reduce_sum(tf.cast(pred_group == batch[ip.GROUP], tf.float32)),
          tf.cast(tf.size(err), tf.float32), stop_flag])

    context = self.input_context
    # This worker feeds the global replicas [first_replica, first_replica + local_replicas).
    local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
    first_replica = context.input_pipeline_id * local_replicas
    rows_per_replica = context.get_per_replica_batch_size(global_batch)

    @tf.function
    def train_step(iterator, stop_flag):
      batch = next(iterator)  # this worker's rows of the global batch
      rows = {k: batch[k] for k in (ip.IMAGE, ip.MALE, ip.BONEAGE, ip.GROUP)}

      def replica_rows(value_context):
        start = (value_context.replica_id_in_sync_group - first_replica) * rows_per_replica
        return {k: v[start:start + rows_per_replica] for k, v in rows.items()}

      per_replica = strategy.experimental_distribute_values_from_function(replica_rows)
      stats = strategy.run(replica_step, args=(per_replica, stop_flag))
      return strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None), batch[ip.ID], batch[ip.INDEX]

    return train_step

  # ---------------------------------------------------------------- evaluation
  def evaluate(self) -> tuple[dict, dict]:
    """Validation metrics and a few examples for Grad-CAM (images, male, true months)."""
    from bone_age import metrics  # pylint: disable=g-import-not-at-top
    true_months, pred_months, true_group, pred_group, losses = [], [], [], [], []
    examples = None
    for batch in self.eval_data:
      outputs = self._predict(ip.model_inputs(batch))
      total, _, _ = per_example_losses(outputs, batch[ip.BONEAGE], batch[ip.GROUP], self.config.loss)
      losses.append(total.numpy())
      true_months.append(batch[ip.BONEAGE].numpy())
      pred_months.append(np.reshape(outputs[model_lib.AGE_OUTPUT].numpy(), (-1,)))
      true_group.append(batch[ip.GROUP].numpy())
      pred_group.append(np.argmax(outputs[model_lib.GROUP_OUTPUT].numpy(), axis=-1))
      if examples is None:
        n = self.config.train.num_gradcam_images
        examples = {"image": batch[ip.IMAGE].numpy()[:n], "male": batch[ip.MALE].numpy()[:n],
                    "months": batch[ip.BONEAGE].numpy()[:n]}
    num_groups = len(self.facts.age_group_edges_months) + 1
    regression = metrics.regression_metrics(np.concatenate(true_months), np.concatenate(pred_months))
    classification = metrics.classification_metrics(np.concatenate(true_group), np.concatenate(pred_group), num_groups)
    result = {"loss": float(np.mean(np.concatenate(losses))), "mae_months": regression["mae_months"],
              "rmse_months": regression["rmse_months"], "r2": regression["r2"],
              "group_accuracy": classification["accuracy"], "qwk": classification["qwk"],
              "count": regression["count"]}
    return result, examples or {}

  def _write_gradcam(self, step: int, examples: dict) -> None:
    if not self.chief or not examples or not len(examples.get("image", [])):
      return
    from bone_age import gradcam  # pylint: disable=g-import-not-at-top
    months, _, heatmaps = gradcam.predict_with_gradcam(self.model, examples["image"], examples["male"])
    captions = [f"true {t:.0f} mo, predicted {p:.0f} mo, {'M' if m else 'F'}"
                for t, p, m in zip(examples["months"], months, examples["male"])]
    summaries.write_gradcam(self.writers.validation, step, examples["image"], heatmaps, captions)

  def _after_evaluation(self, step: int, result: dict) -> bool:
    """Updates best values, the plateau schedule and early stopping; True = stop training."""
    o = self.config.optimizer
    if result["mae_months"] < self.best_val_mae.numpy():
      self.best_val_mae.assign(result["mae_months"])
      self.best_step.assign(step)
    if result["loss"] < self.best_val_loss.numpy():
      self.best_val_loss.assign(result["loss"])
      self.plateau_wait.assign(0)
      self.stale_evals.assign(0)
      return False
    self.stale_evals.assign_add(1)
    if o.schedule == "plateau":
      self.plateau_wait.assign_add(1)
      if self.plateau_wait.numpy() >= o.plateau_patience:
        new_lr = max(current_learning_rate(self.optimizer) * o.plateau_factor, o.min_learning_rate)
        _inner(self.optimizer).learning_rate.assign(new_lr)
        self.plateau_wait.assign(0)
        logging.info("step %d: validation loss plateaued, learning rate -> %g", step, new_lr)
    return bool(o.early_stopping_patience and self.stale_evals.numpy() >= o.early_stopping_patience)

  # ---------------------------------------------------------------- loop
  def run(self) -> TrainResult:
    t = self.config.train
    restored = self.manager.restore_latest()
    step = int(self.step.numpy())
    self.iterator = iter(ip.train_dataset(self.builder, self.config, self.facts.image_size_px, start_step=step,
                                          input_context=self.input_context))
    if not restored:
      summaries.write_hparams(self.writers.train, self.config)
    logging.info("training %s from step %d to %d on %d replica(s), chief=%s", self.config.name, step,
                 t.train_steps, self.num_replicas, self.chief)
    log_path = worker_batch_log_path(self.batch_log_path, self.chief, self.input_context.input_pipeline_id)
    batch_log = open(log_path, "a", encoding="utf-8") if log_path else None
    window, window_start, window_steps = np.zeros(len(_STATS)), time.perf_counter(), 0
    # A run that already early-stopped stays stopped when rerun.
    stop = bool(self.config.optimizer.early_stopping_patience
                and self.stale_evals.numpy() >= self.config.optimizer.early_stopping_patience)
    last_validation, preempted = {}, False
    first_step, self._steady_seconds, self._steady_images = step, 0.0, 0
    try:
      with checkpointing.PreemptionWatcher() as watcher:
        while step < t.train_steps and not stop:
          step_start = time.perf_counter()
          stats, ids, indices = self._train_step(self.iterator, tf.constant(1.0 if watcher.requested else 0.0))
          step += 1
          self.step.assign(step)
          stats = stats.numpy()
          window += stats
          window_steps += 1
          if batch_log:
            batch_log.write(f"{step}\t{','.join(str(i) for i in indices.numpy())}\t"
                            f"{','.join(i.decode() for i in ids.numpy())}\n")
            batch_log.flush()
          if step % t.log_every_steps == 0 or step == t.train_steps:
            self._log_train(step, window, window_steps, time.perf_counter() - window_start)
            window, window_steps = np.zeros(len(_STATS)), 0
          if step > first_step + t.log_every_steps:
            self._steady_seconds += time.perf_counter() - step_start
            self._steady_images += self.config.data.global_batch_size
          if stats[_STATS.index("stop")] > 0:
            self.manager.save(step)
            preempted = True
            logging.warning("preempted: checkpoint saved at step %d", step)
            break
          if step % t.eval_every_steps == 0 or step == t.train_steps:
            last_validation, examples = self.evaluate()
            stop = self._after_evaluation(step, last_validation)
            self._log_validation(step, last_validation, examples)
          if step % t.checkpoint_every_steps == 0 or step == t.train_steps or stop:
            self.manager.save(step)
          window_start = time.perf_counter() if window_steps == 0 else window_start
    finally:
      if batch_log:
        batch_log.close()
      self.writers.flush()
    if preempted:
      return TrainResult(step, last_validation, float(self.best_val_mae.numpy()), int(self.best_step.numpy()),
                         None, True)
    if not last_validation:  # resumed from a checkpoint of the final step: evaluate it again.
      last_validation, _ = self.evaluate()
    return self._finish(step, last_validation)

  def _log_train(self, step, window, steps, seconds):
    count = max(window[_STATS.index("count")], 1.0)
    values = {
        "loss": window[0] / count, "age_mae_loss": window[1] / count, "group_ce_loss": window[2] / count,
        "mae_months": window[3] / count, "rmse_months": math.sqrt(window[4] / count),
        "group_accuracy": window[5] / count, "learning_rate": current_learning_rate(self.optimizer),
        "images_per_second": count / max(seconds, 1e-9),
    }
    summaries.write_scalars(self.writers.train, step, values)
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

  def _log_validation(self, step, result, examples):
    values = {k: v for k, v in result.items() if k != "count"}
    values["best_mae_months"] = float(self.best_val_mae.numpy())
    summaries.write_scalars(self.writers.validation, step, values)
    self._write_gradcam(step, examples)
    logging.info("step %d validation: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

  def _build_model(self, weights):
    c = self.config.model
    return model_lib.build_model(
        image_size_px=self.facts.image_size_px, age_group_edges_months=self.facts.age_group_edges_months,
        backbone=c.backbone, weights=weights, dropout_image=c.dropout_image, dropout_fusion=c.dropout_fusion)

  def _export_copy(self) -> keras.Model:
    """The trained weights in a fresh model outside the strategy.

    The export must not carry distributed variables or the synchronised
    BatchNorm the training model uses under a multi-replica strategy.
    """
    fresh = self._build_model(weights=None)
    fresh.set_weights(self.model.get_weights())
    return fresh

  def _finish(self, step: int, final_validation: dict) -> TrainResult:
    export_dir = os.path.join(self.model_dir, EXPORT_SUBDIR)
    if self.worker_weights_dir:
      save_worker_weights(self.model, self.worker_weights_dir, *distribution.task(self.strategy))
    steady = self._steady_images / self._steady_seconds if self._steady_seconds else float("nan")
    result = TrainResult(step, final_validation, float(self.best_val_mae.numpy()), int(self.best_step.numpy()),
                         export_dir if self.chief else None, False, steady)
    if self.chief:
      from bone_age import export  # pylint: disable=g-import-not-at-top
      export.save_export(self._export_copy(), export_dir, {
          "image_size_px": self.facts.image_size_px,
          "age_group_edges_months": self.facts.age_group_edges_months,
          "backbone": self.config.model.backbone,
          "dataset_version": self.facts.version,
          "dataset_config": self.config.data.config_name,
          "experiment": self.config.name,
          "precision": self.config.runtime.precision,
          "train_steps": step,
          "final_validation_mae_months": final_validation.get("mae_months"),
          "best_validation_mae_months": result.best_validation_mae_months,
      })
      with tf.io.gfile.GFile(os.path.join(self.model_dir, SUMMARY_FILE), "w") as f:
        json.dump({"steps": step, "final_validation": final_validation,
                   "best_validation_mae_months": result.best_validation_mae_months,
                   "best_step": result.best_step, "export_dir": export_dir,
                   "steady_images_per_second": steady}, f, indent=2)
    logging.info("finished at step %d: final validation MAE %.2f months, best %.2f months at step %d",
                 step, final_validation.get("mae_months", float("nan")), result.best_validation_mae_months,
                 result.best_step)
    return result


def worker_batch_log_path(path: str | None, chief: bool, input_pipeline_id: int) -> str | None:
  """The chief logs to `path`, other workers to `path`.worker<id> (each logs the rows it consumed)."""
  if not path:
    return None
  return path if chief else f"{path}.worker{input_pipeline_id}"


def save_worker_weights(model: keras.Model, directory: str, task_type: str, task_id: int) -> str:
  """Every variable of the model (trainable or not) as <dir>/<task>_<id>.npz, for cross-worker checks.

  Keys are "<index>_<path>" for the first local replica's copy and
  "replica<k>/<index>_<path>" for the other local replicas' copies.
  """
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, f"{task_type}_{task_id}.npz")
  arrays = {}
  for i, variable in enumerate(model.variables):
    # A distributed variable holds one copy per local replica; save every copy so tests can compare them.
    copies = getattr(variable.value, "values", None) or (variable.value,)
    for replica, copy in enumerate(copies):
      prefix = f"replica{replica}/" if replica else ""
      arrays[f"{prefix}{i:04d}_{variable.path}"] = np.asarray(copy.numpy())
  np.savez(path, **arrays)
  return path


def train_and_evaluate(config: configs.ExperimentConfig, data_dir: str, model_dir: str, *,
                       batch_log_path: str | None = None, worker_weights_dir: str | None = None) -> TrainResult:
  """Trains (or resumes) a run, validates, and exports the final model to <model_dir>/export.

  Args:
    config: a resolved experiment config (trainer.experiments.resolve).
    data_dir: TFDS data dir holding rsna_bone_age/<config>/<version>.
    model_dir: where checkpoints, logs, config.json and export/ go; rerunning
      with the same model_dir resumes from its newest checkpoint.
    batch_log_path: if set, every worker appends "step<TAB>indices<TAB>ids"
      of the rows it consumed at each step (proof of what each step
      consumed): the chief to this path, worker i to <path>.worker<i>.
    worker_weights_dir: if set, every worker saves its final weights there.
  """
  previous_policy = keras.mixed_precision.global_policy()
  try:
    return Trainer(config, data_dir, model_dir, batch_log_path=batch_log_path,
                   worker_weights_dir=worker_weights_dir).run()
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
