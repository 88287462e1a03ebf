"""The RunInference model handler: an exported bone-age model, batched.

Beam's TensorFlow handlers import tensorflow_hub and take one input tensor;
this model takes two (image and sex), so a small handler loads the export
(Keras safe mode) once per worker and runs fixed-size batches: the last,
partial batch is padded so the compiled forward (or Grad-CAM) function is
traced once, not once per batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference import base

METRICS_NAMESPACE = "boneage_score"


@dataclasses.dataclass
class ScoreRequest:
  """What the model sees for one image: letterboxed pixels and a sex."""
  image: np.ndarray  # (S, S) uint8
  male: float  # 1.0 male, 0.0 female


@dataclasses.dataclass
class Inference:
  """The model's answer for one request."""
  boneage_months: float
  group_probabilities: np.ndarray  # (G,) float32
  heatmap: np.ndarray | None  # (S, S) float32 in [0, 1], with Grad-CAM only


def stack_requests(batch: Sequence[ScoreRequest], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(B', S, S, 1) uint8 images and (B',) float32 sexes, zero-padded up to batch_size."""
  images = np.stack([r.image for r in batch])[..., None]
  male = np.asarray([r.male for r in batch], dtype=np.float32)
  pad = batch_size - len(batch)
  if pad > 0:
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    male = np.concatenate([male, np.zeros((pad,), male.dtype)])
  return images, male


def forward(model, images: np.ndarray, male: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Plain batched forward pass: months (B,), group probabilities (B, G)."""
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  outputs = model.predict_on_batch({ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male[:, None]})
  return np.asarray(outputs[ba_model.AGE_OUTPUT]).reshape(-1), np.asarray(outputs[ba_model.GROUP_OUTPUT])


class BoneAgeModelHandler(base.ModelHandler[ScoreRequest, Inference, Any]):
  """Loads `<export_dir>` (bone_age.export layout) and scores ScoreRequests.

  Args:
    export_dir: An export directory (has export_metadata.json).
    batch_size: Images per forward pass; BatchElements is pinned to it.
    gradcam: Also compute the regression head's Grad-CAM, with each image's
      own sex, in the same batched pass.
  """

  def __init__(self, export_dir: str, *, batch_size: int = 8, gradcam: bool = False):
    super().__init__()
    self._export_dir = export_dir
    self._batch_size = int(batch_size)
    self._gradcam = bool(gradcam)

  def load_model(self):
    from bone_age import export  # pylint: disable=g-import-not-at-top

    model, _ = export.load_export(self._export_dir)
    # RunInference's shared handle keeps this object alive for the worker's
    # lifetime: the model is loaded once per worker process, not per bundle.
    return model

  def run_inference(self, batch: Sequence[ScoreRequest], model, inference_args=None) -> Iterable[base.PredictionResult]:
    del inference_args
    count = len(batch)
    size = max(self._batch_size, count)
    images, male = stack_requests(batch, size)
    if self._gradcam:
      from bone_age import gradcam  # pylint: disable=g-import-not-at-top
      months, probs, heatmaps = gradcam.predict_with_gradcam(model, images, male, batch_size=size)
      heatmaps = np.asarray(heatmaps, dtype=np.float32)
    else:
      months, probs = forward(model, images, male)
      heatmaps = None
    months = np.asarray(months, dtype=np.float32).reshape(-1)
    probs = np.asarray(probs, dtype=np.float32)
    return [
        base.PredictionResult(
            request, Inference(float(months[i]), probs[i], None if heatmaps is None else heatmaps[i]))
        for i, request in enumerate(batch)
    ]

  def get_num_bytes(self, batch: Sequence[ScoreRequest]) -> int:
    return sum(r.image.nbytes for r in batch)

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE

  def batch_elements_kwargs(self):
    return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}
