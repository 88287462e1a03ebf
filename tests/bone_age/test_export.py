"""bone_age.export: the export reloads (safe mode, SavedModel) and predicts what the trained model did."""

import json
import os

import keras
import numpy as np
import pytest

from bone_age import export as ba_export
from bone_age import model as ba_model

EDGES = [113.0, 150.0]


def _batch(n, size, seed=0):
  rng = np.random.default_rng(seed)
  return {
      ba_model.IMAGE_INPUT: rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
      ba_model.MALE_INPUT: (np.arange(n) % 2).astype(np.float32).reshape(n, 1),
  }


def _targets(n):
  ages = np.linspace(20.0, 220.0, n, dtype=np.float32).reshape(n, 1)
  groups = np.eye(len(EDGES) + 1, dtype=np.float32)[np.searchsorted(EDGES, ages.ravel(), side="right")]
  return {ba_model.AGE_OUTPUT: ages, ba_model.GROUP_OUTPUT: groups}


def _train_one_step(model, size, n=2, run_eagerly=False):
  model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=run_eagerly,
                loss={ba_model.AGE_OUTPUT: "mae", ba_model.GROUP_OUTPUT: "categorical_crossentropy"})
  before = [w.copy() for w in model.get_layer(ba_model.AGE_UNIT_LAYER).get_weights()]
  losses = model.train_on_batch(_batch(n, size), _targets(n))
  assert np.all(np.isfinite(losses))
  after = model.get_layer(ba_model.AGE_UNIT_LAYER).get_weights()
  assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "train step changed no head weight"


def _assert_export_matches(model, export_dir, size):
  x = _batch(5, size, seed=1)
  # Eager calls: tracing a predict function of Xception costs more than the forward pass itself.
  expected = {k: v.numpy() for k, v in model(x, training=False).items()}
  reloaded, metadata = ba_export.load_export(export_dir)
  got = reloaded(x, training=False)
  for key in (ba_model.AGE_OUTPUT, ba_model.GROUP_OUTPUT):
    np.testing.assert_allclose(got[key].numpy(), expected[key], rtol=1e-5, atol=1e-4)
  _, serve = ba_export.load_serving_signature(export_dir)
  served = serve(image=x[ba_model.IMAGE_INPUT], male=x[ba_model.MALE_INPUT][:, 0])
  np.testing.assert_allclose(served[ba_model.AGE_OUTPUT].numpy(), expected[ba_model.AGE_OUTPUT][:, 0], rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(served[ba_model.GROUP_OUTPUT].numpy(), expected[ba_model.GROUP_OUTPUT], rtol=1e-5,
                             atol=1e-4)
  return reloaded, metadata


def test_tiny_export_layout_metadata_and_predictions(tmp_path):
  model = ba_model.build_model(image_size_px=32, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  _train_one_step(model, 32)
  export_dir = str(tmp_path / "export")
  ba_export.save_export(model, export_dir, {"backbone": "tiny", "dataset_version": "1.0.0", "experiment": "t",
                                           "best_validation_mae_months": np.float32(7.5)})
  assert sorted(os.listdir(export_dir)) == ["export_metadata.json", "model.keras", "saved_model"]
  with open(os.path.join(export_dir, ba_export.EXPORT_METADATA_FILE), encoding="utf-8") as f:
    metadata = json.load(f)
  assert metadata["image_size_px"] == 32
  assert metadata["age_group_edges_months"] == EDGES
  assert metadata["backbone"] == "tiny" and metadata["dataset_version"] == "1.0.0"
  assert metadata["experiment"] == "t" and metadata["best_validation_mae_months"] == 7.5
  reloaded, loaded_metadata = _assert_export_matches(model, export_dir, 32)
  assert loaded_metadata == metadata
  assert ba_model.age_group_edges(reloaded) == EDGES
  # Grad-CAM's feature tensor is still reachable after a reload.
  keras.Model(reloaded.inputs, [ba_model.backbone_feature_tensor(reloaded), reloaded.output])


def test_model_dir_resolves_to_its_export(tmp_path):
  model = ba_model.build_model(image_size_px=32, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  ba_export.save_export(model, str(tmp_path / "export"), {"backbone": "tiny", "dataset_version": "1.0.0"})
  assert ba_export.resolve_export_dir(str(tmp_path)) == str(tmp_path / "export")
  _, metadata = ba_export.load_export(str(tmp_path))
  assert metadata["backbone"] == "tiny"
  with pytest.raises(FileNotFoundError, match="export_metadata.json"):
    ba_export.resolve_export_dir(str(tmp_path / "nowhere"))


def test_metadata_missing_or_contradicting_the_model_is_refused(tmp_path):
  model = ba_model.build_model(image_size_px=32, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  with pytest.raises(ValueError, match="dataset_version"):
    ba_export.save_export(model, str(tmp_path / "a"), {"backbone": "tiny"})
  with pytest.raises(ValueError, match="age_group_edges_months"):
    ba_export.save_export(model, str(tmp_path / "b"),
                          {"backbone": "tiny", "dataset_version": "1", "age_group_edges_months": [100, 160]})
  with pytest.raises(ValueError, match="image_size_px"):
    ba_export.save_export(model, str(tmp_path / "c"), {"backbone": "tiny", "dataset_version": "1", "image_size_px": 64})
  with pytest.raises(TypeError, match="not JSON serialisable"):
    ba_export.save_export(model, str(tmp_path / "d"), {"backbone": "tiny", "dataset_version": "1", "bad": object()})
  assert not (tmp_path / "d").exists()  # nothing half-written


def test_safe_mode_refuses_a_lambda_layer_that_our_models_never_have(tmp_path):
  # Proves load_export really loads in safe mode: a Lambda model in the same layout is rejected.
  model = ba_model.build_model(image_size_px=32, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  export_dir = str(tmp_path / "export")
  ba_export.save_export(model, export_dir, {"backbone": "tiny", "dataset_version": "1.0.0"})
  image = keras.Input((32, 32, 1), dtype="uint8", name=ba_model.IMAGE_INPUT)
  lam = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") * 2.0)(image)
  keras.Model(image, lam).save(os.path.join(export_dir, ba_export.KERAS_FILE))
  with pytest.raises(ValueError, match="(?i)safe_mode|lambda"):
    ba_export.load_export(export_dir)


def test_xception_builds_trains_exports_and_reloads(tmp_path):
  size = ba_model.XCEPTION_MIN_SIZE_PX
  model = ba_model.build_model(image_size_px=size, age_group_edges_months=EDGES, backbone="xception", weights=None)
  assert ba_model.backbone_feature_tensor(model).shape[-1] == 2048  # block14_sepconv2_act
  # Eager step: compiling Xception's train step costs 30-80 s on 2 busy cores, the step itself ~2 s.
  _train_one_step(model, size, run_eagerly=True)
  export_dir = str(tmp_path / "export")
  ba_export.save_export(model, export_dir, {"backbone": "xception", "dataset_version": "1.0.0"})
  reloaded, metadata = _assert_export_matches(model, export_dir, size)
  assert metadata["image_size_px"] == size
  assert ba_model.backbone_feature_layer(reloaded).get_layer("block14_sepconv2_act") is not None
