"""Commands that run on this machine: TensorBoard, local multi-worker training, the TPU VM script.

They are built here as argv lists, like the cloud launchers, so `--dry_run`
prints exactly what would run.
"""

import pathlib
import sys

from launch import common

LAUNCH_DIR = pathlib.Path(__file__).resolve().parent
TPU_VM_SCRIPT = LAUNCH_DIR / "tpu_vm.sh"
LOCAL_MULTIWORKER = LAUNCH_DIR / "local_multiworker.py"


def tensorboard_command(model_dir: str | None, *, port: int = 6006, bind_all: bool = False) -> list[str]:
  """TensorBoard over <model_dir>/logs, where boneage-train writes train/ and validation/ runs.

  Args:
    model_dir: A local folder or gs:// URI (TensorFlow reads Cloud Storage directly).
    port: Local port to serve on.
    bind_all: Serve on every interface (e.g. from a VM), not just localhost.
  """
  model_dir = common.require(model_dir, "--model_dir", "the boneage-train model dir whose logs/ to show")
  if not 0 < port < 65536:
    raise common.LaunchError(f"--port must be between 1 and 65535; got {port}")
  command = ["tensorboard", f"--logdir={model_dir.rstrip('/')}/logs", f"--port={port}"]
  if bind_all:
    command.append("--bind_all")
  return command


def check_local_model_dir(model_dir: str) -> None:
  """Fails early when a local model dir has no logs/ yet (TensorBoard would show an empty page)."""
  if common.is_gcs(model_dir):
    return
  logs = pathlib.Path(model_dir) / "logs"
  if not logs.is_dir():
    raise common.LaunchError(f"--model_dir has no logs/ folder ({logs} not found): "
                             "has boneage-train started writing there?")


def local_multiworker_command(forwarded_args: list[str]) -> list[str]:
  """`python launch/local_multiworker.py ARGS...`: the training helper's local multi-worker runner.

  Its flags belong to that script, so they are forwarded untouched.

  Raises:
    LaunchError: The script is not in this checkout.
  """
  if not LOCAL_MULTIWORKER.is_file():
    raise common.LaunchError(f"{LOCAL_MULTIWORKER} is missing: local multi-worker training is provided by "
                             "the trainer's launch/local_multiworker.py, which this checkout does not have")
  return [sys.executable, str(LOCAL_MULTIWORKER), *forwarded_args]


def tpu_vm_command(*, project: str | None, zone: str | None, tpu_name: str | None, data_dir: str | None,
                   model_dir: str | None, experiment: str | None, accelerator_type: str = "v5litepod-8",
                   runtime_version: str = "v2-alpha-tpuv5-lite", precision: str = "mixed_bfloat16",
                   config_overrides: list[str] = (), source_dir: str = ".", python: str = "python3.11",
                   skip_create: bool = False, delete_after: bool = False, dry_run: bool = False) -> list[str]:
  """`bash launch/tpu_vm.sh ...`: create a TPU VM, install '.[tpu]' on every host, train with TPUStrategy.

  The same checks as the script run here first, so the CLI fails before bash does.
  """
  common.require(project, "--project", "the GCP project that owns the TPU VM")
  common.require(zone, "--zone", "a zone that offers the TPU type, e.g. us-west4-a for v5e")
  common.require(tpu_name, "--tpu_name", "the TPU VM to create or reuse")
  common.require_gcs(data_dir, "--data_dir", "the TPU hosts read the dataset there")
  common.require_gcs(model_dir, "--model_dir", "TPUs write checkpoints only to Cloud Storage")
  common.require(experiment, "--experiment", "the trainer's named experiment")
  common.require_choice(precision, "--precision", common.PRECISIONS)
  command = ["bash", str(TPU_VM_SCRIPT), f"--project={project}", f"--zone={zone}", f"--tpu_name={tpu_name}",
             f"--accelerator_type={accelerator_type}", f"--runtime_version={runtime_version}",
             f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--experiment={experiment}",
             f"--precision={precision}", f"--python={python}", f"--source_dir={source_dir}"]
  command += [f"--config_override={o}" for o in common.check_config_overrides(config_overrides)]
  if skip_create:
    command.append("--skip_create")
  if delete_after:
    command.append("--delete_after")
  if dry_run:
    command.append("--dry_run")
  return command
