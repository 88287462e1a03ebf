"""bone_age.model / bone_age.layers: interface, dtypes, clamping, no Lambda layers."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from bone_age import layers as ba_layers
from bone_age import model as ba_model

SIZE_PX = 32
EDGES = [113.0, 150.0]


def _batch(n=4, size=SIZE_PX, seed=0):
  rng = np.random.default_rng(seed)
  return {
      ba_model.IMAGE_INPUT: rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
      ba_model.MALE_INPUT: (np.arange(n) % 2).astype(np.float32).reshape(n, 1),
  }


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


@pytest.fixture(scope="module")
def tiny_model():
  return ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)


def test_interface_names_dtypes_and_shapes(tiny_model):
  inputs = {t.name: t for t in tiny_model.inputs}
  assert inputs[ba_model.IMAGE_INPUT].dtype == "uint8"
  assert tuple(inputs[ba_model.IMAGE_INPUT].shape) == (None, SIZE_PX, SIZE_PX, 1)
  assert tuple(inputs[ba_model.MALE_INPUT].shape) == (None, 1)
  out = tiny_model(_batch(), training=False)
  assert set(out) == {ba_model.AGE_OUTPUT, ba_model.GROUP_OUTPUT}
  assert tuple(out[ba_model.AGE_OUTPUT].shape) == (4, 1)
  probs = keras.ops.convert_to_numpy(out[ba_model.GROUP_OUTPUT])
  assert probs.shape == (4, len(EDGES) + 1)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  assert ba_model.age_group_edges(tiny_model) == EDGES
  assert ba_model.image_size_px(tiny_model) == SIZE_PX


def test_no_lambda_layers_and_backbone_is_nested(tiny_model):
  layers = list(_all_layers(tiny_model))
  assert not [l.name for l in layers if isinstance(l, keras.layers.Lambda)]
  assert isinstance(ba_model.backbone_feature_layer(tiny_model), keras.Model)


def test_backbone_feature_tensor_gives_features_and_outputs_in_one_pass(tiny_model):
  grad_model = keras.Model(tiny_model.inputs, [ba_model.backbone_feature_tensor(tiny_model), tiny_model.output])
  features, outputs = grad_model(_batch(), training=False)
  assert tuple(features.shape) == (4, 4, 4, 32)  # three stride-2 convs on 32 px
  np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[ba_model.AGE_OUTPUT]),
                             keras.ops.convert_to_numpy(tiny_model(_batch(), training=False)[ba_model.AGE_OUTPUT]),
                             rtol=1e-5)


def test_preprocess_scales_to_minus_one_one_and_replicates_grey():
  layer = ba_layers.GreyToBackboneInput(mode="tf")
  image = np.array([0, 255, 51], dtype=np.uint8).reshape(1, 1, 3, 1)
  out = keras.ops.convert_to_numpy(layer(image))
  assert out.shape == (1, 1, 3, 3)
  np.testing.assert_allclose(out[0, 0, :, 0], [-1.0, 1.0, 51 / 127.5 - 1], rtol=1e-6)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  with pytest.raises(ValueError, match="scaling mode"):
    ba_layers.GreyToBackboneInput(mode="bgr")


def test_months_are_clamped_but_gradient_passes_through():
  import tensorflow as tf  # the test measures a gradient; the layer itself is backend-agnostic.

  layer = ba_layers.ClampedMonths()
  unit = tf.constant([[-0.5], [0.25], [1.7]])
  with tf.GradientTape() as tape:
    tape.watch(unit)
    months = layer(unit)
  np.testing.assert_allclose(months.numpy().ravel(), [0.0, 60.0, 240.0])
  np.testing.assert_allclose(tape.gradient(months, unit).numpy().ravel(), [240.0] * 3)


def test_model_output_clamped_for_extreme_head_weights(tiny_model):
  head = tiny_model.get_layer(ba_model.AGE_UNIT_LAYER)
  kernel, bias = head.get_weights()
  try:
    for b, expected in ((-50.0, 0.0), (50.0, 240.0)):
      head.set_weights([kernel, np.full_like(bias, b)])
      months = keras.ops.convert_to_numpy(tiny_model(_batch(), training=False)[ba_model.AGE_OUTPUT])
      np.testing.assert_array_equal(months, expected)
  finally:
    head.set_weights([kernel, bias])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_heads_are_float32_under_mixed_precision(policy):
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
    assert model.get_layer("fusion_dense2").compute_dtype != "float32"  # the body does run in low precision
    out = model(_batch(), training=False)
  finally:
    keras.config.set_dtype_policy(previous)
  assert keras.backend.standardize_dtype(out[ba_model.AGE_OUTPUT].dtype) == "float32"
  assert keras.backend.standardize_dtype(out[ba_model.GROUP_OUTPUT].dtype) == "float32"


def test_edges_validated():
  with pytest.raises(ValueError, match="increasing"):
    ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=[150, 113], backbone="tiny", weights=None)


def test_backbone_names_resolve_case_insensitively():
  assert ba_model.resolve_application("resnet50") is keras.applications.ResNet50
  assert ba_model.resolve_application("Xception") is keras.applications.Xception
  assert ba_model.pixel_scaling_mode("xception") == "tf"
  assert ba_model.pixel_scaling_mode("resnet50") == "caffe"
  assert ba_model.pixel_scaling_mode("densenet121") == "torch"
  assert ba_model.pixel_scaling_mode("efficientnetb0") == "raw"
  with pytest.raises(ValueError, match="unknown backbone 'resnet5000'"):
    ba_model.resolve_application("resnet5000")


def test_xception_below_minimum_size_is_refused():
  with pytest.raises(ValueError, match="71"):
    ba_model.build_model(image_size_px=64, age_group_edges_months=EDGES, backbone="xception", weights=None)


def test_other_application_backbone_builds_with_its_scaling():
  model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="mobilenetv2",
                               weights=None)
  assert model.get_layer(ba_model.PREPROCESS_LAYER).mode == "tf"
  out = model(_batch(n=2), training=False)
  assert tuple(out[ba_model.AGE_OUTPUT].shape) == (2, 1)


def test_backbone_weights_from_a_local_file(tmp_path, tiny_model):
  path = str(tmp_path / "backbone.weights.h5")
  ba_model.backbone_feature_layer(tiny_model).save_weights(path)
  other = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=path)
  for a, b in zip(ba_model.backbone_feature_layer(tiny_model).get_weights(),
                  ba_model.backbone_feature_layer(other).get_weights()):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_one_train_step_under_jax_backend(tmp_path):
  if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install jax); the JAX-backend check needs it")
  script = textwrap.dedent(f"""
      import numpy as np, keras
      assert keras.backend.backend() == "jax"
      from bone_age import model as m
      model = m.build_model(image_size_px={SIZE_PX}, age_group_edges_months={EDGES}, backbone="tiny", weights=None)
      model.compile(optimizer="adam", loss={{m.AGE_OUTPUT: "mae", m.GROUP_OUTPUT: "categorical_crossentropy"}})
      x = {{m.IMAGE_INPUT: np.zeros((2, {SIZE_PX}, {SIZE_PX}, 1), np.uint8), m.MALE_INPUT: np.ones((2, 1), np.float32)}}
      y = {{m.AGE_OUTPUT: np.array([[100.], [200.]], np.float32), m.GROUP_OUTPUT: np.eye(3, dtype=np.float32)[[0, 2]]}}
      loss = model.train_on_batch(x, y)
      assert np.all(np.isfinite(loss)), loss
      print("OK")
  """)
  env = {**os.environ, "KERAS_BACKEND": "jax"}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_model_code_uses_no_tensorflow_ops():
  # The model must also run under KERAS_BACKEND=jax: no TensorFlow import in the modules that define it.
  import ast  # pylint: disable=g-import-not-at-top

  for module in (ba_model, ba_layers):
    with open(module.__file__, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "tensorflow" not in imported, module.__file__
