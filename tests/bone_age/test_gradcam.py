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
  """A tiny model whose Grad-CAM is provably non-trivial and depends on sex.

  With random weights an image can have no positive Grad-CAM evidence at all
  (a correct all-zero map that would make the assertions vacuous), depending on
  the seed. Here every head kernel on the image path is non-negative, so
  d(months)/d(features) >= 0 and the ReLU'd backbone features give a positive
  map. Backbone channels 0-15 reach the month head only through fusion units
  0-511, which a male sex input switches off; so a boy's map comes from
  channels 16-31 alone and a girl's from all 32: the maps must differ.
  """
  keras.utils.set_random_seed(0)
  model = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)

  def set_kernel(name, fn):
    layer = model.get_layer(name)
    kernel, bias = layer.get_weights()
    layer.set_weights([fn(kernel), bias])

  first_half_channels = np.arange(32) < 16
  first_half_units = np.arange(1024) < 512
  set_kernel("image_dense", lambda k: np.abs(k) * (first_half_channels[:, None] == first_half_units[None, :]))
  set_kernel("sex_dense", lambda k: np.abs(k) * 10.0)  # male -> large positive sex features, female -> 0

  def fusion_kernel(k):
    k = np.abs(k)
    k[:1024] *= first_half_units[:, None] == first_half_units[None, :]  # image units, block diagonal
    k[1024:] = np.where(first_half_units[None, :], -50.0, 0.0)  # sex features switch off units 0-511
    return k

  set_kernel("fusion_dense1", fusion_kernel)
  set_kernel("fusion_dense2", np.abs)
  set_kernel(ba_model.AGE_UNIT_LAYER, np.abs)
  # Scale the month head so predictions stay inside (0, 240), away from the clamp.
  head = model.get_layer(ba_model.AGE_UNIT_LAYER)
  body = keras.Model(model.inputs, model.get_layer("fusion_dense2").output)
  x = {ba_model.IMAGE_INPUT: _images(8, seed=99), ba_model.MALE_INPUT: np.zeros((8, 1), np.float32)}
  kernel, bias = head.get_weights()
  scale = 0.3 / float(np.mean(body(x, training=False).numpy() @ kernel))
  head.set_weights([kernel * scale, np.full_like(bias, 0.2)])
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
  return float(out[ba_model.AGE_OUTPUT][0, 0]), cam / cam.max() if cam.max() > 0 else cam


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


def test_works_on_a_model_built_under_a_distribution_strategy(model):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    mirrored = ba_model.build_model(image_size_px=SIZE_PX, age_group_edges_months=EDGES, backbone="tiny", weights=None)
  mirrored.set_weights(model.get_weights())
  images, male = _images(3, seed=4), np.array([0, 1, 1])
  months, _, heatmaps = gradcam.predict_with_gradcam(mirrored, images, male)
  expected_months, _, expected_maps = gradcam.predict_with_gradcam(model, images, male)
  np.testing.assert_allclose(months, expected_months, rtol=1e-5)
  np.testing.assert_allclose(heatmaps, expected_maps, atol=1e-5)
  assert (expected_maps.max(axis=(1, 2)) > 0).all()


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


def _features(model, images, male):
  feature_model = keras.Model(model.inputs, ba_model.backbone_feature_tensor(model))
  return feature_model({ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male.reshape(-1, 1).astype("f4")},
                       training=False).numpy()


def test_head_outputs_from_features_equal_the_whole_model(model):
  images = _images(4, seed=5)
  male = np.array([0, 1, 1, 0], np.float32)
  outputs = gradcam.head_outputs(model, tf.constant(_features(model, images, male)), tf.constant(male[:, None]))
  expected = model({ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male[:, None]}, training=False)
  for name in (ba_model.AGE_OUTPUT, ba_model.GROUP_OUTPUT):
    np.testing.assert_allclose(np.asarray(outputs[name]), expected[name].numpy(), rtol=1e-5, atol=1e-6)


def test_head_gradcam_from_features_matches_the_whole_model_gradcam(model):
  images = _images(6, seed=6)
  male = np.array([0, 1, 0, 1, 1, 0], np.float32)
  _, _, whole = gradcam.predict_with_gradcam(model, images, male)
  head = gradcam.heatmaps_from_features(model, _features(model, images, male), male)
  assert head.shape == whole.shape and head.dtype == np.float32
  assert (whole.max(axis=(1, 2)) > 0).all()  # non-trivial maps, so the correlation means something
  for i in range(len(images)):
    assert np.corrcoef(head[i].ravel(), whole[i].ravel())[0, 1] >= 0.99
  np.testing.assert_allclose(head, whole, atol=1e-4)


def test_head_gradcam_uses_each_images_own_sex(model):
  image = _images(1, seed=7)
  both = np.concatenate([image, image])
  male = np.array([0, 1], np.float32)
  head = gradcam.heatmaps_from_features(model, _features(model, both, male), male)
  assert np.abs(head[0] - head[1]).max() > 1e-3


def test_head_gradcam_rejects_mismatched_sex_count(model):
  with pytest.raises(ValueError, match="one sex per image"):
    gradcam.heatmaps_from_features(model, np.zeros((2, 4, 4, 32), np.float32), np.zeros(3))


def test_model_still_saves_after_head_gradcam(model, tmp_path):
  male = np.array([0, 1], np.float32)
  gradcam.heatmaps_from_features(model, _features(model, _images(2), male), male)
  model.save(str(tmp_path / "after_head_gradcam.keras"))
  keras.saving.load_model(str(tmp_path / "after_head_gradcam.keras"), safe_mode=True)
