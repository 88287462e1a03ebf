"""What TTA views and the conformal interval give on the demo model, and what they cost.

Builds the phantoms of the trainer tests' `learned_run` (64 px, 256 train,
400 validation, 400 test, seed 0), trains demo_cpu with the learning test's
settings (or reuses --model_dir), then for 1, 2, 4 and 8 TTA views prints:
test MAE, the 90% interval's half-width and test coverage, the coverage per
third of the true ages, the process CPU seconds of the test predictions
(ratio to 1 view: the cost of TTA), the views' mean SD, the Spearman rank
correlation of the spread with the absolute error, and the coverage and mean
width of an interval normalised by the spread (|e| / (sd + 0.5), calibrated
on validation) for comparison with the plain one.

  python benchmarks/bench_interval.py [--work_dir=DIR] [--output=bench_output/interval.json]
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from bone_age import conformal  # pylint: disable=wrong-import-position
from bone_age import export  # pylint: disable=wrong-import-position
from trainer import evaluate  # pylint: disable=wrong-import-position
from trainer import experiments  # pylint: disable=wrong-import-position
from trainer import train_lib  # pylint: disable=wrong-import-position

NORMALISING_FLOOR_MONTHS = 0.5


def _load(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def measure(model, builder, calibration, views: int, plain_cpu_s: float | None) -> dict:
  start = time.process_time()
  test = evaluate.predict_split(model, builder, "test", 32, views)
  cpu_s = time.process_time() - start
  interval = evaluate.interval_report(test, calibration, views, conformal.DEFAULT_ALPHA)
  error = np.abs(test["pred_months"] - test["true_months"])
  thirds = np.digitize(test["true_months"], np.quantile(test["true_months"], [1 / 3, 2 / 3]))
  inside = (test["true_months"] >= test["interval_low_months"]) & (test["true_months"] <= test["interval_high_months"])
  out = {"views": views, "test_mae_months": float(error.mean()), "half_width_months": interval["half_width_months"],
         "coverage": interval["coverage"], "coverage_by_age_third": [float(inside[thirds == k].mean()) for k in range(3)],
         "cpu_s": cpu_s, "cpu_ratio_to_one_view": cpu_s / plain_cpu_s if plain_cpu_s else 1.0,
         "view_bias_months": (test["view_months"] - test["true_months"]).mean(axis=1).round(2).tolist()}
  if views > 1:
    validation = evaluate.predict_split(model, builder, "validation", 32, views)
    scores = np.abs(validation["pred_months"] - validation["true_months"]) / (
        validation["pred_sd_months"] + NORMALISING_FLOOR_MONTHS)
    width = conformal.quantile(scores, conformal.DEFAULT_ALPHA) * (test["pred_sd_months"] + NORMALISING_FLOOR_MONTHS)
    out.update(mean_tta_sd_months=float(test["pred_sd_months"].mean()),
               spearman_spread_vs_abs_error=_rank_correlation(test["pred_sd_months"], error),
               normalised={"coverage": float(np.mean(error <= width)), "mean_width_months": float(2 * width.mean())},
               plain_mean_width_months=interval["mean_width_months"])
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work_dir", default=None, help="Keeps the dataset and run there (reused when present).")
  parser.add_argument("--output", default="bench_output/interval.json")
  args = parser.parse_args()
  work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="bench_interval_"))
  conftest = _load("trainer_conftest", REPO_ROOT / "tests" / "trainer" / "conftest.py")
  data_dir = work / "data"
  if not data_dir.exists():
    _load("phantom_tfds", REPO_ROOT / "tests" / "trainer" / "phantom_tfds.py").build(
        str(data_dir), size_px=conftest.IMAGE_SIZE_PX, num_train=256, num_validation=400, num_test=400,
        render_hw=(128, 100))
  export_dir = work / "run" / "export"
  if not export_dir.exists():
    config = experiments.resolve("demo_cpu", list(conftest.SMALL_OVERRIDES) + list(conftest.LEARN_OVERRIDES))
    train_lib.train_and_evaluate(config, str(data_dir), str(work / "run"))
  model, metadata = export.load_export(str(export_dir))
  builder = tfds.builder_from_directory(str(next(data_dir.glob("rsna_bone_age/*px/*"))))
  calibration = conformal.load(str(export_dir))
  rows, plain_cpu_s = [], None
  for views in (1, 2, 4, 8):
    rows.append(measure(model, builder, calibration, views, plain_cpu_s))
    plain_cpu_s = plain_cpu_s or rows[0]["cpu_s"]
    print(json.dumps(rows[-1]))
  result = {"export": {k: metadata.get(k) for k in ("checkpoint_step", "checkpoint_reason", "best_validation_step",
                                                    "best_validation_mae_months", "final_validation_mae_months")},
            "n_calibration": calibration.num_calibration, "by_views": rows}
  os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
