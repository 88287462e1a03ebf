"""Test-only hooks into the trainer: callbacks, and an entry point that adds them as flags.

The production command (trainer.train_main) has no test flags. Tests that
run the trainer in a subprocess (multi-worker, kill-and-resume) use this
module instead, as a script: `python tests/trainer/trainer_hooks.py
<boneage-train flags> [--batch_log=...] [--worker_weights_dir=...]
[--validation_log=...] [--num_cpu_devices=N]`. In-process tests import the
callbacks directly and pass them to train_lib.train_and_evaluate.
"""

import json
import os
import pathlib
import sys

if __name__ == "__main__":  # run as a script: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from absl import flags  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from trainer import train_lib  # pylint: disable=wrong-import-position


class BatchLog(train_lib.Callback):
  """Appends "step<TAB>positions<TAB>ids" for every step: the chief to `path`, worker i to <path>.worker<i>."""
  wants_batch_keys = True

  def __init__(self, path: str):
    self.path = path

  def on_loop_end(self, trainer, records):
    path = self.path if trainer.chief else f"{self.path}.worker{trainer.worker_id}"
    with open(path, "a", encoding="utf-8") as f:
      for step, positions, ids in records:
        f.write(f"{step}\t{','.join(str(i) for i in positions)}\t{','.join(ids)}\n")



def read_batch_log(path) -> list[tuple[int, list[int], list[str]]]:
  """BatchLog's file -> [(step, positions, ids)]."""
  rows = []
  for line in pathlib.Path(path).read_text().splitlines():
    step, positions, ids = line.split("\t")
    rows.append((int(step), [int(i) for i in positions.split(",")], ids.split(",")))
  return rows

class WorkerWeights(train_lib.Callback):
  """At the end, every worker saves every variable (each local replica's copy) as <dir>/<task>_<id>.npz.

  Keys are "<index>_<path>" for the first local replica's copy and
  "replica<k>/<index>_<path>" for the other local replicas' copies.
  """

  def __init__(self, directory: str):
    self.directory = directory

  def on_train_end(self, trainer, result):
    from trainer import distribution  # pylint: disable=g-import-not-at-top
    task_type, task_id = distribution.task(trainer.strategy)
    os.makedirs(self.directory, exist_ok=True)
    arrays = {}
    for i, variable in enumerate(trainer.model.variables):
      copies = getattr(variable.value, "values", None) or (variable.value,)
      for replica, copy in enumerate(copies):
        prefix = f"replica{replica}/" if replica else ""
        arrays[f"{prefix}{i:04d}_{variable.path}"] = np.asarray(copy.numpy())
    np.savez(os.path.join(self.directory, f"{task_type}_{task_id}.npz"), **arrays)


class ValidationLog(train_lib.Callback):
  """Every worker appends one JSON line per evaluation: step, metrics, learning rate after the decision, stop."""

  def __init__(self, path: str):
    self.path = path

  def on_validation(self, trainer, step, result, stop):
    path = self.path if trainer.chief else f"{self.path}.worker{trainer.worker_id}"
    record = {"step": step, "metrics": result, "stop": bool(stop),
              "learning_rate": train_lib.current_learning_rate(trainer.optimizer),
              "plateau_lr_scale": float(trainer.schedule.learning_rate.scale.numpy()),
              "best_val_loss": float(trainer.schedule.best_val_loss.numpy())}
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(train_lib.strict_json(record)) + "\n")


def _define_flags():
  flags.DEFINE_string("batch_log", None, "BatchLog path.")
  flags.DEFINE_string("worker_weights_dir", None, "WorkerWeights directory.")
  flags.DEFINE_string("validation_log", None, "ValidationLog path.")
  flags.DEFINE_integer("num_cpu_devices", 0, "Split the host CPU into N logical devices (mirrored on CPU).")


def _main(argv):
  from bone_age import cli  # pylint: disable=g-import-not-at-top
  from trainer import train_main  # pylint: disable=g-import-not-at-top
  cli.quiet_start(argv)  # the console set-up boneage-train's main makes: progress and INFO lines on stderr
  # The hooks' own flags are global; the rest of the command line is boneage-train's.
  config = train_main.config_from_flags(flags.FLAGS(argv, known_only=True))
  if config is None:
    return
  if flags.FLAGS.num_cpu_devices:
    from trainer import distribution  # pylint: disable=g-import-not-at-top
    distribution.split_host_cpu(flags.FLAGS.num_cpu_devices)
  callbacks = []
  if flags.FLAGS.batch_log:
    callbacks.append(BatchLog(flags.FLAGS.batch_log))
  if flags.FLAGS.worker_weights_dir:
    callbacks.append(WorkerWeights(flags.FLAGS.worker_weights_dir))
  if flags.FLAGS.validation_log:
    callbacks.append(ValidationLog(flags.FLAGS.validation_log))
  sys.exit(train_main.train(config, callbacks))


if __name__ == "__main__":
  from trainer import train_main as _train_main  # noqa: F401  (defines boneage-train's flags)  pylint: disable=g-import-not-at-top
  _define_flags()
  _main(sys.argv)
