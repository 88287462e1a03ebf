"""Training augmentation as pure TensorFlow ops, seeded per example.

Every op takes and returns one letterboxed uint8 image (S, S, 1), so the
model sees at training time exactly the dtype and range it gets when serving.
Rotation, zoom and flip are composed into ONE projective transform and
resampled once (bilinear, black fill like the letterbox padding), so
combining them does not blur the image three times.

Randomness is stateless: each example's parameters are drawn from
`tf.random.stateless_*` with the seed (run seed, global example index). The
augmented stream is then a pure function of the run seed and the position
in the input stream, whatever the number of workers, threads or restarts;
exact resume only needs the tf.data iterator's position.
"""

import math

import tensorflow as tf

from trainer import configs

# Indices folded into an example's seed, one per random decision, so that
# adding an op never changes the draws of the others.
_ANGLE, _SCALE, _FLIP, _BRIGHTNESS, _CONTRAST = range(5)


def affine_transform(size_px: int, angle_rad, scale, flip) -> tf.Tensor:
  """The 8-vector of ImageProjectiveTransformV3 for rotate + zoom (+ mirror).

  Maps an OUTPUT pixel (x, y) to the input pixel it samples. Rotation and
  zoom are about the image centre; positive angles turn the picture
  counter-clockwise as displayed (like tf.image.rot90); scale > 1 zooms in.

  Args:
    size_px: S of the square image.
    angle_rad: scalar rotation in radians.
    scale: scalar zoom factor (> 0).
    flip: scalar bool, mirror left-right after rotating and zooming.
  """
  angle = tf.cast(angle_rad, tf.float32)
  inv_scale = 1.0 / tf.cast(scale, tf.float32)
  cos, sin = tf.cos(angle) * inv_scale, tf.sin(angle) * inv_scale
  centre = (size_px - 1) / 2.0
  # input = M (output - c) + c with M = R(angle) / scale (R counter-clockwise in y-down pixels).
  a0, a1, b0, b1 = cos, -sin, sin, cos
  a2 = centre - a0 * centre - a1 * centre
  b2 = centre - b0 * centre - b1 * centre
  # Mirroring the output substitutes x -> (S - 1) - x.
  sign = tf.where(tf.cast(flip, tf.bool), -1.0, 1.0)
  shift = tf.where(tf.cast(flip, tf.bool), float(size_px - 1), 0.0)
  a2, b2 = a2 + a0 * shift, b2 + b0 * shift
  a0, b0 = a0 * sign, b0 * sign
  zero = tf.zeros_like(a0)
  return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


def apply_transform(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
  """Resamples an (S, S, 1) uint8 image with an 8-vector transform (bilinear, black fill)."""
  pixels = tf.cast(image, tf.float32)[tf.newaxis]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=pixels, transforms=tf.reshape(transform, (1, 8)), output_shape=tf.shape(image)[:2],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
  return _to_uint8(out)


def rotate(image: tf.Tensor, angle_rad) -> tf.Tensor:
  return apply_transform(image, affine_transform(image.shape[0], angle_rad, 1.0, False))


def zoom(image: tf.Tensor, scale) -> tf.Tensor:
  return apply_transform(image, affine_transform(image.shape[0], 0.0, scale, False))


def flip_left_right(image: tf.Tensor) -> tf.Tensor:
  return apply_transform(image, affine_transform(image.shape[0], 0.0, 1.0, True))


def brightness_contrast(image: tf.Tensor, brightness_delta, contrast_factor) -> tf.Tensor:
  """Contrast about the image mean, then an additive shift (fraction of 255); uint8 out."""
  pixels = tf.cast(image, tf.float32)
  mean = tf.reduce_mean(pixels)
  out = (pixels - mean) * tf.cast(contrast_factor, tf.float32) + mean + tf.cast(brightness_delta, tf.float32) * 255.0
  return _to_uint8(out)


def _to_uint8(pixels: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)


def _uniform(seed, index, low, high):
  op_seed = tf.random.experimental.stateless_fold_in(seed, index)
  return tf.random.stateless_uniform((), op_seed, minval=low, maxval=high)


def random_augment(image: tf.Tensor, seed: tf.Tensor, config: configs.AugmentConfig) -> tf.Tensor:
  """Applies the configured random augmentation to one (S, S, 1) uint8 image.

  Args:
    image: (S, S, 1) uint8 with a static S.
    seed: int64 (2,) stateless seed, e.g. (run seed, example index).
    config: ranges; zero ranges skip the op entirely (no resampling).
  """
  seed = tf.cast(seed, tf.int64)
  geometric = config.rotation_max_deg > 0 or config.zoom_max_fraction > 0 or config.flip_left_right
  if geometric:
    max_rad = math.radians(config.rotation_max_deg)
    angle = _uniform(seed, _ANGLE, -max_rad, max_rad)
    scale = _uniform(seed, _SCALE, 1.0 - config.zoom_max_fraction, 1.0 + config.zoom_max_fraction)
    flip = _uniform(seed, _FLIP, 0.0, 1.0) < 0.5 if config.flip_left_right else tf.constant(False)
    image = apply_transform(image, affine_transform(image.shape[0], angle, scale, flip))
  if config.brightness_max_delta > 0 or config.contrast_max_fraction > 0:
    delta = _uniform(seed, _BRIGHTNESS, -config.brightness_max_delta, config.brightness_max_delta)
    factor = _uniform(seed, _CONTRAST, 1.0 - config.contrast_max_fraction, 1.0 + config.contrast_max_fraction)
    image = brightness_contrast(image, delta, factor)
  return image
