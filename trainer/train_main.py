"""boneage-train: flags -> resolved config -> trainer.train_lib.train_and_evaluate.

  boneage-train --data_dir=DATA --model_dir=RUN --experiment=demo_cpu \
      [--config_override=train.train_steps=100 ...] --strategy=default|mirrored|multi_worker|tpu \
      --precision=float32|mixed_bfloat16|mixed_float16 [--tpu=NAME] [--deterministic]
  boneage-train ... --print_config [--num_replicas_for_print=8]

Rerunning the same command with the same --model_dir continues from the
newest readable checkpoint. Exit status:
  0    finished (export written)
  2    bad input or config (fix it; retrying will not help)
  3    checkpoints exist but none is readable (see the log; not retried)
  143  preempted (SIGTERM): a checkpoint was saved; rerun the same command
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
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit without training.")
flags.DEFINE_integer("num_replicas_for_print", 1, "With --print_config: the replica count to resolve the batch "
                     "and learning rate for (training uses the strategy's).", lower_bound=1)
flags.mark_flags_as_required(["data_dir", "model_dir"])


def resolved_config() -> configs.ExperimentConfig:
  """The experiment with --config_override and the runtime flags applied."""
  overrides = list(FLAGS.config_override) + [
      f"runtime.strategy={FLAGS.strategy}", f"runtime.precision={FLAGS.precision}", f"runtime.tpu={FLAGS.tpu}",
      f"runtime.deterministic={FLAGS.deterministic}"]
  return experiments.resolve(FLAGS.experiment, overrides)


def train(config: configs.ExperimentConfig, callbacks=()) -> int:
  """Trains with --data_dir/--model_dir; returns the process exit status (see the module docstring)."""
  # Heavy imports after flag validation, so --help and config errors are instant.
  from bone_age import errors  # pylint: disable=g-import-not-at-top
  from trainer import checkpointing  # pylint: disable=g-import-not-at-top
  from trainer import train_lib  # pylint: disable=g-import-not-at-top
  try:
    result = train_lib.train_and_evaluate(config, FLAGS.data_dir, FLAGS.model_dir, callbacks=callbacks)
  except errors.InputError as e:
    print(f"boneage-train: {e}", file=sys.stderr)
    return 2
  except checkpointing.CheckpointError as e:
    print(f"boneage-train: {e}", file=sys.stderr)
    return checkpointing.UNREADABLE_CHECKPOINT_EXIT_CODE
  if result.preempted:
    logging.warning("preempted at step %d; rerun the same command to continue", result.steps)
    return checkpointing.PREEMPTED_EXIT_CODE
  final = result.final_validation
  print(f"final validation MAE {final.get('mae_months')} months, best "
        f"{result.best_validation_mae_months:.2f} months at step {result.best_step}; export: {result.export_dir}")
  return 0


def config_from_flags(argv) -> configs.ExperimentConfig | None:
  """The resolved config, or None after --print_config printed it."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = resolved_config()
    if FLAGS.print_config:
      from trainer import scaling  # pylint: disable=g-import-not-at-top
      print(configs.to_json(scaling.resolve(config, FLAGS.num_replicas_for_print)))
      return None
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  return config


def _main(argv):
  config = config_from_flags(argv)
  if config is not None:
    sys.exit(train(config))


def main(argv=None):
  app.run(_main, argv=argv)


if __name__ == "__main__":
  main()
