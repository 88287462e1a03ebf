"""Grad-CAM of the bone age regression head, batched, with each patient's own sex.

The seed notebook computed its heatmaps with sex fixed to female, so a boy's
heatmap explained a prediction nobody reported. Here one forward pass per
batch returns the backbone features and the outputs together, and one
gradient tape gives d(months)/d(features) for every image at once, using the
same male input that produced the returned months. TensorFlow backend only.
"""

import weakref

import keras
import numpy as np

from bone_age import model as ba_model

DEFAULT_BATCH_SIZE = 16

_CACHE: "weakref.WeakKeyDictionary[keras.Model, object]" = weakref.WeakKeyDictionary()


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
    feats32 = tf.cast(feats, tf.float32)
    channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(channel_weights * feats32, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, (size_px, size_px), method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    # An all-zero map (no positive evidence) stays zero instead of dividing by zero.
    cam = tf.math.divide_no_nan(cam, peak)
    return outputs[ba_model.AGE_OUTPUT][:, 0], outputs[ba_model.GROUP_OUTPUT], tf.clip_by_value(cam, 0.0, 1.0)

  _CACHE[model] = run
  return run


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
