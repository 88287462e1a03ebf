"""Each augmentation op eagerly AND inside tf.data (they must agree), with known answers."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import augment
from trainer import configs

SIZE = 24


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (SIZE, SIZE, 1)).astype(np.uint8)
  return tf.constant(pixels)


def in_tf_data(fn, image):
  """The same op run as a tf.data map (graph mode, no Python)."""
  return next(iter(tf.data.Dataset.from_tensors(image).map(fn)))


OPS = {
    "rotate": lambda im: augment.rotate(im, np.pi / 7),
    "zoom": lambda im: augment.zoom(im, 1.3),
    "flip": augment.flip_left_right,
    "brightness_contrast": lambda im: augment.brightness_contrast(im, 0.1, 1.3),
    "random": lambda im: augment.random_augment(im, tf.constant([3, 11], tf.int64), configs.AugmentConfig(
        rotation_max_deg=15, zoom_max_fraction=0.2, flip_left_right=True, brightness_max_delta=0.1,
        contrast_max_fraction=0.3)),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_identical_eagerly_and_in_tf_data(name, image):
  eager = OPS[name](image)
  graph = in_tf_data(OPS[name], image)
  assert eager.dtype == tf.uint8 and eager.shape == (SIZE, SIZE, 1)
  np.testing.assert_array_equal(eager.numpy(), graph.numpy())


def test_geometric_ops_match_known_transforms(image):
  np.testing.assert_array_equal(augment.rotate(image, np.pi / 2).numpy(), tf.image.rot90(image).numpy())
  np.testing.assert_array_equal(augment.flip_left_right(image).numpy(), tf.image.flip_left_right(image).numpy())
  np.testing.assert_array_equal(augment.zoom(image, 1.0).numpy(), image.numpy())
  # Zooming in by 2 about the centre turns a central 4x4 bright square into ~8x8.
  square = np.zeros((SIZE, SIZE, 1), np.uint8)
  square[10:14, 10:14] = 255
  bright = int((augment.zoom(tf.constant(square), 2.0).numpy() > 128).sum())
  assert 49 <= bright <= 81, bright
  # Zooming out leaves a black (letterbox-like) border.
  assert augment.zoom(image, 0.5).numpy()[0, :, 0].max() == 0


def test_brightness_contrast_arithmetic():
  flat = tf.fill((4, 4, 1), tf.constant(100, tf.uint8))
  assert augment.brightness_contrast(flat, 0.1, 2.0).numpy().max() == 126  # contrast about the mean, +25.5
  assert augment.brightness_contrast(flat, 1.0, 1.0).numpy().min() == 255  # clipped, not wrapped


def test_random_augment_is_a_function_of_the_seed(image):
  config = configs.AugmentConfig(rotation_max_deg=20, zoom_max_fraction=0.2, flip_left_right=True,
                                 brightness_max_delta=0.1, contrast_max_fraction=0.2)
  first = augment.random_augment(image, tf.constant([1, 5], tf.int64), config).numpy()
  again = augment.random_augment(image, tf.constant([1, 5], tf.int64), config).numpy()
  other = augment.random_augment(image, tf.constant([1, 6], tf.int64), config).numpy()
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_disabled_augmentation_is_the_identity(image):
  out = augment.random_augment(image, tf.constant([1, 2], tf.int64), configs.AugmentConfig())
  np.testing.assert_array_equal(out.numpy(), image.numpy())
