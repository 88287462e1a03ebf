"""The install routes resolve against the package index, each with exactly one TensorFlow package.

`pip install --dry-run --ignore-installed --report` resolves what each route
would install without installing it: the cpu/gpu/tpu extras, and every
image's launch/requirements-<variant>.txt together with '.[<variant>,gcp]'
(launch/Dockerfile, launch/Dockerfile.tpu).
Slow (each resolution fetches metadata from the index); skipped when the
index cannot be reached.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("bone_age", "beam_pipelines", "tfds_rsna", "trainer", "batch_inference", "launch")
# Distributions that each install the top-level `tensorflow` package: two of them
# in one environment overwrite each other's files.
TENSORFLOW_VARIANTS = frozenset({
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-tpu", "tensorflow-intel",
    "tensorflow-macos", "tensorflow-aarch64", "tensorflow-cpu-aws", "tensorflow-rocm", "intel-tensorflow",
    "tf-nightly", "tf-nightly-cpu", "tf-nightly-gpu", "tf-nightly-tpu", "tf-nightly-intel"})

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # pip resolution against the registry: minutes


def _normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _pip(project: pathlib.Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pip", *args], cwd=project, capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> pathlib.Path:
  """A copy of the project's sources: building its metadata must not touch the checkout's editable install."""
  copy = tmp_path_factory.mktemp("project")
  shutil.copy2(REPO_ROOT / "setup.py", copy / "setup.py")
  for package in PACKAGES:
    shutil.copytree(REPO_ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  probe = _pip(copy, "index", "versions", "tensorflow-tpu", timeout=120)
  if probe.returncode != 0:
    pytest.skip(f"the package index cannot be reached: {probe.stderr.strip().splitlines()[-1:]}")
  return copy


def _resolve(project: pathlib.Path, tmp_path, *requirements: str) -> dict[str, str]:
  """{normalized name: version} that pip would install for the requirements; fails with pip's error."""
  report = tmp_path / "report.json"
  result = _pip(project, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                *requirements)
  assert result.returncode == 0, f"{requirements} does not resolve:\n{result.stderr[-3000:]}"
  installs = json.loads(report.read_text())["install"]
  return {_normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def _one_tensorflow(resolved: dict[str, str]) -> str:
  variants = sorted(TENSORFLOW_VARIANTS & resolved.keys())
  assert len(variants) == 1, f"expected exactly one TensorFlow package, got {variants}"
  return variants[0]


@pytest.mark.parametrize("extras, variant, line", [
    ("cpu,test,dask", "tensorflow", "2.21."),  # the development install (make test)
    ("tpu", "tensorflow-tpu", "2.20."),
])  # '.[gpu,gcp]' and '.[cpu,gcp]' are resolved with the images' requirements below.
def test_each_tensorflow_extra_resolves_to_one_variant(project, tmp_path, extras, variant, line):
  resolved = _resolve(project, tmp_path, f".[{extras}]")
  assert _one_tensorflow(resolved) == variant
  assert resolved[variant].startswith(line) and resolved["tensorboard"].startswith(line)
  assert resolved["keras"].startswith("3.15.")
  if extras == "tpu":
    # Newer libtpu releases lack TPU C API functions tensorflow-tpu 2.20 loads at import.
    assert tuple(int(part) for part in resolved["libtpu"].split(".")[:3]) <= (0, 0, 21)


@pytest.mark.parametrize("requirements", sorted(p.name for p in (REPO_ROOT / "launch").glob("requirements-*.txt")))
def test_every_image_requirements_file_resolves_with_its_extra(project, tmp_path, requirements):
  """What each image installs: launch/requirements-<variant>.txt (exact pins) with '.[<variant>,gcp]'.

  Run from the project root, as the Dockerfiles do, so '.' means this package.
  """
  variant = requirements[len("requirements-"):-len(".txt")]
  resolved = _resolve(project, tmp_path, "-r", f"launch/{requirements}", f".[{variant},gcp]")
  assert _one_tensorflow(resolved) == ("tensorflow-tpu" if variant == "tpu" else "tensorflow")
  pins = {}
  for line in (REPO_ROOT / "launch" / requirements).read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      name, version = line.split("==")
      pins[_normalize(name.split("[")[0])] = version.strip()
  assert {name: resolved.get(name) for name in pins} == pins
  assert "google-cloud-aiplatform" in resolved and "apache-beam" in resolved
  if variant == "gpu":
    assert any(name.startswith("nvidia-cudnn") for name in resolved)


def test_two_tensorflow_variants_together_do_not_resolve(project):
  """The variants' TensorBoard pins conflict, so pip refuses instead of installing two TensorFlows."""
  result = _pip(project, "install", "--dry-run", "--ignore-installed", "--quiet", ".[cpu,tpu]")
  assert result.returncode != 0
  assert "ResolutionImpossible" in result.stderr or "conflicting dependencies" in result.stderr
