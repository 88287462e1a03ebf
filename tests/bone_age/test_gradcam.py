"""bone_age.gradcam: batched Grad-CAM with each image's own sex."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bone_age import gradcam
from bone_age import model as ba_model

SIZE_PX = 32
EDGES = [113.0, 150.0]


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, SIZE_PX, SIZE_PX, 1), dtype=np.uint8)


def _sex_sensitive_model():
  model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  # Random init already mixes sex into the head; a larger sex kernel makes the effect unmistakable.
  sex = model.get_layer("sex_dense")
  kernel, bias = sex.get_weights()
  sex.set_weights([kernel * 10.0, bias])
  return model


@pytest.fixture(scope="module")
def model():
  return _sex_sensitive_model()


def _reference_gradcam(model, image, male):
  """Grad-CAM the textbook way (REFERENCE.md 4): features and outputs from one model, eager tape."""
  grad_model = keras.Model(model.inputs, [ba_model.backbone_feature_tensor(model), model.output])
  inputs = {ba_model.IMAGE_INPUT: image[None], ba_model.MALE_INPUT: np.array([[male]], np.float32)}
  with tf.GradientTape() as tape:
    feats, out = grad_model(inputs, training=False)
    target = out[ba_model.AGE_OUTPUT][0, 0]
  grads = tape.gradient(target, feats)[0].numpy()
  cam = np.maximum((grads.mean(axis=(0, 1)) * feats[0].numpy()).sum(-1), 0.0)
  cam = tf.image.resize(cam[None, ..., None], (SIZE_PX, SIZE_PX)).numpy()[0, ..., 0]
  return float(out[ba_model.AGE_OUTPUT][0, 0]), cam / cam.max()


def test_shapes_ranges_and_predictions_match_the_model(model):
  images = _images(5)
  male = np.array([0, 1, 1, 0, 1])
  months, probs, heatmaps = gradcam.predict_with_gradcam(model, images, male, batch_size=2)
  assert months.shape == (5,) and probs.shape == (5, 3) and heatmaps.shape == (5, SIZE_PX, SIZE_PX)
  assert heatmaps.dtype == np.float32 and heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
  np.testing.assert_allclose(heatmaps.max(axis=(1, 2)), 1.0, rtol=1e-5)  # normalised per image
  expected = model.predict({ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male.reshape(-1, 1).astype("f4")},
                           verbose=0)
  np.testing.assert_allclose(months, expected[ba_model.AGE_OUTPUT][:, 0], rtol=1e-5)
  np.testing.assert_allclose(probs, expected[ba_model.GROUP_OUTPUT], rtol=1e-5, atol=1e-6)


def test_matches_the_textbook_single_image_computation(model):
  images = _images(3, seed=1)
  male = np.array([1, 0, 1])
  _, _, heatmaps = gradcam.predict_with_gradcam(model, images, male)
  for i in range(3):
    _, expected = _reference_gradcam(model, images[i], float(male[i]))
    np.testing.assert_allclose(heatmaps[i], expected, atol=1e-4)


def test_each_image_uses_its_own_sex(model):
  # The same radiograph twice, once as a girl and once as a boy, in ONE batch.
  image = _images(1, seed=2)[0]
  months, _, heatmaps = gradcam.predict_with_gradcam(model, np.stack([image, image]), np.array([0, 1]))
  female_months, female_map = _reference_gradcam(model, image, 0.0)
  male_months, male_map = _reference_gradcam(model, image, 1.0)
  assert abs(female_months - male_months) > 0.1  # the model does use sex
  np.testing.assert_allclose(months, [female_months, male_months], rtol=1e-5)
  np.testing.assert_allclose(heatmaps[0], female_map, atol=1e-4)
  np.testing.assert_allclose(heatmaps[1], male_map, atol=1e-4)
  assert np.abs(heatmaps[0] - heatmaps[1]).max() > 1e-3  # a female-only Grad-CAM would make these equal


def test_frozen_backbone_and_chunking_give_the_same_maps(model):
  images = _images(4, seed=3)
  male = np.array([0, 1, 0, 1])
  _, _, whole = gradcam.predict_with_gradcam(model, images, male, batch_size=4)
  frozen = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  frozen.set_weights(model.get_weights())
  ba_model.backbone_feature_layer(frozen).trainable = False  # fine-tuning only the head is a common recipe
  _, _, chunked = gradcam.predict_with_gradcam(frozen, images, male, batch_size=3)
  np.testing.assert_allclose(chunked, whole, atol=1e-5)
  assert (whole.max(axis=(1, 2)) > 0).all()


def test_model_still_saves_and_trains_after_gradcam(model, tmp_path):
  # Grad-CAM must not add graph nodes to the model (they break model.save: "could not find node key").
  gradcam.predict_with_gradcam(model, _images(2), np.array([0, 1]))
  path = str(tmp_path / "after_gradcam.keras")
  model.save(path)
  reloaded = keras.saving.load_model(path, safe_mode=True)
  x = {ba_model.IMAGE_INPUT: _images(2), ba_model.MALE_INPUT: np.array([[0.0], [1.0]], np.float32)}
  np.testing.assert_allclose(reloaded(x)[ba_model.AGE_OUTPUT].numpy(), model(x)[ba_model.AGE_OUTPUT].numpy(),
                             rtol=1e-5)


def test_works_on_a_model_built_under_a_distribution_strategy():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  months, _, heatmaps = gradcam.predict_with_gradcam(model, _images(2), np.array([0, 1]))
  assert months.shape == (2,) and (heatmaps.max(axis=(1, 2)) > 0).all()


def test_mixed_bfloat16_model_gives_finite_maps():
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  finally:
    keras.config.set_dtype_policy(previous)
  months, probs, heatmaps = gradcam.predict_with_gradcam(model, _images(2), np.array([0, 1]))
  assert months.dtype == np.float32 and probs.dtype == np.float32 and heatmaps.dtype == np.float32
  assert np.isfinite(heatmaps).all() and heatmaps.max() <= 1.0


def test_bad_inputs_are_refused(model):
  with pytest.raises(ValueError, match="uint8"):
    gradcam.predict_with_gradcam(model, _images(2).astype(np.float32), [0, 1])
  with pytest.raises(ValueError, match="2 images but 3 sex values"):
    gradcam.predict_with_gradcam(model, _images(2), [0, 1, 1])
  with pytest.raises(ValueError, match=r"\(B, 32, 32, 1\)"):
    gradcam.predict_with_gradcam(model, np.zeros((2, 16, 16, 1), np.uint8), [0, 1])
  months, probs, heatmaps = gradcam.predict_with_gradcam(model, _images(0), [])
  assert months.shape == (0,) and probs.shape == (0, 3) and heatmaps.shape == (0, SIZE_PX, SIZE_PX)
