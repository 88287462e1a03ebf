"""boneage-launch tensorboard and local-multiworker."""

import shlex
import sys

import pytest

from launch import cli
from launch import local


@pytest.mark.parametrize("model_dir, logdir", [
    ("gs://bone-bucket/models/run1/", "gs://bone-bucket/models/run1/logs"),
    ("/data/models/run1", "/data/models/run1/logs"),
])
def test_tensorboard_points_at_the_logs_folder(capsys, model_dir, logdir):
  assert cli.main(["boneage-launch", "tensorboard", f"--model_dir={model_dir}", "--port=6007", "--bind_all", "--dry_run"]) == 0
  assert shlex.split(capsys.readouterr().out) == ["tensorboard", f"--logdir={logdir}", "--port=6007",
                                                  "--bind_all"]


def test_tensorboard_refuses_a_local_model_dir_without_logs(capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", "tensorboard", f"--model_dir={tmp_path}"])
  assert exit_info.value.code == 2
  assert "has no logs/ folder" in capsys.readouterr().err


def test_tensorboard_needs_a_model_dir(capsys):
  with pytest.raises(SystemExit):
    cli.main(["boneage-launch", "tensorboard", "--dry_run"])
  assert "--model_dir is required" in capsys.readouterr().err


def test_local_multiworker_forwards_its_flags(capsys, monkeypatch, tmp_path):
  script = tmp_path / "local_multiworker.py"
  script.write_text("")
  monkeypatch.setattr(local, "LOCAL_MULTIWORKER", script)
  assert cli.main(["boneage-launch", "local-multiworker", "--dry_run", "--", "--num_workers=2", "--model_dir=/tmp/m"]) == 0
  assert shlex.split(capsys.readouterr().out) == [sys.executable, str(script), "--num_workers=2",
                                                  "--model_dir=/tmp/m"]


def test_local_multiworker_says_when_the_runner_is_missing(capsys, monkeypatch, tmp_path):
  monkeypatch.setattr(local, "LOCAL_MULTIWORKER", tmp_path / "local_multiworker.py")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", "local-multiworker", "--dry_run", "--", "--num_workers=2"])
  assert exit_info.value.code == 2
  assert "local_multiworker.py is missing" in capsys.readouterr().err
