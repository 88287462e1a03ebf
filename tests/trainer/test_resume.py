"""Exact resume: SIGKILL mid-run, SIGTERM (preemption), rerun the same command.

Every consumed batch is logged (step, example positions, ids). A killed and
restarted run must continue right after its last checkpoint, consume the
same batches as an uninterrupted run (none repeated, none skipped) and, with
--deterministic, end with bit-identical weights.
"""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

STEPS, CHECKPOINT_EVERY = 60, 10
OVERRIDES = (f"train.train_steps={STEPS}", f"train.checkpoint_every_steps={CHECKPOINT_EVERY}",
             "train.eval_every_steps=30", "augment.flip_left_right=true", "augment.rotation_max_deg=10")


def read_log(path) -> list[tuple[int, str, str]]:
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    step, indices, ids = line.split("\t")
    rows.append((int(step), indices, ids))
  return rows


def latest_checkpoint_step(model_dir) -> int:
  text = (model_dir / "checkpoints" / "checkpoint").read_text()
  return int(text.split('"')[1].rsplit("-", 1)[1])


def start(command, helpers):
  return subprocess.Popen(command, cwd=helpers.REPO_ROOT, env=helpers.subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def wait_for_step(process, log_path, step, timeout_s=180):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    rows = read_log(log_path)
    if rows and rows[-1][0] >= step:
      return
    assert process.poll() is None, f"trainer exited early ({process.returncode}): {process.stderr.read()[-3000:]}"
    time.sleep(0.01)
  raise TimeoutError(f"step {step} not reached")


def load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_sigkill_and_sigterm_then_rerun_resume_exactly(phantom_data_dir, tmp_path, trainer_helpers):
  def command(name):
    return trainer_helpers.trainer_command(
        phantom_data_dir, tmp_path / name, "--deterministic", f"--batch_log={tmp_path / (name + '.log')}",
        f"--worker_weights_dir={tmp_path / (name + '_weights')}", overrides=OVERRIDES, hooks=True)

  reference = start(command("reference"), trainer_helpers)  # uninterrupted, runs alongside
  interrupted_log = tmp_path / "interrupted.log"

  # 1. SIGKILL once the first checkpoint exists (the batch log is past it).
  victim = start(command("interrupted"), trainer_helpers)
  wait_for_step(victim, interrupted_log, CHECKPOINT_EVERY + 2)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  killed_at = read_log(interrupted_log)[-1][0]
  resumed_from = latest_checkpoint_step(tmp_path / "interrupted")
  assert CHECKPOINT_EVERY <= resumed_from <= killed_at < STEPS, (resumed_from, killed_at)

  # 2. Rerun the same command; preempt it with SIGTERM a few steps later.
  rows_before = len(read_log(interrupted_log))
  second = start(command("interrupted"), trainer_helpers)
  deadline = time.monotonic() + 180
  while len(read_log(interrupted_log)) < rows_before + 3:
    assert second.poll() is None, second.stderr.read()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.01)
  second.send_signal(signal.SIGTERM)
  assert second.wait(timeout=120) == 143, second.stderr.read()[-3000:]
  second_rows = read_log(interrupted_log)[rows_before:]
  assert second_rows[0][0] == resumed_from + 1  # continued right after the checkpoint
  preempted_at = second_rows[-1][0]
  assert latest_checkpoint_step(tmp_path / "interrupted") == preempted_at  # saved at the step boundary
  assert preempted_at < STEPS

  # 3. Rerun again: finishes.
  rows_before = len(read_log(interrupted_log))
  third = trainer_helpers.run_trainer(command("interrupted"))
  assert third.returncode == 0, third.stderr[-3000:]
  third_rows = read_log(interrupted_log)[rows_before:]
  assert third_rows[0][0] == preempted_at + 1 and third_rows[-1][0] == STEPS

  assert reference.wait(timeout=240) == 0, reference.stderr.read()[-3000:]
  expected = read_log(tmp_path / "reference.log")
  assert [r[0] for r in expected] == list(range(1, STEPS + 1))
  # What the model actually trained on: the first run up to its checkpoint, then each rerun.
  first_rows = read_log(interrupted_log)[:killed_at]
  consumed = [r for r in first_rows if r[0] <= resumed_from] + second_rows + third_rows
  assert consumed == expected  # same steps, same example positions and ids: none repeated, none skipped
  # Steps redone after the kill saw the same batches as before it.
  assert [r for r in first_rows if r[0] > resumed_from] == [r for r in expected if resumed_from < r[0] <= killed_at]

  final, uninterrupted = load(tmp_path / "interrupted_weights" / "worker_0.npz"), load(
      tmp_path / "reference_weights" / "worker_0.npz")
  assert final.keys() == uninterrupted.keys()
  for key in final:
    np.testing.assert_array_equal(final[key], uninterrupted[key], err_msg=key)
