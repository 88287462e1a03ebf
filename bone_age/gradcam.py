"""Grad-CAM of the bone age regression head, batched, with each patient's own sex.

The seed notebook computed its heatmaps with sex fixed to female, so a boy's
heatmap explained a prediction nobody reported. Here one forward pass per
batch returns the backbone features and the outputs together, and one
gradient tape gives d(months)/d(features) for every image at once, using the
same male input that produced the returned months. TensorFlow backend only.

`heatmaps_from_features` serves inference engines that already computed the
backbone's feature map (OpenVINO, a compiled forward): it replays only the
small head (pooling and dense layers) on those features under a tape, so the
backbone is never run twice and the map equals the whole-model Grad-CAM when
the features do.
"""

import weakref

import keras
import numpy as np

from bone_age import model as ba_model

DEFAULT_BATCH_SIZE = 16

_CACHE: "weakref.WeakKeyDictionary[keras.Model, object]" = weakref.WeakKeyDictionary()
_HEAD_CACHE: "weakref.WeakKeyDictionary[keras.Model, object]" = weakref.WeakKeyDictionary()


def _gradcam_function(model: keras.Model):
  """A compiled (B,S,S,1) uint8 + (B,1) male -> (months, probs, heatmaps) function, cached per model."""
  if model in _CACHE:
    return _CACHE[model]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  # Built from tensors already in the model's graph: no layer is called again,
  # so the model gains no graph nodes and still saves (a head model starting at
  # the intermediate tensor would re-call the head layers and break model.save).
  grad_model = keras.Model(model.inputs, [ba_model.backbone_feature_tensor(model), model.output])
  # Watched explicitly so the features are on the tape even when the backbone is
  # frozen (non-trainable variables are not watched automatically). Only the
  # gradient w.r.t. the features is asked for, so backprop stops at the head.
  backbone_variables = [v.value for v in ba_model.backbone_feature_layer(model).weights]
  size_px = ba_model.image_size_px(model)

  @tf.function(reduce_retracing=True)
  def run(image, male):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      for variable in backbone_variables:
        tape.watch(variable)
      feats, outputs = grad_model({ba_model.IMAGE_INPUT: image, ba_model.MALE_INPUT: male}, training=False)
      # Samples are independent at inference (BatchNorm uses moving stats), so the
      # gradient of the batch sum is each image's own gradient.
      target = tf.reduce_sum(outputs[ba_model.AGE_OUTPUT])
    grads = tf.cast(tape.gradient(target, feats), tf.float32)
    cam = _cam(tf.cast(feats, tf.float32), grads, size_px)
    return outputs[ba_model.AGE_OUTPUT][:, 0], outputs[ba_model.GROUP_OUTPUT], cam

  _CACHE[model] = run
  return run


def _cam(feats32, grads, size_px: int):
  """Channel-weighted, ReLU'd feature map, resized to (B, S, S) and scaled to [0, 1] per image."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
  cam = tf.nn.relu(tf.reduce_sum(channel_weights * feats32, axis=-1, keepdims=True))
  cam = tf.image.resize(cam, (size_px, size_px), method="bilinear")[..., 0]
  peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
  # An all-zero map (no positive evidence) stays zero instead of dividing by zero.
  return tf.clip_by_value(tf.math.divide_no_nan(cam, peak), 0.0, 1.0)


def head_outputs(model: keras.Model, features, male) -> dict:
  """The model's outputs computed from backbone features: only the layers after the backbone run.

  A sub-model starting at the backbone's output tensor would clone the head's
  graph nodes into the layers and break `model.save`; calling the layers on
  concrete tensors adds no nodes. The replay walks the model's own graph in
  depth order (as Keras' Functional does) and evaluates every node whose inputs
  are known, starting from the features and the male input, so any head
  architecture works without naming its layers.

  Args:
    model: a bone age model.
    features: (B, h, w, C) backbone output (a tensor or array).
    male: (B, 1) float32.

  Returns:
    {AGE_OUTPUT: (B, 1), GROUP_OUTPUT: (B, G)} tensors.
  """
  feature_tensor = ba_model.backbone_feature_tensor(model)
  male_tensor = model.input[ba_model.MALE_INPUT]
  known = {id(feature_tensor): features, id(male_tensor): male}
  nodes_by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  for depth in sorted(nodes_by_depth, reverse=True):
    for node in nodes_by_depth[depth]:
      if not node.operation or node.is_input or any(id(x) not in known for x in node.input_tensors):
        continue
      args, kwargs = node.arguments.fill_in(known)
      if getattr(node.operation, "_call_has_training_arg", False):
        kwargs["training"] = False
      outputs = node.operation(*args, **kwargs)
      for symbolic, value in zip(node.outputs, keras.tree.flatten(outputs)):
        known[id(symbolic)] = value
  return {name: known[id(tensor)] for name, tensor in model.output.items()}


def _head_gradcam_function(model: keras.Model):
  """A compiled (B,h,w,C) features + (B,1) male -> heatmaps (B,S,S) function, cached per model."""
  cached = _HEAD_CACHE.get(model)
  if cached is not None:
    return cached
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  size_px = ba_model.image_size_px(model)

  @tf.function(reduce_retracing=True)
  def run(features, male):
    with tf.GradientTape() as tape:
      tape.watch(features)
      outputs = head_outputs(model, features, male)
      # Samples are independent at inference, so the batch sum's gradient is each image's own.
      target = tf.reduce_sum(outputs[ba_model.AGE_OUTPUT])
    grads = tf.cast(tape.gradient(target, features), tf.float32)
    return _cam(tf.cast(features, tf.float32), grads, size_px)

  _HEAD_CACHE[model] = run
  return run


def heatmaps_from_features(model: keras.Model, features, male) -> np.ndarray:
  """Grad-CAM of the month head from precomputed backbone features.

  Args:
    model: the bone age model whose backbone produced `features`.
    features: (B, h, w, C) float32 backbone output, e.g. from an inference engine.
    male: (B,) 1 = male, 0 = female: each image's own sex.

  Returns:
    (B, S, S) float32 heatmaps in [0, 1], as `predict_with_gradcam` returns them.

  Raises:
    ValueError: if features and male disagree in batch size.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  features = np.asarray(features, dtype=np.float32)
  male = np.asarray(male, dtype=np.float32).reshape(-1, 1)
  if features.ndim != 4 or features.shape[0] != male.shape[0]:
    raise ValueError(f"features must be (B, h, w, C) with one sex per image, got {features.shape} and "
                     f"{male.shape[0]} sex values")
  return _head_gradcam_function(model)(tf.constant(features), tf.constant(male)).numpy()


def predict_with_gradcam(model: keras.Model, images_uint8, male, *,
                         batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Predictions and Grad-CAM heatmaps of the month head.

  Args:
    model: a bone age model (build_model or load_export).
    images_uint8: (B, S, S, 1) or (B, S, S) uint8 letterboxed radiographs.
    male: (B,) 1 = male, 0 = female: each image's own sex.
    batch_size: images per tape (memory bound, not a semantic choice).

  Returns:
    months (B,) float32, group_probs (B, G) float32 and heatmaps (B, S, S)
    float32 in [0, 1] (ReLU'd and scaled by each image's own maximum).

  Raises:
    ValueError: if the shapes do not match the model or each other.
  """
  images = np.asarray(images_uint8)
  if images.ndim == 3:
    images = images[..., None]
  size_px = ba_model.image_size_px(model)
  if images.ndim != 4 or images.shape[1:] != (size_px, size_px, 1):
    raise ValueError(f"images must be (B, {size_px}, {size_px}, 1), got {images.shape}")
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (the model scales them itself), got {images.dtype}")
  male = np.asarray(male, dtype=np.float32).reshape(-1, 1)
  if male.shape[0] != images.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {male.shape[0]} sex values")
  run = _gradcam_function(model)
  months, probs, heatmaps = [], [], []
  for start in range(0, images.shape[0], batch_size):
    m, p, h = run(images[start:start + batch_size], male[start:start + batch_size])
    months.append(m.numpy())
    probs.append(p.numpy())
    heatmaps.append(h.numpy())
  if not months:
    groups = len(ba_model.age_group_edges(model)) + 1
    return (np.zeros((0,), np.float32), np.zeros((0, groups), np.float32),
            np.zeros((0, size_px, size_px), np.float32))
  return np.concatenate(months), np.concatenate(probs), np.concatenate(heatmaps)
