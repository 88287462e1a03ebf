"""The exported conformal interval's coverage on a held-out phantom test split (a trained demo model)."""

import csv
import json

import numpy as np
import pytest

from bone_age import export
from trainer import evaluate
from trainer import experiments
from trainer import train_lib


@pytest.fixture(scope="module")
def interval_run(tmp_path_factory, trainer_helpers):
  """demo_cpu with the learning test's settings on phantoms with 400 validation and 400 test images.

  The 400 validation phantoms calibrate the export's interval and the 400 test phantoms measure it, so the
  measured coverage of a 90% interval is known to about +/- 0.02 (with the fixture dataset's 32 and 64 images,
  +/- 0.06: too loose to test 0.85-0.95).
  """
  import phantom_tfds  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("interval")
  data_dir = root / "data"
  phantom_tfds.build(str(data_dir), size_px=trainer_helpers.IMAGE_SIZE_PX, num_train=256, num_validation=400,
                     num_test=400, render_hw=(128, 100))
  config = experiments.resolve("demo_cpu",
                               list(trainer_helpers.SMALL_OVERRIDES) + list(trainer_helpers.LEARN_OVERRIDES))
  return data_dir, train_lib.train_and_evaluate(config, str(data_dir), str(root / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("tta_views", [1, 4])
def test_the_exported_90_percent_interval_covers_90_percent_of_the_test_split(interval_run, tmp_path, tta_views):
  data_dir, result = interval_run
  record = export.read_metadata(result.export_dir)["prediction_interval"]
  assert (record["n_calibration"], record["rank"], record["alpha"], record["max_tta_views"]) == (400, 361, 0.1, 8)
  report = evaluate.evaluate(str(data_dir), result.export_dir, "test", str(tmp_path / "eval"), tta_views=tta_views)
  interval = report["prediction_interval"]
  print(f"demo_cpu 90% interval, {tta_views} TTA view(s): {json.dumps(interval)}")
  assert interval["count"] == 400 and interval["tta_views"] == tta_views and interval["level"] == 0.9
  assert interval["half_width_months"] == pytest.approx(record["half_width_months_by_tta_views"][str(tta_views)])
  assert 0.85 <= interval["coverage"] <= 0.95
  with open(tmp_path / "eval" / "predictions.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  inside = [float(r["interval_low_months"]) <= float(r["true_months"]) <= float(r["interval_high_months"])
            for r in rows]
  assert np.mean(inside) == pytest.approx(interval["coverage"], abs=0.01)  # the CSV rounds to 0.01 month
  assert report["provenance"]["checkpoint_step"] == 1000 and report["provenance"]["checkpoint_reason"] == "last"
