"""mirrored (2 logical CPUs) and 2-worker MultiWorkerMirrored on localhost: train, agree, checkpoint once.

The 2-worker run evaluates the validation split sharded across both
workers: each logs its metrics and schedule decisions, which must be
identical and equal to a single-process evaluation of the exported model.

The 2-worker run also proves the input is sharded per worker: each worker
logs the rows it consumed, and per step the two halves are disjoint and
together make the global batch of the single-worker stream.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from trainer import experiments
from trainer_hooks import read_batch_log  # tests/trainer is on sys.path (conftest)
from trainer import input_pipeline as ip

OVERRIDES = ("train.train_steps=6", "train.eval_every_steps=3")
# The 2-worker run also exercises the plateau schedule and early stopping on every worker.
SCHEDULE_OVERRIDES = ("optimizer.schedule=plateau", "optimizer.plateau_patience=1", "optimizer.learning_rate=0.05",
                      "optimizer.early_stopping_patience=2", "train.eval_every_steps=2")


def load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_mirrored_on_two_logical_cpus_keeps_replicas_identical(phantom_data_dir, tmp_path, trainer_helpers):
  model_dir = tmp_path / "run"
  result = trainer_helpers.run_trainer(trainer_helpers.trainer_command(
      phantom_data_dir, model_dir, "--strategy=mirrored", "--num_cpu_devices=2",
      f"--worker_weights_dir={tmp_path / 'weights'}", overrides=OVERRIDES, hooks=True))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 replica(s)" in result.stderr
  weights = load(tmp_path / "weights" / "worker_0.npz")
  copies = [k for k in weights if k.startswith("replica1/")]
  assert copies and len(copies) * 2 == len(weights)  # every variable mirrored on both replicas
  for key in copies:
    np.testing.assert_array_equal(weights[key], weights[key.split("/", 1)[1]], err_msg=key)
  assert (model_dir / "checkpoints" / "ckpt-6.index").exists()
  assert (model_dir / "export" / "export_metadata.json").exists()


def single_process_validation(data_dir, model_dir, trainer_helpers) -> dict:
  """Metrics of the exported (final) model on the whole validation split, computed here with numpy."""
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import metrics  # pylint: disable=g-import-not-at-top
  from trainer import task  # pylint: disable=g-import-not-at-top
  config = experiments.resolve("demo_cpu", list(trainer_helpers.SMALL_OVERRIDES))
  model, _ = export.load_export(str(model_dir / "export"))
  builder = ip.load_builder(str(data_dir), config.data)
  batch = next(iter(ip.eval_dataset(builder, config, 64)))
  outputs = model({"image": batch[ip.IMAGE], "male": batch[ip.MALE][:, None]}, training=False)
  loss, _, _ = task.per_example_losses(outputs, batch[ip.BONEAGE], batch[ip.GROUP], config.loss)
  true, pred = batch[ip.BONEAGE].numpy(), outputs["boneage_months"].numpy()[:, 0]
  regression = metrics.regression_metrics(true, pred)
  groups = metrics.classification_metrics(batch[ip.GROUP].numpy(), outputs["age_group"].numpy().argmax(-1), 3)
  return {"loss": float(np.mean(loss)), "mae_months": regression["mae_months"],
          "rmse_months": regression["rmse_months"], "r2": regression["r2"], "group_accuracy": groups["group_accuracy"],
          "qwk": groups["qwk"], "count": 32}


def single_worker_batches(data_dir, trainer_helpers, steps: int) -> list[list[str]]:
  """The ids of each global batch of the one-worker stream (the trainer sets the same global seed)."""
  config = experiments.resolve("demo_cpu", list(trainer_helpers.SMALL_OVERRIDES) + list(OVERRIDES))
  keras.utils.set_random_seed(config.train.seed)
  builder = ip.load_builder(str(data_dir), config.data)
  return [[i.decode() for i in b[ip.ID].numpy()] for b in ip.train_dataset(builder, config, 64).take(steps)]


def test_two_workers_on_localhost_train_identically_on_sharded_input_with_chief_only_checkpoints(
    phantom_data_dir, tmp_path, trainer_helpers):
  model_dir, scratch = tmp_path / "run", tmp_path / "tmp"
  scratch.mkdir()
  args = trainer_helpers.trainer_command(phantom_data_dir, model_dir, "--strategy=multi_worker",
                                         f"--worker_weights_dir={tmp_path / 'weights'}",
                                         f"--batch_log={tmp_path / 'batches.log'}",
                                         f"--validation_log={tmp_path / 'validation.log'}",
                                         overrides=OVERRIDES + SCHEDULE_OVERRIDES, hooks=True)[2:]
  launcher = [sys.executable, "-m", "launch.local_multiworker", "--num_workers=2", f"--log_dir={tmp_path / 'logs'}",
              "--timeout_s=240", f"--entry={trainer_helpers.HOOKS_SCRIPT}", "--", *args]
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
      "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
      "ckpt-6.data-00000-of-00001", "ckpt-6.index"]
  assert not [p for p in scratch.rglob("*") if "boneage_worker_ckpt" in str(p)]
  summary = json.loads((model_dir / "training_summary.json").read_text())
  assert (model_dir / "export" / "model.keras").exists()

  # Distributed evaluation: identical metrics and decisions on both workers, equal to one process's evaluation.
  chief_evals = [json.loads(line) for line in (tmp_path / "validation.log").read_text().splitlines()]
  other_evals = [json.loads(line) for line in (tmp_path / "validation.log.worker1").read_text().splitlines()]
  assert chief_evals == other_evals and len(chief_evals) >= 1
  final = chief_evals[-1]
  assert final["step"] == summary["steps"] and final["metrics"] == summary["final_validation"]
  assert final["metrics"]["count"] == 32
  single = single_process_validation(phantom_data_dir, model_dir, trainer_helpers)
  for key, value in single.items():
    assert final["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

  # Sharded input: worker w consumed rows [4w, 4w + 4) of each global batch of 8, and nothing else.
  chief_rows, other_rows = read_batch_log(tmp_path / "batches.log"), read_batch_log(tmp_path / "batches.log.worker1")
  assert [r[0] for r in chief_rows] == [r[0] for r in other_rows] == list(range(1, 7))
  expected = single_worker_batches(phantom_data_dir, trainer_helpers, 6)
  for (step, chief_indices, chief_ids), (_, other_indices, other_ids) in zip(chief_rows, other_rows):
    assert chief_indices == list(range(8 * (step - 1), 8 * (step - 1) + 4))
    assert other_indices == list(range(8 * (step - 1) + 4, 8 * step))
    assert not set(chief_ids) & set(other_ids)
    assert chief_ids + other_ids == expected[step - 1]


def test_launcher_gives_each_worker_its_own_tf_config():
  from launch import local_multiworker  # pylint: disable=g-import-not-at-top
  tf_configs = local_multiworker.tf_configs(3)
  workers = tf_configs[0]["cluster"]["worker"]
  assert len(set(workers)) == 3 and all(c["cluster"]["worker"] == workers for c in tf_configs)
  assert [c["task"] for c in tf_configs] == [{"type": "worker", "index": i} for i in range(3)]
