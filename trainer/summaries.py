"""TensorBoard output: scalars, Grad-CAM overlays and hyperparameters.

Only the chief writes (<model_dir>/logs/train and logs/validation); other
workers get no-op writers so the training loop needs no `if chief` branches.
"""

import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from trainer import configs


class Writers:
  """The train and validation summary writers of one run."""

  def __init__(self, model_dir: str, chief: bool):
    if chief:
      self.train = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "train"))
      self.validation = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "validation"))
    else:
      self.train = self.validation = tf.summary.create_noop_writer()

  def flush(self):
    self.train.flush()
    self.validation.flush()


def write_scalars(writer, step: int, values: dict) -> None:
  with writer.as_default(step=step):
    for name, value in values.items():
      tf.summary.scalar(name, float(value))


def flat_hparams(config: configs.ExperimentConfig) -> dict:
  """Scalar config fields as 'section.field' -> value, the form the HParams plugin takes."""
  flat = {"experiment": config.name}
  for section, fields in configs.to_dict(config).items():
    if isinstance(fields, dict):
      for field, value in fields.items():
        if isinstance(value, (bool, int, float, str)):
          flat[f"{section}.{field}"] = value
  return flat


def write_hparams(writer, config: configs.ExperimentConfig) -> None:
  with writer.as_default(step=0):
    hparams_api.hparams(flat_hparams(config), trial_id=config.name)


def heatmap_overlay(images_uint8: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """(B,S,S,1) uint8 radiographs + (B,S,S) heat in [0,1] -> (B,S,S,3) uint8 overlays.

  A blue-to-red ramp (cold = no contribution) blended over the grey image, so
  the hand stays readable beneath the heat.
  """
  grey = images_uint8[..., 0].astype(np.float32) / 255.0
  heat = np.clip(heatmaps.astype(np.float32), 0.0, 1.0)
  colour = np.stack([np.clip(1.5 - np.abs(4 * heat - c), 0, 1) for c in (3.0, 2.0, 1.0)], axis=-1)  # jet-like
  blended = (1 - alpha) * grey[..., None] + alpha * colour
  return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def write_gradcam(writer, step: int, images_uint8: np.ndarray, heatmaps: np.ndarray, captions: list[str]) -> None:
  overlays = heatmap_overlay(images_uint8, heatmaps)
  with writer.as_default(step=step):
    tf.summary.image("gradcam", overlays, max_outputs=len(overlays), description="; ".join(captions))
