"""trainer.evaluate / evaluate_main on a tiny TFDS dataset written here (not the project's builder)."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bone_age import conformal
from bone_age import errors
from bone_age import export as ba_export
from bone_age import model as ba_model
from bone_age import schema
from bone_age import tta
from trainer import evaluate
from trainer import evaluate_main

SIZE_PX = 32
EDGES = [113.0, 150.0]
TRAIN_AGES = [24.0, 60.0, 100.0, 120.0, 130.0, 160.0, 200.0, 220.0]
TEST = [("t0", 30.0, 0), ("t1", 90.0, 1), ("t2", 115.0, 0), ("t3", 140.0, 1), ("t4", 149.5, 0),
        ("t5", 150.0, 1), ("t6", 190.0, 0), ("t7", 228.0, 1), ("t8", 12.0, 1)]


def _image(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (SIZE_PX, SIZE_PX, 1), dtype=np.uint8)


def _example(index: int, example_id: str, age: float, male: int) -> dict:
  return {schema.IMAGE: _image(index), schema.BONEAGE_MONTHS: age, schema.MALE: male,
          schema.AGE_GROUP: int(np.searchsorted(EDGES, age, side="right")), schema.ID: example_id,
          schema.ORIGINAL_HEIGHT_PX: 40, schema.ORIGINAL_WIDTH_PX: 30}


class _TinyRsna(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Same name, config naming, features and metadata key as the real dataset."""
  name = "rsna_bone_age"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"{SIZE_PX}px")]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=schema.features_dict(SIZE_PX, len(EDGES) + 1),
                                 metadata=tfds.core.MetadataDict(age_group_edges_months=EDGES))

  def _split_generators(self, dl_manager):
    del dl_manager
    train = [(f"r{i}", age, i % 2) for i, age in enumerate(TRAIN_AGES)]
    return {"train": self._generate_examples(train, 100), "test": self._generate_examples(TEST, 0)}

  def _generate_examples(self, rows, seed_offset):
    for i, (example_id, age, male) in enumerate(rows):
      yield example_id, _example(seed_offset + i, example_id, age, male)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  data_dir = str(root / "data")
  _TinyRsna(data_dir=data_dir).download_and_prepare()
  model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  model_dir = root / "run"
  ba_export.save_export(model, str(model_dir / "export"), {"backbone": "tiny", "dataset_version": "1.0.0"})
  return {"data_dir": data_dir, "model_dir": str(model_dir), "model": model, "root": root}


def _expected_predictions(model):
  images = np.stack([_image(i) for i in range(len(TEST))])
  male = np.array([[m] for _, _, m in TEST], np.float32)
  out = model.predict({ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male}, verbose=0)
  return out[ba_model.AGE_OUTPUT][:, 0].astype(np.float64), out[ba_model.GROUP_OUTPUT].argmax(axis=1)


def test_evaluate_writes_correct_metrics_predictions_and_plots(workspace):
  output_dir = str(workspace["root"] / "out")
  report = evaluate.evaluate(workspace["data_dir"], workspace["model_dir"], "test", output_dir, batch_size=4,
                             tta_views=1)
  with open(os.path.join(output_dir, evaluate.METRICS_FILE), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(report))
  # This export was saved without a calibration: the report says so instead of inventing an interval.
  assert report["prediction_interval"] == {"missing_reason": "the export has no conformal_scores.npz"}
  assert report["provenance"]["notice"] == "Research use only, not a medical device."
  true = np.array([a for _, a, _ in TEST])
  pred, pred_group = _expected_predictions(workspace["model"])
  assert report["num_examples"] == 9 and report["overall"]["count"] == 9
  assert report["overall"]["mae_months"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-5)
  assert report["overall"]["rmse_months"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-5)
  true_group = np.searchsorted(EDGES, true, side="right")
  assert report["overall"]["group_accuracy"] == pytest.approx(np.mean(true_group == pred_group))
  assert report["overall"]["within_12_months"] == pytest.approx(np.mean(np.abs(pred - true) <= 12))
  low, high = report["overall"]["mae_months_ci95"]
  assert low <= report["overall"]["mae_months"] <= high
  # Each band holds one reference group: its kappa is undefined, never a misleading 0.0.
  assert all(band["qwk"] is None for band in report["by_age_band"].values())
  assert report["by_sex"]["male"]["count"] == 5 and report["by_sex"]["female"]["count"] == 4
  male = np.array([m for _, _, m in TEST], bool)
  assert report["by_sex"]["male"]["mae_months"] == pytest.approx(np.mean(np.abs(pred - true)[male]), rel=1e-5)
  # Bands from the model's edges: 149.5 is still in 113-150, 150 starts the last band.
  assert [b["count"] for b in report["by_age_band"].values()] == [3, 3, 3]
  assert list(report["by_age_band"]) == ["<113 mo", "113-150 mo", ">=150 mo"]
  assert np.sum(report["confusion_matrix"]) == 9
  train_mean = float(np.mean(TRAIN_AGES))
  assert report["baseline"]["training_mean_months"] == pytest.approx(train_mean)
  assert report["baseline"]["mae_months"] == pytest.approx(np.mean(np.abs(true - train_mean)))
  assert report["dataset_version"] == "1.0.0" and report["dataset_dir"].endswith(os.path.join("32px", "1.0.0"))
  for name in report["plots"]:
    with open(os.path.join(output_dir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert len(report["plots"]) == 4
  with open(os.path.join(output_dir, evaluate.PREDICTIONS_FILE), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["id"] for r in rows) == sorted(i for i, _, _ in TEST)
  by_id = {r["id"]: r for r in rows}
  assert float(by_id["t5"]["true_months"]) == 150.0 and by_id["t5"]["true_group"] == ">=150 mo"
  assert {r["sex"] for r in rows} == {"M", "F"}  # the scorer's convention, not 1/0
  assert [k for k in rows[0] if k.startswith("prob_")] == [
      "prob_under_113_months", "prob_113_to_150_months", "prob_150_months_and_over"]


def test_tta_predictions_are_the_mean_of_the_views_and_the_interval_follows_the_calibration(workspace):
  builder = tfds.builder_from_directory(os.path.join(workspace["data_dir"], "rsna_bone_age", f"{SIZE_PX}px", "1.0.0"))
  predictions = evaluate.predict_split(workspace["model"], builder, "test", batch_size=4, tta_views=3)
  images = np.stack([_image(i) for i in range(len(TEST))])
  male = np.array([[m] for _, _, m in TEST], np.float32)
  order = np.argsort([i for i, _, _ in TEST])
  got = {example_id: i for i, example_id in enumerate(predictions["id"])}
  expected = np.stack([workspace["model"].predict({ba_model.IMAGE_INPUT: view, ba_model.MALE_INPUT: male},
                                                  verbose=0)[ba_model.AGE_OUTPUT][:, 0] for view in tta.views(images, 3)])
  for k in order:
    i = got[TEST[k][0]]
    np.testing.assert_allclose(predictions["view_months"][:, i], expected[:, k], rtol=1e-5, atol=1e-4)
    assert predictions["pred_months"][i] == pytest.approx(expected[:, k].mean(), abs=1e-4)
    assert predictions["pred_sd_months"][i] == pytest.approx(expected[:, k].std(), abs=1e-4)
  calibration = conformal.Calibration({v: np.arange(1.0, 20.0) for v in (1, 2, 3)})  # k = ceil(20 * 0.9) = 18
  interval = evaluate.interval_report(predictions, calibration, 3, 0.1)
  assert interval["half_width_months"] == 18.0 and interval["rank"] == 18 and interval["count"] == 9
  inside = np.abs(predictions["pred_months"] - predictions["true_months"]) <= 18.0
  assert interval["coverage"] == pytest.approx(inside.mean())
  with pytest.raises(ValueError, match="calibrated for 1 to 3 TTA views"):
    evaluate.interval_report(predictions, calibration, 4, 0.1)


def test_command_line_on_an_export_dir(workspace):
  output_dir = str(workspace["root"] / "cli_out")
  argv = ["boneage-evaluate", f"--data_dir={workspace['data_dir']}",
          f"--model_dir={os.path.join(workspace['model_dir'], 'export')}", "--split=test",
          f"--output_dir={output_dir}"]
  evaluate_main.main(argv)
  with open(os.path.join(output_dir, evaluate.METRICS_FILE), encoding="utf-8") as f:
    assert json.load(f)["overall"]["count"] == 9


def test_missing_split_and_missing_resolution_are_named(workspace, tmp_path):
  with pytest.raises(errors.InputError, match="no split 'validation'"):
    evaluate.evaluate(workspace["data_dir"], workspace["model_dir"], "validation", str(tmp_path / "o"))
  model = ba_model.build_model(image_size_px=48, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  ba_export.save_export(model, str(tmp_path / "export48"), {"backbone": "tiny", "dataset_version": "1.0.0"})
  with pytest.raises(errors.InputError, match=r"no 48px dataset .*32px"):
    evaluate.evaluate(workspace["data_dir"], str(tmp_path / "export48"), "test", str(tmp_path / "o"))
  with pytest.raises(FileNotFoundError, match="export_metadata.json"):
    evaluate.evaluate(workspace["data_dir"], str(tmp_path / "nothing"), "test", str(tmp_path / "o"))


def test_dataset_version_choice(tmp_path):
  config_dir = tmp_path / "rsna_bone_age" / "128px"
  for version in ("1.0.0", "1.2.0", "1.10.0"):
    (config_dir / version).mkdir(parents=True)
    (config_dir / version / "dataset_info.json").write_text("{}")
  (config_dir / "2.0.0").mkdir()  # an interrupted build: no dataset_info.json
  assert evaluate.find_dataset_dir(str(tmp_path), 128, "1.2.0") == str(config_dir / "1.2.0")
  assert evaluate.find_dataset_dir(str(tmp_path), 128, None) == str(config_dir / "1.10.0")
  assert evaluate.find_dataset_dir(str(tmp_path), 128, "9.9.9") == str(config_dir / "1.10.0")
  assert evaluate.find_dataset_dir(str(config_dir / "1.0.0"), 128) == str(config_dir / "1.0.0")


def test_unlabeled_rows_are_counted_not_used():
  predictions = {"id": np.array(["a", "b", "c"]), "male": np.array([0, 1, 1]),
                 "true_months": np.array([100.0, np.nan, 200.0]), "pred_months": np.array([110.0, 50.0, 190.0]),
                 "group_probs": np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])}
  report = evaluate.compute_report(predictions, EDGES, 150.0)
  assert report["num_unlabeled_excluded"] == 1 and report["overall"]["count"] == 2
  assert report["overall"]["mae_months"] == 10.0
  assert report["baseline"]["mae_months"] == 50.0
  json.dumps(report, allow_nan=False)


def test_command_line_names_a_missing_flag_and_defines_no_global_flags(workspace, capsys):
  with pytest.raises(SystemExit) as exit_info:
    evaluate_main.main(["boneage-evaluate", f"--data_dir={workspace['data_dir']}", "--model_dir=x"])
  assert exit_info.value.code == 2 and "--output_dir is required" in capsys.readouterr().err
  from absl import flags  # pylint: disable=g-import-not-at-top
  assert "output_dir" not in flags.FLAGS  # boneage-train (which defines data_dir globally) has no output_dir


def test_plot_titles_name_the_model_the_data_and_say_synthetic(workspace):
  builder = tfds.builder_from_directory(evaluate.find_dataset_dir(workspace["data_dir"], SIZE_PX))
  export_metadata = {"backbone": "tiny", "experiment": "demo_cpu", "train_steps": 2800}
  title = evaluate.plot_title(export_metadata, builder, "test", 9)
  assert title.startswith("tiny (demo_cpu, step 2800)\n") and "rsna_bone_age/32px/1.0.0, test split, n=9" in title
  assert "SYNTHETIC" not in title
  builder.info.metadata["synthetic"] = True  # as the builder records for a boneage-phantoms folder
  assert "SYNTHETIC phantoms: rsna_bone_age" in evaluate.plot_title(export_metadata, builder, "test", 9)
