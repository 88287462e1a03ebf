"""boneage-train: flags -> resolved config -> trainer.train_lib.train_and_evaluate.

  boneage-train --data_dir=DATA --model_dir=RUN --experiment=demo_cpu \
      [--config_override=train.train_steps=100 ...] --strategy=default|mirrored|multi_worker|tpu \
      --precision=float32|mixed_bfloat16|mixed_float16 [--tpu=NAME] [--deterministic]

Rerunning the same command with the same --model_dir continues from the
newest checkpoint. Exit status 143 means preempted (SIGTERM) after saving a
checkpoint: rerun to continue.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from trainer import configs
from trainer import experiments

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data dir holding rsna_bone_age/<config>/<version>.")
flags.DEFINE_string("model_dir", None, "Run directory: checkpoints/, logs/, config.json, export/.")
flags.DEFINE_string("experiment", "demo_cpu", f"Named experiment: {experiments.names()}.")
flags.DEFINE_multi_string("config_override", [], "section.field=value, repeatable (e.g. train.train_steps=100).")
flags.DEFINE_enum("strategy", "default", list(configs.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_enum("precision", "float32", list(configs.PRECISIONS), "Keras dtype policy.")
flags.DEFINE_string("tpu", "", "TPU name or grpc:// address for --strategy=tpu (default: this TPU VM).")
flags.DEFINE_bool("deterministic", False, "Op determinism + seeds: reruns and resumes give identical weights.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the host CPU into N logical devices (mirrored on CPU).")
flags.DEFINE_string("batch_log", None, "Append step, example positions and ids of every consumed batch: the chief here, worker i at <path>.worker<i>.")
flags.DEFINE_string("worker_weights_dir", None, "Every worker saves its final weights here as <task>_<id>.npz.")
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit without training.")
flags.mark_flags_as_required(["data_dir", "model_dir"])


def resolved_config() -> configs.ExperimentConfig:
  """The experiment with --config_override and the runtime flags applied."""
  overrides = list(FLAGS.config_override) + [
      f"runtime.strategy={FLAGS.strategy}", f"runtime.precision={FLAGS.precision}", f"runtime.tpu={FLAGS.tpu}",
      f"runtime.deterministic={FLAGS.deterministic}"]
  return experiments.resolve(FLAGS.experiment, overrides)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = resolved_config()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if FLAGS.print_config:
    print(configs.to_json(config))
    return
  # Heavy imports after flag validation, so --help and config errors are instant.
  from trainer import distribution  # pylint: disable=g-import-not-at-top
  if FLAGS.num_cpu_devices:
    distribution.split_host_cpu(FLAGS.num_cpu_devices)
  from trainer import train_lib  # pylint: disable=g-import-not-at-top
  from bone_age import errors  # pylint: disable=g-import-not-at-top
  try:
    result = train_lib.train_and_evaluate(config, FLAGS.data_dir, FLAGS.model_dir, batch_log_path=FLAGS.batch_log,
                                          worker_weights_dir=FLAGS.worker_weights_dir)
  except errors.InputError as e:
    print(f"boneage-train: {e}", file=sys.stderr)
    sys.exit(2)
  if result.preempted:
    logging.warning("preempted at step %d; rerun the same command to continue", result.steps)
    sys.exit(train_lib.checkpointing.PreemptionWatcher.PREEMPTED_EXIT_CODE)
  final = result.final_validation
  print(f"final validation MAE {final.get('mae_months', float('nan')):.2f} months, best "
        f"{result.best_validation_mae_months:.2f} months at step {result.best_step}; export: {result.export_dir}")


def main(argv=None):
  app.run(_main, argv=argv)


if __name__ == "__main__":
  main()
