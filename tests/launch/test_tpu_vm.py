"""launch/tpu_vm.sh and `boneage-launch tpu-vm`: the dry run prints the gcloud lines it would run."""

import os
import pathlib
import shlex
import socket
import subprocess
import time

import pytest

from launch import cli
from launch import common
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
  status = cli.main(["boneage-launch", "tpu-vm", *TPU, f"--source_dir={REPO_ROOT}", "--config_override=train.epochs=30",
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
  # The tpu extra brings tensorflow-tpu and a libtpu it can load, from the package index alone.
  assert install_script.endswith("pip install .[tpu]")
  assert "--worker=all" in train
  remote = _remote_command(train)
  program = next(word for word in remote if word.endswith("/boneage-train"))
  train_args = remote[remote.index(program) + 1:remote.index(">$HOME/boneage-train.log")]
  assert {"--strategy=tpu", "--tpu=local", "--precision=mixed_bfloat16", "--data_dir=gs://bone-bucket/tfds",
          "--model_dir=gs://bone-bucket/models/tpu1", "--experiment=xception_384",
          "--config_override=train.epochs=30", "--config_override=run.note=it's a test"} == set(train_args)


def test_pod_slice_trains_from_worker_0_with_the_tpu_name():
  result = _script(*TPU, "--accelerator_type=v4-32", "--runtime_version=tpu-ubuntu2204-base", "--skip_create",
                   "--delete_after", "--dry_run")
  assert result.returncode == 0, result.stderr
  lines = _lines(result.stdout)
  assert not any(line[4] == "create" for line in lines if line[0] == "gcloud"), "--skip_create reuses the VM"
  # Training is detached: deleting the VM right away would kill it, so the delete command is only printed.
  assert not any(line[4] == "delete" for line in lines if line[0] == "gcloud")
  assert "gcloud compute tpus tpu-vm delete boneage-v5e --project=bone-proj --zone=us-west4-a --quiet" in result.stderr
  train = lines[-1]
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
    cli.main(["boneage-launch", "tpu-vm", *TPU[1:], "--dry_run"])
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


@pytest.mark.parametrize("flag, message", [
    ("--steps_per_loop=0", "--steps_per_loop must be a whole number of at least 1"),
    ("--per_replica_batch_size=16x", "--per_replica_batch_size must be a whole number of at least 1"),
    ("--max_restarts=", "--max_restarts must be a whole number of at least 1"),
])
def test_script_rejects_bad_scaling_flags(flag, message):
  result = _script(*TPU, flag, "--dry_run")
  assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def test_cli_passes_scaling_flags_and_prints_how_to_follow_and_stop(capsys):
  assert cli.main(["boneage-launch", "tpu-vm", *TPU, f"--source_dir={REPO_ROOT}", "--per_replica_batch_size=64",
                   "--steps_per_loop=200", "--max_restarts=5", "--follow", "--dry_run"]) == 0
  captured = capsys.readouterr()
  *_, train, follow = _lines(captured.out)
  remote = _remote_command(train)
  assert ["--config_override=data.per_replica_batch_size=64", "--config_override=train.steps_per_loop=200"] == [
      word for word in remote if word.startswith("--config_override=")]
  assert remote[remote.index("-c") + 1] == common.restart_on_preemption_script(5)
  assert follow == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "boneage-v5e", "--project=bone-proj",
                    "--zone=us-west4-a", "--worker=0", "--command=tail -n 200 -F $HOME/boneage-train.log"]
  assert "--command=kill -TERM $(cat $HOME/boneage-train.pid)" in captured.err


def test_cli_rejects_bad_scaling_flags_before_bash(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", "tpu-vm", *TPU, "--steps_per_loop=0", "--dry_run"])
  assert exit_info.value.code == 2
  assert "--steps_per_loop must be at least 1" in capsys.readouterr().err


FAKE_TRAINER = """#!/bin/bash
echo "run $*"
n=$(cat "$HOME/runs" 2>/dev/null || echo 0); echo $((n + 1)) > "$HOME/runs"
[ "$n" -eq 0 ] && exit 143
exit 0
"""
FAKE_GCLOUD = """#!/bin/bash
echo "$*" >> "$HOME/gcloud_calls"
"""


def _wait_for_exit(pid: int, seconds: float) -> None:
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.1)
  os.kill(pid, 9)
  raise AssertionError(f"the detached training loop {pid} did not finish")


def test_train_command_detaches_reruns_after_preemption_and_copies_the_log(tmp_path):
  """The remote training command, run here with a stand-in trainer and gcloud: returns at once, keeps logs."""
  result = _script(*TPU, "--log_sync_seconds=1", "--dry_run")
  assert result.returncode == 0, result.stderr
  train_command = [arg for arg in _lines(result.stdout)[-1] if arg.startswith("--command=")][0][len("--command="):]
  home = tmp_path / "home"
  (home / "bone-age").mkdir(parents=True)
  (home / "boneage-venv" / "bin").mkdir(parents=True)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for path, text in ((home / "boneage-venv" / "bin" / "boneage-train", FAKE_TRAINER), (bin_dir / "gcloud", FAKE_GCLOUD)):
    path.write_text(text)
    path.chmod(0o755)
  env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  started = time.monotonic()
  ssh = subprocess.run(["bash", "-c", train_command], cwd=home, env=env, capture_output=True, text=True,
                       timeout=30, check=False)
  assert ssh.returncode == 0, ssh.stderr
  assert time.monotonic() - started < 10, "the ssh command must return while training goes on"
  pid = int((home / "boneage-train.pid").read_text())
  assert f"boneage-train started on {socket.gethostname()}: pid {pid}" in ssh.stdout
  _wait_for_exit(pid, 20)
  log = (home / "boneage-train.log").read_text()
  assert log.count("run --data_dir=gs://bone-bucket/tfds") == 2, log
  assert "exited 143 (preempted); rerun 1 of 20" in log
  # The log-copy loop makes its last copy after training ends.
  deadline = time.monotonic() + 20
  copy = f"storage cp -q {home}/boneage-train.log gs://bone-bucket/models/tpu1/host_logs/{socket.gethostname()}.log"
  while copy not in ((home / "gcloud_calls").read_text() if (home / "gcloud_calls").exists() else ""):
    assert time.monotonic() < deadline, "the log was never copied to the model dir"
    time.sleep(0.2)
