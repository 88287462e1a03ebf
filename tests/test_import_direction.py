"""The packages import one way: core at the bottom, Beam transforms above it,
builder / trainer / scorer on top and never each other (README, Architecture).

Checked statically with `ast`, so a violation fails here before it becomes a
cycle or drags TensorFlow into a light entry point.
"""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = {"bone_age", "beam_pipelines", "tfds_rsna", "trainer", "batch_inference", "launch"}
ALLOWED = {
    "bone_age": {"bone_age"},
    "beam_pipelines": {"bone_age", "beam_pipelines"},
    "tfds_rsna": {"bone_age", "beam_pipelines", "tfds_rsna"},
    "trainer": {"bone_age", "trainer"},
    "batch_inference": {"bone_age", "beam_pipelines", "batch_inference"},
    "launch": {"bone_age", "launch"},
}


def imported_packages(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below_it(package):
  files = sorted((REPO_ROOT / package).rglob("*.py"))
  assert files, f"no modules found in {package}/"
  offending = {str(f.relative_to(REPO_ROOT)): sorted(imported_packages(f) - ALLOWED[package]) for f in files}
  offending = {f: bad for f, bad in offending.items() if bad}
  assert not offending, f"{package} must import only {sorted(ALLOWED[package])}; found {offending}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("import os\nfrom trainer import train_lib\nimport batch_inference.score as s\nfrom . import x\n")
  assert imported_packages(module) == {"trainer", "batch_inference"}
