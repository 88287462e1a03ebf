"""The demo's console as a new user sees it: scripts/demo.sh, shrunk, run end to end (slow: minutes)."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOISE = re.compile(r"cuInit|oneDNN|cuda drivers|prism|Unknown size|WARNING", re.IGNORECASE)
# One progress line per long stage: the build per split, training steps of the total, scoring inputs.
PROGRESS = {
    "build": re.compile(r"^dataset build: \d+/\d+ images \(\d+%\) \(train \d+, validation \d+, test \d+, rejected \d+\)"),
    "train": re.compile(r"^step \d+/\d+ \(\d+%\)"),
    "score": re.compile(r"^scoring: \d+/\d+ inputs"),  # a zip: its members are the total
}


@pytest.mark.heavy
@pytest.mark.slow
def test_demo_console_is_quiet_short_and_shows_progress(tmp_path):
  if shutil.which("boneage-score") is None:
    pytest.skip("the console scripts are not installed (pip install -e .)")
  env = dict(os.environ, DEMO_NUM_IMAGES="96",
             DEMO_TRAIN_FLAGS="--config_override=train.train_steps=200 --config_override=train.eval_every_steps=100")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
  result = subprocess.run(["bash", "scripts/demo.sh", str(tmp_path / "demo")], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1500, check=False)
  lines = (result.stdout + result.stderr).splitlines()
  assert result.returncode == 0, "\n".join(lines[-40:])
  noisy = [line for line in lines if NOISE.search(line)]
  assert not noisy, noisy
  # The full demo (2800 steps) prints about 10 step lines (trainer.train_lib.console_every_steps); the shrunk one
  # fewer, so the rest of its console must leave room for 12 of them within the 80-line budget.
  step_lines = [line for line in lines if PROGRESS["train"].search(line)]
  assert len(step_lines) <= 12, step_lines
  assert len(lines) - len(step_lines) + 12 <= 80, "\n".join(lines)
  for stage, pattern in PROGRESS.items():
    assert any(pattern.search(line) for line in lines), (stage, "\n".join(lines))
