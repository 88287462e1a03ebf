"""Exact-resume checkpoints, damaged-checkpoint fallback, chief-only writes, and preemption (SIGTERM).

A checkpoint holds everything the next step depends on: model weights,
optimizer slots and iteration count, the global step, the dropout RNG
states (Keras SeedGenerators, which a Keras model does not checkpoint
itself) and the schedule's state. The input position is not stored as a
tf.data iterator: the training stream is a pure function of the seed, so
every worker rebuilds its own shard of it at the restored step
(input_pipeline). Restoring and continuing consumes exactly the batches an
uninterrupted run would have consumed.

Damaged checkpoints: restore tries the newest checkpoint first and, if its
files cannot be read (truncated data or index file, missing shard), logs a
warning naming the file and falls back to the next older one. If checkpoints
exist but none is readable it raises CheckpointError: a run never silently
restarts from scratch over a directory that holds training state.

Chief-only writes, the standard MultiWorkerMirrored pattern: every worker
calls `save` (saving may need every worker), but only the chief writes to
<model_dir>/checkpoints; the others write to a private temporary directory
that is removed right away.
"""

import os
import shutil
import signal
import tempfile

from absl import logging
import tensorflow as tf

CHECKPOINT_SUBDIR = "checkpoints"
# Exit status after a preemption checkpoint: "restart me with the same command".
# 143 (128 + SIGTERM) is also what TensorFlow's own preemption handling exits with
# on GCE (failure_handling_util.gce_exit_fn), so schedulers treat it alike.
PREEMPTED_EXIT_CODE = 143
# Exit status when checkpoints exist but none can be read (do not retry blindly).
UNREADABLE_CHECKPOINT_EXIT_CODE = 3


# What reading a damaged checkpoint raises: TensorFlow errors for a bad index or
# missing shard, IndexError ("Read less bytes than requested") for a truncated
# data file, ValueError/AssertionError when objects do not match.
_READ_ERRORS = (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError)


class CheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class ChiefOnlyManager:
  """tf.train.CheckpointManager that only the chief keeps."""

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, chief: bool, max_to_keep: int):
    self._chief = chief
    self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    self._checkpoint = checkpoint
    self._manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=max_to_keep)

  @property
  def latest_checkpoint(self) -> str | None:
    return self._manager.latest_checkpoint

  def restore_latest(self) -> str | None:
    """Restores the newest READABLE checkpoint (every worker reads the chief's); returns its path or None.

    Raises:
      CheckpointError: naming every file tried, if checkpoints exist and none restores.
    """
    candidates = list(reversed(self._manager.checkpoints))
    failures = []
    for path in candidates:
      try:
        self._checkpoint.restore(path).assert_existing_objects_matched()
      except _READ_ERRORS as e:
        damaged = _damaged_file(path)
        logging.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", damaged,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        failures.append(damaged)
        continue
      logging.info("restored %s", path)
      if failures:
        logging.warning("resumed from %s, the newest readable checkpoint (skipped: %s)", path, ", ".join(failures))
      return path
    if failures:
      raise CheckpointError(f"no readable checkpoint in {self.directory}: tried {', '.join(failures)}; move the "
                            "damaged files away to start over, or restore them from a backup")
    return None

  def save(self, step: int) -> str:
    if self._chief:
      return self._manager.save(checkpoint_number=step)
    scratch = tempfile.mkdtemp(prefix="boneage_worker_ckpt_")
    try:
      return tf.train.CheckpointManager(self._checkpoint, scratch, max_to_keep=1).save(checkpoint_number=step)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)


def _damaged_file(prefix: str) -> str:
  """The first file of a checkpoint that fails a read-through (else the checkpoint prefix)."""
  index = prefix + ".index"
  try:
    reader = tf.train.load_checkpoint(prefix)
  except _READ_ERRORS:
    return index
  for name in reader.get_variable_to_shape_map():
    try:
      reader.get_tensor(name)
    except _READ_ERRORS:
      data = tf.io.gfile.glob(prefix + ".data-*")
      return ", ".join(data) or prefix
  return prefix


class PreemptionWatcher:
  """Turns SIGTERM into a flag the training loop checks at each step boundary.

  The loop then checkpoints and exits with PREEMPTED_EXIT_CODE, so a
  scheduler (or a human) can rerun the same command to continue. The flag is
  all-reduced inside the step, so every worker stops at the same step even
  if only one was signalled.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: will checkpoint at the next step boundary and exit")
    self.requested = True

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a test harness): no handler, no preemption support.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
