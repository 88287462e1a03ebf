"""The training loop: many steps per tf.function call under `strategy.run`, for every strategy.

Why not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy
with 2+ workers (keras-team/keras#20329) and `BackupAndRestore` only
restores the epoch. This loop drives the task (trainer.task: model, loss,
per-replica steps) and the schedule (trainer.schedule) the same way under
default, mirrored, multi_worker and tpu.

Keeping accelerators busy: one tf.function call runs `train.steps_per_loop`
steps (a tf.range loop over the distributed iterator, as Orbit does); the
input is built per worker by `distribute_datasets_from_function` and
fetched to the devices ahead of the step; `runtime.jit_compile` compiles
the replica step with XLA. The host touches values (logging, preemption,
evaluation and checkpoint decisions) only between loops, and a loop ends at
every log, evaluation and checkpoint step, so those happen at exactly the
configured steps whatever steps_per_loop is.

Resume is by step: a checkpoint holds model, optimizer, step, dropout RNG
states and the schedule; the input position is a function of the step
(input_pipeline), so each worker rebuilds its own shard of the stream at
the restored step. Checkpoints are saved at loop boundaries, which are the
configured checkpoint steps.

Distributed evaluation: the validation split is sharded across replicas and
workers (input_pipeline.eval_dataset pads it to whole batches); each
replica returns sums, reduced across all replicas, so every worker computes
identical metrics and takes identical plateau and early-stopping decisions.

Preemption: SIGTERM (checkpointing.PreemptionWatcher) sets a flag that the
next loop all-reduces with its statistics, so every worker stops after the
same step, saves, and the command exits with checkpointing.PREEMPTED_EXIT_CODE.
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

from trainer import checkpointing
from trainer import configs
from trainer import distribution
from trainer import input_pipeline as ip
from trainer import scaling
from trainer import schedule as schedule_lib
from trainer import summaries
from trainer import task

CONFIG_FILE = "config.json"
SUMMARY_FILE = "training_summary.json"
EXPORT_SUBDIR = "export"
# Embeddings per split behind the export's OOD statistics: enough for a
# shrunk covariance of the backbone's channels, a bounded pass on any split.
OOD_MAX_EMBEDDINGS = 4096
_STOP = task.TRAIN_STATS.index("stop")


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


class Callback:
  """Hooks into the loop for tests and tools; production runs pass none.

  Attributes:
    wants_batch_keys: if any callback sets it, the loop also returns the
      ids and stream positions of the rows this worker consumed.
  """
  wants_batch_keys = False

  def on_loop_end(self, trainer: "Trainer", records: list[tuple[int, np.ndarray, list[str]]]) -> None:
    """After each loop; records = (step, positions, ids) of this worker's rows per step, if wanted."""

  def on_validation(self, trainer: "Trainer", step: int, result: dict, stop: bool) -> None:
    """After each evaluation and the schedule's decision (stop = early stopping fired)."""

  def on_train_end(self, trainer: "Trainer", result: TrainResult) -> None:
    """After the last step (also after a preemption)."""


def resolve_schedule(config: configs.ExperimentConfig, num_train_examples: int) -> configs.ExperimentConfig:
  """Fills the dataset-dependent step counts (so config.json shows the numbers used)."""
  config = configs.from_dict(configs.to_dict(config))
  t = config.train
  steps_per_epoch = max(1, num_train_examples // config.data.global_batch_size)
  if not t.train_steps:
    t.train_steps = max(1, int(math.ceil(t.epochs * steps_per_epoch)))
  if not t.eval_every_steps:
    t.eval_every_steps = min(steps_per_epoch, t.train_steps)
  if not t.checkpoint_every_steps:
    t.checkpoint_every_steps = t.eval_every_steps
  return config


def current_learning_rate(optimizer) -> float:
  return float(keras.ops.convert_to_numpy(task.inner_optimizer(optimizer).learning_rate))


def strict_json(value):
  """NaN and infinities -> None, recursively, so json.dumps(allow_nan=False) accepts the result."""
  if isinstance(value, dict):
    return {k: strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def _warn_if_resume_is_not_exact(model_dir: str, config: configs.ExperimentConfig, input_sharding: str) -> None:
  """Warns when a run resumes with `files` input sharding on another replica count.

  With `files` each worker's order depends on how the files are divided, so
  the stream after a restart on a different worker count is not the one the
  checkpoint was trained on (see trainer/README.md, "Input per host").
  """
  path = os.path.join(model_dir, CONFIG_FILE)
  if input_sharding != "files" or not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    previous = json.loads(f.read()).get("runtime", {}).get("num_replicas")
  if previous is not None and previous != config.runtime.num_replicas:
    logging.warning("resuming on %d replicas a run that trained on %d with data.input_sharding=files: training "
                    "goes on, but the input order after the restart differs from an uninterrupted run",
                    config.runtime.num_replicas, previous)


class Trainer:
  """Builds everything for one run and drives the loop; see train_and_evaluate."""

  def __init__(self, config, data_dir, model_dir, *, callbacks=()):
    self.model_dir = model_dir
    self.callbacks = list(callbacks)
    self.record_keys = any(c.wants_batch_keys for c in self.callbacks)
    runtime = config.runtime
    keras.utils.set_random_seed(config.train.seed)
    if runtime.deterministic:
      tf.config.experimental.enable_op_determinism()
    self.strategy = distribution.create_strategy(runtime.strategy, runtime.tpu)
    self.chief = distribution.is_chief(self.strategy)
    self.num_replicas = self.strategy.num_replicas_in_sync
    self.builder = ip.load_builder(data_dir, config.data)
    self.facts = ip.dataset_facts(self.builder, config.data)
    if self.facts.image_size_px != configs.image_size_px(config):
      raise ValueError(f"dataset {self.facts.data_dir} holds {self.facts.image_size_px} px images but "
                       f"data.config_name is {config.data.config_name}")
    config = scaling.resolve(config, self.num_replicas)
    task.check_jit_compile(config, self.num_replicas)
    local_devices = self.strategy.extended.worker_devices if self.num_replicas > 1 else ()
    self.logical_cpus = len(local_devices) > 1 and all("CPU" in d.upper() for d in local_devices)
    self.config = config = resolve_schedule(config, self.facts.num_train_examples)
    self.num_groups = len(self.facts.age_group_edges_months) + 1
    num_pipelines = distribution.input_context(self.strategy).num_input_pipelines
    sharding = ip.resolve_input_sharding(self.builder, config.data, num_pipelines)
    # Resolved once, here: config.json records what the run used, and the input pipeline reads it as is.
    self.config = config = dataclasses.replace(config, data=dataclasses.replace(config.data, input_sharding=sharding))
    _warn_if_resume_is_not_exact(model_dir, config, sharding)
    if self.chief:
      tf.io.gfile.makedirs(model_dir)
      with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        f.write(configs.to_json(config))

    keras.mixed_precision.set_global_policy(runtime.precision)
    with self.strategy.scope():
      self.model = task.build_model(config, self.facts.image_size_px, self.facts.age_group_edges_months,
                                    weights=configs.model_weights(config))
      task.configure_batchnorm(self.model, synchronized=config.model.sync_batchnorm == "true",
                               momentum=config.model.batchnorm_momentum)
      self.optimizer, learning_rate = task.build_optimizer(config, config.train.train_steps)
      self.optimizer.build(self.model.trainable_variables)
    self.schedule = schedule_lib.Schedule(config.optimizer, learning_rate)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                     dropout_rng=task.seed_states(self.model), **self.schedule.checkpoint_items())
    self.manager = checkpointing.ChiefOnlyManager(checkpoint, model_dir, self.chief,
                                                  config.train.max_checkpoints_to_keep)
    self.writers = summaries.Writers(model_dir, self.chief)
    self.worker_id = distribution.input_context(self.strategy).input_pipeline_id
    self._input_options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    self._train_loop = self._make_train_loop()
    self._eval_loop = self._make_eval_loop()
    self._num_eval_examples = min(self.facts.num_validation_examples,
                                  config.data.max_validation_examples or self.facts.num_validation_examples)
    self._eval_steps = ip.eval_steps(self._num_eval_examples, config.data, self.num_replicas)
    self._gradcam_examples = None

  # ---------------------------------------------------------------- compiled loops
  def _make_train_loop(self):
    strategy = self.strategy
    replica_step = task.make_train_step(self.model, self.optimizer, self.config, num_replicas=self.num_replicas,
                                        logical_cpus=self.logical_cpus)
    record = self.record_keys

    @tf.function
    def train_loop(iterator, num_steps, stop_flag):
      stats = tf.zeros([len(task.TRAIN_STATS)])
      ids = tf.TensorArray(tf.string, size=num_steps, infer_shape=False)
      positions = tf.TensorArray(tf.int64, size=num_steps, infer_shape=False)
      for i in tf.range(num_steps):
        batch = next(iterator)
        stats += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(batch,)), axis=None)
        if record:  # this worker's rows: its local replicas' batches in replica order
          ids = ids.write(i, tf.concat(strategy.experimental_local_results(batch[ip.ID]), 0))
          positions = positions.write(i, tf.concat(strategy.experimental_local_results(batch[ip.INDEX]), 0))
      # Any worker's flag stops every worker after this loop.
      stop = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(stop_flag,)), axis=None)
      stats += tf.one_hot(_STOP, len(task.TRAIN_STATS)) * stop
      if record:
        return stats, ids.stack(), positions.stack()
      return stats, tf.zeros([0, 0], tf.string), tf.zeros([0, 0], tf.int64)

    return train_loop

  def _make_eval_loop(self):
    strategy = self.strategy
    replica_step = task.make_eval_step(self.model, self.config, self.num_groups, logical_cpus=self.logical_cpus)

    @tf.function
    def eval_loop(iterator, num_steps):
      sums = tf.zeros([len(task.EVAL_STATS) + self.num_groups ** 2])
      for _ in tf.range(num_steps):
        sums += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(next(iterator),)),
                                axis=None)
      return sums

    return eval_loop

  def _train_iterator(self, start_step: int):
    def dataset_fn(context):
      return ip.train_dataset(self.builder, self.config, self.facts.image_size_px, start_step=start_step,
                              input_context=context, batch_rows=self.config.data.per_replica_batch_size,
                              keep_keys=self.record_keys)
    return iter(self.strategy.distribute_datasets_from_function(dataset_fn, self._input_options))

  # ---------------------------------------------------------------- evaluation
  def evaluate(self) -> dict:
    """Validation metrics over the whole split, sharded across replicas and workers, identical on every worker."""
    def dataset_fn(context):
      return ip.eval_dataset(self.builder, self.config, self.facts.image_size_px, input_context=context,
                             batch_rows=self.config.data.eval_batch_size, keep_keys=False)
    iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn, self._input_options))
    sums = self._eval_loop(iterator, tf.constant(self._eval_steps)).numpy()
    return task.eval_metrics(sums, self.num_groups)

  def _write_gradcam(self, step: int) -> None:
    n = self.config.train.num_gradcam_images
    if not self.chief or not n:
      return
    from bone_age import gradcam  # pylint: disable=g-import-not-at-top
    if self._gradcam_examples is None:  # the same first validation images at every evaluation
      batch = next(iter(ip.eval_dataset(self.builder, self.config, self.facts.image_size_px)))
      keep = np.flatnonzero(batch[ip.WEIGHT].numpy() > 0)
      keep = keep[summaries.balanced_by_sex(batch[ip.MALE].numpy()[keep], n)]
      self._gradcam_examples = {k: batch[k].numpy()[keep] for k in (ip.IMAGE, ip.MALE, ip.BONEAGE)}
    examples = self._gradcam_examples
    months, _, heatmaps = gradcam.predict_with_gradcam(self.model, examples[ip.IMAGE], examples[ip.MALE])
    captions = [f"{'boy' if m > 0.5 else 'girl'}: true {t:.0f} mo, predicted {p:.0f} mo"
                for t, p, m in zip(examples[ip.BONEAGE], months, examples[ip.MALE])]
    summaries.write_gradcam(self.writers.validation, step, examples[ip.IMAGE], heatmaps, captions)

  # ---------------------------------------------------------------- loop
  def _loop_length(self, step: int) -> int:
    """Steps until the next log, evaluation, checkpoint or the end, at most steps_per_loop."""
    t = self.config.train
    boundaries = [t.train_steps] + [(step // every + 1) * every
                                    for every in (t.log_every_steps, t.eval_every_steps, t.checkpoint_every_steps)]
    return max(1, min(t.steps_per_loop, min(boundaries) - step))

  def run(self) -> TrainResult:
    t = self.config.train
    restored = self.manager.restore_latest()
    step = int(self.step.numpy())
    iterator = self._train_iterator(step)
    if not restored:
      summaries.write_hparams(self.writers.session, self.config)
    logging.info("training %s from step %d to %d on %d replica(s) (per-replica batch %d, global %d, "
                 "learning rate %g, sync BatchNorm %s, %d steps per loop), chief=%s", self.config.name, step,
                 t.train_steps, self.num_replicas, self.config.data.per_replica_batch_size,
                 self.config.data.global_batch_size, self.config.optimizer.learning_rate,
                 self.config.model.sync_batchnorm, t.steps_per_loop, self.chief)
    window, window_start = np.zeros(len(task.TRAIN_STATS)), time.perf_counter()
    self._progress_start, self._progress_first_step, self._last_val_mae = time.perf_counter(), step, None
    stop = self.schedule.stopped  # a run that already early-stopped stays stopped when rerun.
    last_validation, preempted = {}, False
    first_step, steady_seconds, steady_images = step, 0.0, 0
    try:
      with checkpointing.PreemptionWatcher() as watcher:
        while step < t.train_steps and not stop:
          loop_start = time.perf_counter()
          num_steps = self._loop_length(step)
          stats, ids, positions = self._train_loop(iterator, tf.constant(num_steps),
                                                   tf.constant(1.0 if watcher.requested else 0.0))
          stats = stats.numpy()
          step += num_steps
          self.step.assign(step)
          window += stats
          if self.record_keys:
            records = [(step - num_steps + 1 + i, p, [x.decode() for x in s])
                       for i, (p, s) in enumerate(zip(positions.numpy(), ids.numpy()))]
          else:
            records = []
          for callback in self.callbacks:
            callback.on_loop_end(self, records)
          if step % t.log_every_steps == 0 or step == t.train_steps:
            self._log_train(step, window, time.perf_counter() - window_start)
            window, window_start = np.zeros(len(task.TRAIN_STATS)), None
          if step - num_steps >= first_step + t.log_every_steps:  # past the first window (tracing)
            steady_seconds += time.perf_counter() - loop_start
            steady_images += num_steps * self.config.data.global_batch_size
          if stats[_STOP] > 0:
            self.manager.save(step)
            preempted = True
            logging.warning("preempted: checkpoint saved at step %d", step)
            break
          if step % t.eval_every_steps == 0 or step == t.train_steps:
            last_validation = self.evaluate()
            stop = self.schedule.after_evaluation(step, last_validation)
            self._log_validation(step, last_validation)
            for callback in self.callbacks:
              callback.on_validation(self, step, last_validation, stop)
          if step % t.checkpoint_every_steps == 0 or step == t.train_steps or stop:
            self.manager.save(step)
          window_start = window_start or time.perf_counter()
    finally:
      self.writers.flush()
    self.steady_images_per_second = steady_images / steady_seconds if steady_seconds else float("nan")
    if preempted:
      result = TrainResult(step, last_validation, float(self.schedule.best_val_mae.numpy()),
                           int(self.schedule.best_step.numpy()), None, True)
    else:
      if not last_validation:  # resumed from a checkpoint of the final step: evaluate it again.
        last_validation = self.evaluate()
      result = self._finish(step, last_validation)
    for callback in self.callbacks:
      callback.on_train_end(self, result)
    return result

  def _log_train(self, step, window, seconds):
    count = max(window[task.TRAIN_STATS.index("count")], 1.0)
    values = {
        "loss": window[0] / count, "age_mae_loss": window[1] / count, "group_ce_loss": window[2] / count,
        "mae_months": window[3] / count, "rmse_months": math.sqrt(window[4] / count),
        "group_accuracy": window[5] / count, "learning_rate": current_learning_rate(self.optimizer),
        "images_per_second": count / max(seconds, 1e-9),
    }
    summaries.write_scalars(self.writers.train, step, summaries.TRAIN, values)
    logging.debug("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    elapsed_s = time.perf_counter() - self._progress_start
    done = step - self._progress_first_step
    eta_s = elapsed_s / done * (self.config.train.train_steps - step) if done > 0 else None
    t = self.config.train
    on_console = step % console_every_steps(t.train_steps, t.log_every_steps) == 0 or step == t.train_steps
    line = progress_line(step, t.train_steps, values["images_per_second"], values["mae_months"], self._last_val_mae,
                         eta_s)
    if on_console:
      logging.info("%s", line)
    else:
      logging.debug("%s", line)

  def _log_validation(self, step, result):
    values = {k: v for k, v in result.items() if k != "count" and v is not None}
    values["best_mae_months"] = float(self.schedule.best_val_mae.numpy())
    summaries.write_scalars(self.writers.validation, step, summaries.VALIDATION, values)
    self._write_gradcam(step)
    self._last_val_mae = values.get("mae_months")
    # The progress line shows validation MAE; every metric is in TensorBoard and at --verbosity=debug.
    logging.debug("step %d validation: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

  def export_copy(self) -> keras.Model:
    """The trained weights in a fresh model outside the strategy.

    The export must not carry distributed variables or the synchronised
    BatchNorm the training model may use under a multi-replica strategy.
    """
    fresh = task.build_model(self.config, self.facts.image_size_px, self.facts.age_group_edges_months)
    fresh.set_weights(self.model.get_weights())
    return fresh

  def _embeddings(self, embedder, split: str) -> np.ndarray:
    """Pooled backbone features of up to OOD_MAX_EMBEDDINGS images of `split`, in file order."""
    chunks, count = [], 0
    for batch in ip.eval_dataset(self.builder, self.config, self.facts.image_size_px, split=split, keep_keys=False):
      keep = batch[ip.WEIGHT].numpy() > 0
      embedding = np.asarray(embedder.predict_on_batch(ip.model_inputs(batch))["embedding"])[keep]
      chunks.append(embedding)
      count += len(embedding)
      if count >= OOD_MAX_EMBEDDINGS:
        break
    return np.concatenate(chunks)[:OOD_MAX_EMBEDDINGS]

  def _save_ood_stats(self, model: keras.Model, export_dir: str) -> None:
    """Fits the export's out-of-distribution statistics (bone_age.ood) on train, calibrated on validation."""
    from bone_age import ood  # pylint: disable=g-import-not-at-top
    embedder = ood.embedding_model(model)
    stats = ood.fit(self._embeddings(embedder, self.config.data.train_split),
                    self._embeddings(embedder, self.config.data.validation_split))
    ood.save(stats, export_dir)
    logging.info("OOD statistics from %d training embeddings; threshold %.3g (validation %g%%, %d embeddings)",
                 stats.num_train, stats.threshold, stats.percentile, stats.num_validation)

  def _calibrate_interval(self, model: keras.Model, export_dir: str) -> dict:
    """Split-conformal calibration (bone_age.conformal) on the validation split, for every TTA view count.

    Returns the record export_metadata.json keeps (or why there is none:
    a validation split too small for the default alpha).
    """
    from bone_age import conformal  # pylint: disable=g-import-not-at-top
    from bone_age import tta  # pylint: disable=g-import-not-at-top
    from trainer import evaluate  # pylint: disable=g-import-not-at-top
    split = self.config.data.validation_split
    predictions = evaluate.predict_split(model, self.builder, split, self.config.data.eval_batch_size, tta.MAX_VIEWS)
    labeled = np.isfinite(predictions["true_months"])
    try:
      calibration = conformal.calibrate(predictions["true_months"][labeled], predictions["view_months"][:, labeled],
                                        split)
      record = conformal.record(calibration)
    except ValueError as e:
      logging.warning("no prediction interval in the export: %s", e)
      stale = os.path.join(export_dir, conformal.CONFORMAL_SCORES_FILE)
      if tf.io.gfile.exists(stale):  # a previous export's scores must not outlive its model
        tf.io.gfile.remove(stale)
      return {"missing_reason": str(e)}
    conformal.save(calibration, export_dir)
    logging.info("%g%% prediction interval: +/- %.2f months (plain) from %d validation images (rank %d)",
                 100 * record["level"], record["half_width_months_by_tta_views"]["1"], record["n_calibration"],
                 record["rank"])
    return record

  def _finish(self, step: int, final_validation: dict) -> TrainResult:
    export_dir = os.path.join(self.model_dir, EXPORT_SUBDIR)
    best_mae = float(self.schedule.best_val_mae.numpy())
    result = TrainResult(step, final_validation, best_mae, int(self.schedule.best_step.numpy()),
                         export_dir if self.chief else None, False, self.steady_images_per_second)
    if self.chief:
      from bone_age import export  # pylint: disable=g-import-not-at-top
      exported = self.export_copy()
      tf.io.gfile.makedirs(export_dir)
      interval = self._calibrate_interval(exported, export_dir)
      export.save_export(exported, export_dir, strict_json({
          "image_size_px": self.facts.image_size_px,
          "age_group_edges_months": self.facts.age_group_edges_months,
          "backbone": self.config.model.backbone,
          "dataset_name": self.builder.info.name,
          "dataset_version": self.facts.version,
          "dataset_config": self.config.data.config_name,
          "dataset_synthetic": bool((self.builder.info.metadata or {}).get("synthetic", False)),
          "experiment": self.config.name,
          "precision": self.config.runtime.precision,
          "train_steps": step,
          # The export holds the weights of the last step, never the best validation checkpoint's: say so.
          "checkpoint_step": step,
          "checkpoint_reason": "last",
          "training_stopped_by": "early_stopping" if self.schedule.stopped else "train_steps",
          "final_validation_mae_months": final_validation.get("mae_months"),
          "best_validation_mae_months": best_mae,
          "best_validation_step": result.best_step,
          "prediction_interval": interval,
      }))
      self._save_ood_stats(exported, export_dir)
      with tf.io.gfile.GFile(os.path.join(self.model_dir, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(strict_json({
            "steps": step, "final_validation": final_validation, "best_validation_mae_months": best_mae,
            "best_step": result.best_step, "export_dir": export_dir,
            "steady_images_per_second": self.steady_images_per_second}), indent=2, allow_nan=False))
    logging.info("finished at step %d: final validation MAE %s months, best %.2f months at step %d", step,
                 final_validation.get("mae_months"), best_mae, result.best_step)
    return result


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# Progress lines printed per run at the default verbosity, whatever its length (TensorBoard keeps every window).
CONSOLE_LINES_PER_RUN = 10


def console_every_steps(total_steps: int, log_every_steps: int, lines_per_run: int = CONSOLE_LINES_PER_RUN) -> int:
  """Steps between console progress lines: a multiple of log_every_steps giving about lines_per_run lines.

  Logging windows in between go to TensorBoard and to --verbosity=debug only, so a long run prints as few
  lines as a short one (2800 steps logged every 100: a line every 300 steps, 10 in all with the last).
  """
  windows = max(1, math.ceil(total_steps / max(lines_per_run, 1) / log_every_steps))
  return windows * log_every_steps


def progress_line(step: int, total_steps: int, images_per_second: float, train_mae_months: float,
                  val_mae_months: float | None, eta_s: float | None) -> str:
  """One console line per logging window: where the run is, how fast, how good, how long to go."""
  parts = [f"step {step}/{total_steps} ({100.0 * step / max(total_steps, 1):.0f}%)",
           f"{images_per_second:.0f} img/s", f"train MAE {train_mae_months:.1f} months"]
  if val_mae_months is not None:
    parts.append(f"val MAE {val_mae_months:.1f} months")
  if eta_s is not None:
    parts.append(f"ETA {_duration(eta_s)}")
  return " · ".join(parts)


def train_and_evaluate(config: configs.ExperimentConfig, data_dir: str, model_dir: str, *,
                       callbacks=()) -> TrainResult:
  """Trains (or resumes) a run, validates, and exports the final model to <model_dir>/export.

  Args:
    config: an experiment config (trainer.experiments.resolve); the batch
      and learning rate are resolved here for the strategy's replica count.
    data_dir: TFDS data dir holding rsna_bone_age/<config>/<version>.
    model_dir: where checkpoints, logs, config.json and export/ go; rerunning
      with the same model_dir resumes from its newest readable checkpoint.
    callbacks: Callback instances (tests and tools).

  Raises:
    checkpointing.CheckpointError: if checkpoints exist but none is readable.
  """
  previous_policy = keras.mixed_precision.global_policy()
  try:
    return Trainer(config, data_dir, model_dir, callbacks=callbacks).run()
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
