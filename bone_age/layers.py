"""Custom Keras layers of the bone age model (keras.ops only: any backend).

Everything that must be identical at training and serving time lives inside
the model as one of these layers, so the exported model takes the raw
letterboxed uint8 radiograph and the sex, nothing else. Each layer is
registered as serializable so a `.keras` file loads in safe mode (no Lambda
layers, no pickled Python code).
"""

from collections.abc import Sequence

import keras
from keras import ops

from bone_age import age_groups

_PACKAGE = "bone_age"

# How each keras.applications family expects its input pixels. "tf" is the
# Xception / Inception / MobileNet convention ([-1, 1]); "torch" is ImageNet
# mean/std on [0, 1]; "caffe" is BGR minus the ImageNet mean on [0, 255];
# "raw" is [0, 255] for models that normalise internally (EfficientNet,
# ConvNeXt, RegNet, MobileNetV3).
SCALING_MODES = ("tf", "torch", "caffe", "raw")
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GreyToBackboneInput(keras.layers.Layer):
  """uint8 grey (B, S, S, 1) -> float (B, S, S, 3) in the backbone's pixel range.

  ImageNet backbones expect three channels; a radiograph is grey, so the one
  channel is replicated (as the seed notebook did) after scaling. Scaling
  happens here rather than in the input pipeline so the exported model and
  the trainer can never disagree about it.
  """

  def __init__(self, mode: str = "tf", **kwargs):
    super().__init__(**kwargs)
    if mode not in SCALING_MODES:
      raise ValueError(f"unknown pixel scaling mode {mode!r}; expected one of {SCALING_MODES}")
    self.mode = mode

  def call(self, image):
    grey = ops.cast(image, self.compute_dtype)
    rgb = ops.concatenate([grey, grey, grey], axis=-1)
    if self.mode == "tf":
      return rgb / 127.5 - 1.0
    if self.mode == "torch":
      mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=self.compute_dtype)
      std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=self.compute_dtype)
      return (rgb / 255.0 - mean) / std
    if self.mode == "caffe":
      # Grey replicated, so the BGR reordering is a no-op; only the mean differs per channel.
      return rgb - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
    return rgb

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (3,)

  def get_config(self):
    return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClampedMonths(keras.layers.Layer):
  """A unit-scale regression output -> bone age in months, clamped to [0, max].

  The Dense layer before it predicts age / 240 (the scale of the loss's
  normalised MAE, as in the seed), so its weights stay O(1) and Adam's
  per-parameter step (~learning rate) moves predictions by a sensible amount;
  predicting raw months directly would need a bias near 120, i.e. ~10^6 Adam
  steps at lr 1e-4. The clamp uses a straight-through gradient: the forward
  value is always within [0, max] (a bone age cannot be negative or beyond
  adulthood), but an out-of-range prediction still gets a gradient back
  towards its target instead of the zero gradient of a plain clip, which
  could strand it. Sigmoid would also bound the output but saturates exactly
  at the youngest and oldest ages, where the labels are sparsest.
  """

  def __init__(self, max_age_months: float = age_groups.MAX_AGE_MONTHS, **kwargs):
    super().__init__(**kwargs)
    self.max_age_months = float(max_age_months)

  def call(self, unit_age):
    months = ops.cast(unit_age, self.compute_dtype) * self.max_age_months
    clamped = ops.clip(months, 0.0, self.max_age_months)
    return months + ops.stop_gradient(clamped - months)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "max_age_months": self.max_age_months}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AgeGroupSoftmax(keras.layers.Dense):
  """Softmax over the age groups, carrying the group edges it was trained on.

  The edges (inner bin boundaries in months) are part of the layer config, so
  they are saved in `model.keras`, and every consumer (exporter, evaluator,
  scorer) reads them from the model rather than from a side file that could
  drift from the weights.
  """

  def __init__(self, age_group_edges_months: Sequence[float], **kwargs):
    edges = [float(e) for e in age_group_edges_months]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
      raise ValueError(f"age_group_edges_months must be a non-empty increasing list, got {edges}")
    kwargs.pop("units", None)
    kwargs.pop("activation", None)
    super().__init__(units=len(edges) + 1, activation="softmax", **kwargs)
    self.age_group_edges_months = edges

  def get_config(self):
    config = super().get_config()
    config.pop("units", None)
    config.pop("activation", None)
    return {**config, "age_group_edges_months": list(self.age_group_edges_months)}
