"""Fixtures shared by the test suite.

Real RSNA radiographs live beside the project in `../shared/data/` when the
machine has them (CI does); tests that need them skip with the reason when
they are absent. The project never copies them.
"""

import os
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Shared test helpers (corrupt_inputs): importlib mode does not put test folders on sys.path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
SHARED_DATA = pathlib.Path(os.environ.get("BONEAGE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def rsna_sample_dir() -> pathlib.Path:
  """`../shared/data/rsna_sample` (65 real labeled radiographs), or skip."""
  path = SHARED_DATA / "rsna_sample"
  if not (path / "labels.csv").exists():
    pytest.skip(f"real RSNA sample not found at {path} (set BONEAGE_SHARED_DATA to its parent folder)")
  return path


@pytest.fixture(scope="session")
def rsna_labels_dir() -> pathlib.Path:
  """`../shared/data/rsna_labels` (official label tables), or skip."""
  path = SHARED_DATA / "rsna_labels"
  if not (path / "train.csv").exists():
    pytest.skip(f"official RSNA label tables not found at {path} (set BONEAGE_SHARED_DATA to its parent folder)")
  return path
