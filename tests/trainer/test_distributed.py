"""mirrored (2 logical CPUs) and 2-worker MultiWorkerMirrored on localhost: train, agree, checkpoint once."""

import json
import os
import subprocess
import sys

import numpy as np

OVERRIDES = ("train.train_steps=6", "train.eval_every_steps=3")


def load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_mirrored_on_two_logical_cpus_keeps_replicas_identical(phantom_data_dir, tmp_path, trainer_helpers):
  model_dir = tmp_path / "run"
  result = trainer_helpers.run_trainer(trainer_helpers.trainer_command(
      phantom_data_dir, model_dir, "--strategy=mirrored", "--num_cpu_devices=2",
      f"--worker_weights_dir={tmp_path / 'weights'}", overrides=OVERRIDES))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 replica(s)" in result.stderr
  weights = load(tmp_path / "weights" / "worker_0.npz")
  copies = [k for k in weights if k.startswith("replica1/")]
  assert copies and len(copies) * 2 == len(weights)  # every variable mirrored on both replicas
  for key in copies:
    np.testing.assert_array_equal(weights[key], weights[key.split("/", 1)[1]], err_msg=key)
  assert (model_dir / "checkpoints" / "ckpt-6.index").exists()
  assert (model_dir / "export" / "export_metadata.json").exists()


def test_two_workers_on_localhost_train_identically_with_chief_only_checkpoints(phantom_data_dir, tmp_path,
                                                                               trainer_helpers):
  model_dir, scratch = tmp_path / "run", tmp_path / "tmp"
  scratch.mkdir()
  args = trainer_helpers.trainer_command(phantom_data_dir, model_dir, "--strategy=multi_worker",
                                         f"--worker_weights_dir={tmp_path / 'weights'}", overrides=OVERRIDES)[3:]
  launcher = [sys.executable, "-m", "launch.local_multiworker", "--num_workers=2", f"--log_dir={tmp_path / 'logs'}",
              "--timeout_s=240", "--", *args]
  result = subprocess.run(launcher, cwd=trainer_helpers.REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=trainer_helpers.subprocess_env(TMPDIR=str(scratch), TF_NUM_INTRAOP_THREADS="1"),
                          check=False)
  logs = {i: (tmp_path / "logs" / f"worker_{i}.log").read_text() for i in (0, 1)}
  assert result.returncode == 0, logs[0][-2000:] + logs[1][-2000:]
  assert "chief=True" in logs[0] and "chief=False" in logs[1]
  assert all("on 2 replica(s)" in log for log in logs.values())

  chief, other = load(tmp_path / "weights" / "worker_0.npz"), load(tmp_path / "weights" / "worker_1.npz")
  assert chief.keys() == other.keys() and len(chief) > 10
  for key in chief:
    np.testing.assert_array_equal(chief[key], other[key], err_msg=key)

  # Checkpoints only from the chief, in the model dir; the other worker's scratch copies are gone.
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == [
      "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index", "ckpt-6.data-00000-of-00001", "ckpt-6.index"]
  assert not [p for p in scratch.rglob("*") if "boneage_worker_ckpt" in str(p)]
  assert json.loads((model_dir / "training_summary.json").read_text())["steps"] == 6
  assert (model_dir / "export" / "model.keras").exists()


def test_launcher_gives_each_worker_its_own_tf_config():
  from launch import local_multiworker  # pylint: disable=g-import-not-at-top
  tf_configs = local_multiworker.tf_configs(3)
  workers = tf_configs[0]["cluster"]["worker"]
  assert len(set(workers)) == 3 and all(c["cluster"]["worker"] == workers for c in tf_configs)
  assert [c["task"] for c in tf_configs] == [{"type": "worker", "index": i} for i in range(3)]
