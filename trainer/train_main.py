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

from absl import flags
from absl import logging

from bone_age import cli
from trainer import configs
from trainer import experiments

_PROG = "boneage-train"
_USAGE = "--data_dir=TFDS_DIR --model_dir=RUN_DIR [--experiment=demo_cpu] [flags]"
_FLAG_GROUPS = (
    cli.FlagGroup("Data and run", ("data_dir", "model_dir")),
    cli.FlagGroup("Recipe", ("experiment", "config_override", "deterministic")),
    cli.FlagGroup("Hardware", ("strategy", "precision", "tpu")),
    cli.FlagGroup("Inspect", ("print_config", "num_replicas_for_print")),
)
# A private FlagValues: importing this module defines no global absl flags.
FLAGS = flags.FlagValues()
flags.DEFINE_string("data_dir", None, "TFDS data dir holding rsna_bone_age/<config>/<version>.", flag_values=FLAGS)
flags.DEFINE_string("model_dir", None, "Run directory: checkpoints/, logs/, config.json, export/.", flag_values=FLAGS)
flags.DEFINE_string("experiment", "demo_cpu", f"Named experiment: {experiments.names()}.", flag_values=FLAGS)
flags.DEFINE_multi_string("config_override", [], "section.field=value, repeatable (e.g. train.train_steps=100).",
                          flag_values=FLAGS)
flags.DEFINE_enum("strategy", "default", list(configs.STRATEGIES), "tf.distribute strategy.", flag_values=FLAGS)
flags.DEFINE_enum("precision", "float32", list(configs.PRECISIONS), "Keras dtype policy.", flag_values=FLAGS)
flags.DEFINE_string("tpu", "", "TPU name or grpc:// address for --strategy=tpu (default: this TPU VM).",
                    flag_values=FLAGS)
flags.DEFINE_bool("deterministic", False, "Op determinism + seeds: reruns and resumes give identical weights.",
                  flag_values=FLAGS)
flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit without training.",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_replicas_for_print", 1, "With --print_config: the replica count to resolve the batch "
                     "and learning rate for (training uses the strategy's).", lower_bound=1, flag_values=FLAGS)


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
  final_mae = final.get("mae_months")
  final_text = "not measured" if final_mae is None else f"{final_mae:.1f} months"
  print(f"final validation MAE {final_text}, best {result.best_validation_mae_months:.1f} months at step "
        f"{result.best_step}; export: {result.export_dir}")
  return 0


def config_from_flags(argv) -> configs.ExperimentConfig | None:
  """Parses argv (a full command line); the resolved config, or None after --print_config printed it.

  Raises:
    cli.UsageError: a missing, unknown or bad flag, or a bad --config_override.
  """
  cli.parse(_PROG, _USAGE, FLAGS, argv, _FLAG_GROUPS, required=("data_dir", "model_dir"))
  try:
    config = resolved_config()
    if FLAGS.print_config:
      from trainer import scaling  # pylint: disable=g-import-not-at-top
      print(configs.to_json(scaling.resolve(config, FLAGS.num_replicas_for_print)))
      return None
  except ValueError as e:
    raise cli.UsageError(str(e)) from e
  cli.require_path("data_dir", FLAGS.data_dir, "build the dataset first with boneage-preprocess")
  return config


def _main(argv: list[str]) -> int:
  config = config_from_flags(argv)
  if config is None:
    return 0
  cli.import_tensorflow_quietly(argv)
  return train(config)


def main(argv=None):
  """Console script `boneage-train` (argv: a full command line); exit status as the module docstring says."""
  argv = list(sys.argv if argv is None else argv)
  cli.quiet_start(argv)
  cli.run_main(_PROG, lambda: _main(argv), argv)


if __name__ == "__main__":
  main()
