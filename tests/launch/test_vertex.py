"""boneage-launch vertex-train: the printed CustomJobSpec and gcloud command for each mode."""

import ast
import importlib.util
import json
import os
import pathlib
import shlex
import signal
import subprocess
import time

import pytest
import yaml

from launch import cli
from launch import common
from launch import vertex

JOB = ["--project=bone-proj", "--region=us-central1",
       "--image_uri=us-central1-docker.pkg.dev/bone-proj/boneage/trainer:1",
       "--data_dir=gs://bone-bucket/tfds", "--model_dir=gs://bone-bucket/models/run1", "--experiment=xception_384"]


def _dry_run(capsys, argv: list[str]) -> tuple[dict, list[str]]:
  """Returns (spec, gcloud argv) from the dry-run output: the JSON spec, then the command line."""
  assert cli.main(["boneage-launch", "vertex-train", *JOB, *argv, "--dry_run"]) == 0
  out = capsys.readouterr().out
  spec, end = json.JSONDecoder().raw_decode(out)
  # gcloud reads --config as YAML; the printed JSON is the same document.
  assert yaml.safe_load(out[:end]) == spec
  command_lines = out[end:].strip().splitlines()
  assert len(command_lines) == 1
  return spec, shlex.split(command_lines[0])


def _keys(value):
  if isinstance(value, dict):
    for key, item in value.items():
      yield key
      yield from _keys(item)
  elif isinstance(value, list):
    for item in value:
      yield from _keys(item)


def _check_common(spec: dict, gcloud: list[str]) -> None:
  assert gcloud[:4] == ["gcloud", "ai", "custom-jobs", "create"]
  assert "--project=bone-proj" in gcloud and "--region=us-central1" in gcloud
  assert "--config=vertex_custom_job.yaml" in gcloud
  assert any(arg.startswith("--display-name=") for arg in gcloud)
  assert not [key for key in _keys(spec) if "_" in key], "gcloud --config rejects keys with underscores"
  for pool in spec["workerPoolSpecs"]:
    container = pool["containerSpec"]
    assert container["imageUri"] == "us-central1-docker.pkg.dev/bone-proj/boneage/trainer:1"
    assert container["command"] == vertex.container_command(vertex.VertexTrainJob("single_gpu", None, None, None, None))
    assert container["command"][:2] == ["bash", "-c"] and container["command"][-1] == "boneage-train"
    assert "--data_dir=gs://bone-bucket/tfds" in container["args"]
    assert "--model_dir=gs://bone-bucket/models/run1" in container["args"]
    assert "--experiment=xception_384" in container["args"]
    assert pool["machineSpec"]["machineType"]
  # A restarted worker restarts the whole job, whose replicas resume from --model_dir.
  assert spec["scheduling"]["restartJobOnWorkerRestart"] is True


def test_single_gpu(capsys):
  spec, gcloud = _dry_run(capsys, ["--mode=single_gpu", "--config_override=train.epochs=20"])
  _check_common(spec, gcloud)
  (pool,) = spec["workerPoolSpecs"]
  assert pool["replicaCount"] == 1
  assert pool["machineSpec"] == {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4",
                                 "acceleratorCount": 1}
  args = pool["containerSpec"]["args"]
  assert "--strategy=default" in args and "--precision=mixed_float16" in args
  assert "--config_override=train.epochs=20" in args
  assert not any(arg.startswith("--tpu") for arg in args)


def test_multi_gpu_mirrors_over_the_gpus_of_one_machine(capsys):
  spec, gcloud = _dry_run(capsys, ["--mode=multi_gpu", "--machine_type=a2-highgpu-4g",
                                   "--accelerator_type=NVIDIA_TESLA_A100", "--accelerator_count=4",
                                   "--precision=mixed_bfloat16", "--display_name=boneage-a100"])
  _check_common(spec, gcloud)
  assert "--display-name=boneage-a100" in gcloud
  (pool,) = spec["workerPoolSpecs"]
  assert pool["replicaCount"] == 1
  assert pool["machineSpec"] == {"machineType": "a2-highgpu-4g", "acceleratorType": "NVIDIA_TESLA_A100",
                                 "acceleratorCount": 4}
  assert "--strategy=mirrored" in pool["containerSpec"]["args"]
  assert "--precision=mixed_bfloat16" in pool["containerSpec"]["args"]


def test_multi_worker_pools_form_a_tf_config_cluster(capsys):
  """Pool 0 is the single chief and pool 1 the other workers: Vertex AI's TF_CONFIG for MWMS."""
  spec, gcloud = _dry_run(capsys, ["--mode=multi_worker", "--replica_count=4"])
  _check_common(spec, gcloud)
  chief, workers = spec["workerPoolSpecs"]
  assert chief["replicaCount"] == 1 and workers["replicaCount"] == 3
  # Every replica runs the same program on the same machine; only its TF_CONFIG task differs.
  assert chief["machineSpec"] == workers["machineSpec"]
  assert chief["containerSpec"] == workers["containerSpec"]
  assert "--strategy=multi_worker" in chief["containerSpec"]["args"]
  # No parameter-server (pool 2) or evaluator (pool 3) tasks: MWMS all-reduces among chief + workers.
  assert len(spec["workerPoolSpecs"]) == 2


def test_tpu_v5e(capsys):
  spec, gcloud = _dry_run(capsys, ["--mode=tpu"])
  _check_common(spec, gcloud)
  (pool,) = spec["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "2x2"}
  assert pool["replicaCount"] == 1
  args = pool["containerSpec"]["args"]
  assert "--strategy=tpu" in args and "--tpu=local" in args and "--precision=mixed_bfloat16" in args


def test_tpu_v3_host(capsys):
  spec, _ = _dry_run(capsys, ["--mode=tpu", "--machine_type=cloud-tpu", "--accelerator_type=TPU_V3"])
  assert spec["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "cloud-tpu", "acceleratorType": "TPU_V3",
                                                       "acceleratorCount": 8}


def test_sdk_dicts_use_the_proto_field_names():
  job = vertex.VertexTrainJob(mode="multi_worker", image_uri="img", data_dir="gs://b/d", model_dir="gs://b/m",
                              experiment="e", replica_count=2, service_account="sa@p.iam.gserviceaccount.com")
  spec = vertex.custom_job_spec(job)
  assert spec["serviceAccount"] == "sa@p.iam.gserviceaccount.com"
  pools = vertex.to_sdk_dicts(spec["workerPoolSpecs"])
  assert pools[0]["machine_spec"] == {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                                      "accelerator_count": 1}
  assert pools[1]["replica_count"] == 1
  assert pools[0]["container_spec"]["image_uri"] == "img"


def test_submit_without_the_sdk_names_the_gcp_extra(capsys):
  if importlib.util.find_spec("google.cloud.aiplatform") is not None:
    pytest.skip("google-cloud-aiplatform is installed: --submit would contact Vertex AI")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", "vertex-train", *JOB, "--submit", "--staging_bucket=gs://bone-bucket"])
  assert exit_info.value.code == 2
  assert "pip install '.[gcp]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--project=p", "--region=r", "--data_dir=gs://b/d", "--model_dir=gs://b/m", "--experiment=e"],
     "--image_uri is required"),
    (["--project=p", "--region=r", "--image_uri=i", "--data_dir=gs://b/d", "--model_dir=./models",
      "--experiment=e"], "--model_dir must be a gs:// URI or a /gcs/ FUSE path"),
    (["--region=r", "--image_uri=i", "--data_dir=gs://b/d", "--model_dir=gs://b/m", "--experiment=e"],
     "--project is required"),
    ([*JOB, "--mode=multi_gpu", "--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_TESLA_T4",
      "--accelerator_count=1"], "--accelerator_count must be at least 2"),
    ([*JOB, "--mode=multi_worker", "--replica_count=1"], "needs --replica_count of at least 2"),
    ([*JOB, "--mode=single_gpu", "--replica_count=3"], "--replica_count must be 1"),
    ([*JOB, "--mode=single_gpu", "--accelerator_count=2"], "g2-standard-8 has exactly 1 L4 GPU"),
    ([*JOB, "--mode=single_gpu", "--accelerator_type=TPU_V3"], "must be an NVIDIA_* GPU type"),
    ([*JOB, "--mode=tpu", "--tpu_topology=4x4"], "would span several hosts"),
    ([*JOB, "--mode=tpu", "--machine_type=n1-standard-8"], "ct5lp-hightpu-1t/4t/8t"),
    ([*JOB, "--config_override=epochs"], "--config_override must be key=value"),
    ([*JOB, "--max_wait_hours=2"], "--max_wait_hours applies to --scheduling_strategy=FLEX_START only"),
    ([*JOB, "--scheduling_strategy=FLEX_START", "--max_wait_hours=0"], "--max_wait_hours must be more than 0"),
    ([*JOB, "--steps_per_loop=0"], "--steps_per_loop must be at least 1"),
    ([*JOB, "--per_replica_batch_size=-8"], "--per_replica_batch_size must be at least 1"),
    ([*JOB, "--max_restarts=0"], "--max_restarts must be at least 1"),
])
def test_unusable_parameters_fail_with_the_flag_named(capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", "vertex-train", *argv, "--dry_run"])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert message in captured.err
  assert captured.out == ""


def test_without_dry_run_the_spec_is_saved_for_gcloud(capsys, monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud: the job cannot be created from a test
  config_file = tmp_path / "job.yaml"
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", "vertex-train", *JOB, "--mode=multi_worker", f"--config_file={config_file}"])
  assert exit_info.value.code == 2
  assert "gcloud not found on PATH" in capsys.readouterr().err
  saved = yaml.safe_load(config_file.read_text())
  assert [pool["replicaCount"] for pool in saved["workerPoolSpecs"]] == [1, 1]
  assert saved["workerPoolSpecs"][0]["containerSpec"]["command"][-1] == "boneage-train"
  assert saved["scheduling"] == {"restartJobOnWorkerRestart": True}


def test_multi_worker_tpu_spot_scheduling_and_scaling_flags(capsys):
  """Spot workers, a per-replica batch and steps per loop reach every replica's trainer flags."""
  spec, _ = _dry_run(capsys, ["--mode=multi_worker", "--replica_count=4", "--scheduling_strategy=SPOT",
                              "--per_replica_batch_size=32", "--steps_per_loop=100", "--timeout_hours=48"])
  assert spec["scheduling"] == {"restartJobOnWorkerRestart": True, "strategy": "SPOT", "timeout": "172800s"}
  for pool in spec["workerPoolSpecs"]:
    args = pool["containerSpec"]["args"]
    assert args[-2:] == ["--config_override=data.per_replica_batch_size=32",
                         "--config_override=train.steps_per_loop=100"]
  tpu, _ = _dry_run(capsys, ["--mode=tpu", "--scheduling_strategy=FLEX_START", "--max_wait_hours=1.5",
                             "--steps_per_loop=200", "--config_override=train.epochs=30"])
  assert tpu["scheduling"] == {"restartJobOnWorkerRestart": True, "strategy": "FLEX_START",
                               "maxWaitDuration": "5400s"}
  # Explicit overrides come after the scaling flags, so they win.
  assert tpu["workerPoolSpecs"][0]["containerSpec"]["args"][-2:] == [
      "--config_override=train.steps_per_loop=200", "--config_override=train.epochs=30"]


def test_launch_and_trainer_agree_on_the_preemption_exit_code():
  """Read from the trainer's source: importing it would import TensorFlow, which launch never needs."""
  source = (pathlib.Path(__file__).resolve().parents[2] / "trainer" / "checkpointing.py").read_text()
  (value,) = [node.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
              and [getattr(t, "id", None) for t in node.targets] == ["PREEMPTED_EXIT_CODE"]]
  assert common.PREEMPTED_EXIT_CODE == ast.literal_eval(value)


# The container command runs for real below, with a stand-in boneage-train on PATH
# that exits with the statuses listed in its EXIT_CODES file, one per run.
FAKE_TRAINER = """#!/bin/bash
echo "run $*" >> "$RUN_LOG"
codes=($(cat "$EXIT_CODES")); echo "${codes[@]:1}" > "$EXIT_CODES"
if [ "${codes[0]}" = wait ]; then
  trap 'echo "trainer got TERM" >> "$RUN_LOG"; exit 143' TERM
  touch "$RUN_LOG.ready"; while true; do sleep 0.1; done
fi
exit "${codes[0]}"
"""


def _container(tmp_path, exit_codes: list, max_restarts: int = 3) -> tuple[list[str], dict]:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  trainer = bin_dir / "boneage-train"
  trainer.write_text(FAKE_TRAINER)
  trainer.chmod(0o755)
  (tmp_path / "codes").write_text(" ".join(map(str, exit_codes)))
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUN_LOG": str(tmp_path / "runs"),
         "EXIT_CODES": str(tmp_path / "codes")}
  job = vertex.VertexTrainJob(mode="single_gpu", image_uri="img", data_dir="gs://b/d", model_dir="gs://b/m",
                              experiment="e", max_restarts=max_restarts)
  spec = vertex.custom_job_spec(job)
  container = spec["workerPoolSpecs"][0]["containerSpec"]
  return [*container["command"], *container["args"]], env


def _runs(tmp_path) -> list[str]:
  return (tmp_path / "runs").read_text().splitlines()


def test_container_reruns_the_trainer_after_preemption_exits(tmp_path):
  command, env = _container(tmp_path, [143, 143, 0])
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
  assert result.returncode == 0
  runs = _runs(tmp_path)
  assert len(runs) == 3 and all("--model_dir=gs://b/m" in run for run in runs)
  assert "exited 143 (preempted); rerun 2 of 3" in result.stderr


@pytest.mark.parametrize("exit_code", [1, 3])
def test_container_does_not_rerun_other_failures(tmp_path, exit_code):
  """A crash (1) or unreadable checkpoints (the trainer's 3) end the job with that status: no blind retries."""
  command, env = _container(tmp_path, [exit_code, 0])
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
  assert result.returncode == exit_code
  assert len(_runs(tmp_path)) == 1


def test_container_gives_up_after_max_restarts(tmp_path):
  command, env = _container(tmp_path, [143] * 5, max_restarts=2)
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
  assert result.returncode == 143
  assert len(_runs(tmp_path)) == 3
  assert "again after 2 reruns; giving up" in result.stderr


def test_sigterm_to_the_container_reaches_the_trainer_and_is_not_rerun(tmp_path):
  """Vertex AI stops a container with SIGTERM: the trainer must get it (to checkpoint), and not be rerun."""
  command, env = _container(tmp_path, ["wait", 0])
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 20
    while not (tmp_path / "runs.ready").exists():
      assert time.monotonic() < deadline, "the stand-in trainer never started"
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 143
  assert _runs(tmp_path)[1:] == ["trainer got TERM"]
