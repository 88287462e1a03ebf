"""launch/tpu_vm.sh and `boneage-launch tpu-vm`: the dry run prints the gcloud lines it would run."""

import pathlib
import shlex
import subprocess

import pytest

from launch import cli
from launch import local

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "launch" / "tpu_vm.sh"
TPU = ["--project=bone-proj", "--zone=us-west4-a", "--tpu_name=boneage-v5e", "--data_dir=gs://bone-bucket/tfds",
       "--model_dir=gs://bone-bucket/models/tpu1", "--experiment=xception_384"]


def _script(*argv: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, check=False,
                        cwd=REPO_ROOT, timeout=30)


def _remote_command(line: list[str]) -> list[str]:
  (command,) = [arg for arg in line if arg.startswith("--command=")]
  return shlex.split(command[len("--command="):])


def _lines(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.strip().splitlines()]


def test_cli_dry_run_prints_create_install_and_train(capsys):
  status = cli.main(["tpu-vm", *TPU, f"--source_dir={REPO_ROOT}", "--config_override=train.epochs=30",
                     "--config_override=run.note=it's a test", "--dry_run"])
  assert status == 0
  lines = _lines(capsys.readouterr().out)
  create, tar, scp, install, train = lines
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert create[5] == "boneage-v5e"
  assert {"--project=bone-proj", "--zone=us-west4-a", "--accelerator-type=v5litepod-8",
          "--version=v2-alpha-tpuv5-lite"} <= set(create)
  assert tar[0] == "tar" and str(REPO_ROOT) in tar
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "boneage-v5e"]
  assert "--worker=all" in install
  install_script = " ".join(_remote_command(install))
  assert "pip install .[tpu] -f https://storage.googleapis.com/libtpu-tf-releases/index.html" in install_script
  assert "--worker=all" in train
  remote = _remote_command(train)
  program = next(word for word in remote if word.endswith("/boneage-train"))
  train_args = remote[remote.index(program) + 1:]
  assert {"--strategy=tpu", "--tpu=local", "--precision=mixed_bfloat16", "--data_dir=gs://bone-bucket/tfds",
          "--model_dir=gs://bone-bucket/models/tpu1", "--experiment=xception_384",
          "--config_override=train.epochs=30", "--config_override=run.note=it's a test"} == set(train_args)


def test_pod_slice_trains_from_worker_0_with_the_tpu_name():
  result = _script(*TPU, "--accelerator_type=v4-32", "--runtime_version=tpu-ubuntu2204-base", "--skip_create",
                   "--delete_after", "--dry_run")
  assert result.returncode == 0, result.stderr
  lines = _lines(result.stdout)
  assert not any(line[4] == "create" for line in lines if line[0] == "gcloud"), "--skip_create reuses the VM"
  assert lines[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "boneage-v5e"]
  train = lines[-2]
  assert "--worker=0" in train
  remote = _remote_command(train)
  assert "TPU_LOAD_LIBRARY=0" in remote
  assert "--tpu=boneage-v5e" in remote and "--tpu=local" not in remote


@pytest.mark.parametrize("drop, message", [
    ("--project=bone-proj", "--project is required"),
    ("--zone=us-west4-a", "--zone is required"),
    ("--model_dir=gs://bone-bucket/models/tpu1", "--model_dir must be a gs:// URI"),
])
def test_script_refuses_missing_parameters(drop, message):
  result = _script(*[arg for arg in TPU if arg != drop], "--dry_run")
  assert result.returncode == 2
  assert message in result.stderr
  assert result.stdout == ""


def test_script_rejects_unknown_flags_and_bad_overrides():
  unknown = _script(*TPU, "--accelerator=v4-8", "--dry_run")
  assert unknown.returncode == 2 and "unknown argument: --accelerator=v4-8" in unknown.stderr
  override = _script(*TPU, "--config_override=epochs", "--dry_run")
  assert override.returncode == 2 and "--config_override must be key=value" in override.stderr


def test_cli_checks_before_calling_bash(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["tpu-vm", *TPU[1:], "--dry_run"])
  assert exit_info.value.code == 2
  assert "--project is required" in capsys.readouterr().err


def test_script_is_shipped_executable():
  assert local.TPU_VM_SCRIPT == SCRIPT
  assert SCRIPT.stat().st_mode & 0o111


def test_remote_commands_are_valid_bash():
  result = _script(*TPU, "--config_override=run.note=it's a test", "--dry_run")
  assert result.returncode == 0, result.stderr
  for line in _lines(result.stdout):
    remote = [arg for arg in line if arg.startswith("--command=")]
    if remote:
      syntax = subprocess.run(["bash", "-n", "-c", remote[0][len("--command="):]], capture_output=True,
                              text=True, check=False, timeout=10)
      assert syntax.returncode == 0, syntax.stderr
