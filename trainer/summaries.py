"""TensorBoard output: scalars, Grad-CAM overlays and hyperparameters.

Only the chief writes; other workers get no-op writers so the training loop
needs no `if chief` branches. Layout under <model_dir>/logs:
  train/        `train/*` scalars (one point per logging window)
  validation/   `validation/*` scalars and `validation/gradcam` images
  (the root)    the HParams session: the hyperparameters that matter first
                and, as its metrics, the validation scalars above.
Tags carry their run's name as a prefix so the scalar dashboard shows a
`train` and a `validation` group instead of one flat list.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from trainer import configs

TRAIN = "train"
VALIDATION = "validation"
GRADCAM_TAG = f"{VALIDATION}/gradcam"

# The hyperparameters a reader compares runs by, in the HParams table's column
# order; any other field appears only where it differs from the base config.
KEY_HPARAMS = ("experiment", "model.backbone", "model.weights", "data.config_name", "data.global_batch_size",
               "optimizer.learning_rate", "optimizer.schedule", "train.train_steps", "runtime.precision")
# Validation scalars shown as HParams metrics (tag, display name), best first.
HPARAM_METRICS = (("best_mae_months", "best val MAE (months)"), ("mae_months", "val MAE (months)"),
                  ("qwk", "val QWK"), ("r2", "val R2"), ("group_accuracy", "val age-group accuracy"))

class Writers:
  """The train and validation summary writers of one run."""

  def __init__(self, model_dir: str, chief: bool):
    logs = os.path.join(model_dir, "logs")
    if chief:
      self.session = tf.summary.create_file_writer(logs)
      self.train = tf.summary.create_file_writer(os.path.join(logs, TRAIN))
      self.validation = tf.summary.create_file_writer(os.path.join(logs, VALIDATION))
    else:
      self.session = self.train = self.validation = tf.summary.create_noop_writer()

  def flush(self):
    for writer in (self.session, self.train, self.validation):
      writer.flush()


def write_scalars(writer, step: int, group: str, values: dict) -> None:
  """Each value as the scalar `<group>/<name>`; None (undefined) values are skipped."""
  with writer.as_default(step=step):
    for name, value in values.items():
      if value is not None:
        tf.summary.scalar(f"{group}/{name}", float(value))


def flat_hparams(config: configs.ExperimentConfig) -> dict:
  """Scalar config fields as 'section.field' -> value, the form the HParams plugin takes."""
  flat = {"experiment": config.name}
  for section, fields in configs.to_dict(config).items():
    if isinstance(fields, dict):
      for field, value in fields.items():
        if isinstance(value, (bool, int, float, str)):
          flat[f"{section}.{field}"] = value
  return flat


def shown_hparams(config: configs.ExperimentConfig) -> dict:
  """KEY_HPARAMS first, then only the fields that differ from the base config (what a sweep varies)."""
  flat = flat_hparams(config)
  base = flat_hparams(dataclasses.replace(configs.ExperimentConfig(), name=config.name))
  shown = {key: flat[key] for key in KEY_HPARAMS if key in flat}
  shown.update({k: v for k, v in flat.items() if k not in shown and base.get(k) != v})
  return shown


def write_hparams(writer, config: configs.ExperimentConfig) -> None:
  """The HParams experiment (columns and validation metrics) and this run's values."""
  values = shown_hparams(config)
  metrics = [hparams_api.Metric(f"{VALIDATION}/{tag}", group=VALIDATION, display_name=name)
             for tag, name in HPARAM_METRICS]
  with writer.as_default(step=0):
    hparams_api.hparams_config(hparams=[hparams_api.HParam(k) for k in values], metrics=metrics)
    hparams_api.hparams(values, trial_id=config.name)


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


def balanced_by_sex(male: np.ndarray, count: int) -> np.ndarray:
  """Indices of up to `count` examples, girls and boys alternating while both last, in input order."""
  girls, boys = list(np.flatnonzero(male <= 0.5)), list(np.flatnonzero(male > 0.5))
  chosen = []
  while len(chosen) < count and (girls or boys):
    for pool in (girls, boys):
      if pool and len(chosen) < count:
        chosen.append(pool.pop(0))
  return np.asarray(sorted(chosen), dtype=np.int64)


def _captioned(overlay: np.ndarray, caption: str, min_size_px: int = 256) -> np.ndarray:
  """The overlay enlarged to at least `min_size_px` with its caption drawn in a strip below.

  TensorBoard hides an image's description behind a tooltip; drawn into the
  image, the caption is read together with the heatmap it explains.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  size_px = max(overlay.shape[0], min_size_px)
  image = cv2.resize(overlay, (size_px, size_px), interpolation=cv2.INTER_NEAREST)
  strip = np.zeros((max(20, size_px // 10), size_px, 3), np.uint8)
  (width_at_one, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
  scale = min(strip.shape[0] / 40.0, (size_px - 8) / max(width_at_one, 1))
  cv2.putText(strip, caption, (4, int(strip.shape[0] * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
              1, cv2.LINE_AA)
  return np.concatenate([image, strip], axis=0)


def write_gradcam(writer, step: int, images_uint8: np.ndarray, heatmaps: np.ndarray, captions: list[str]) -> None:
  """The Grad-CAM overlays of one evaluation, each captioned (in the image and in the description)."""
  overlays = np.stack([_captioned(o, c) for o, c in zip(heatmap_overlay(images_uint8, heatmaps), captions)])
  with writer.as_default(step=step):
    tf.summary.image(GRADCAM_TAG, overlays, max_outputs=len(overlays),
                     description="; ".join(f"{i + 1}: {c}" for i, c in enumerate(captions)))
