"""The RunInference model handler: an exported bone-age model, batched.

Beam's TensorFlow handlers import tensorflow_hub and take one input tensor;
this model takes two (image and sex), so a small handler loads the export
(Keras safe mode) and runs fixed-size batches: the last, partial batch is
padded so the compiled forward (or Grad-CAM) function is traced once, not
once per batch size.

On a GPU worker Dataflow starts one SDK process per vCPU; if each loaded the
model, each would reserve the GPU's memory and fight over it. There the
handler asks RunInference to share the model across processes
(`apache_beam.utils.multi_process_shared`): the first SDK process of the
worker loads one copy (`LoadedScorer`) and serves it; every process,
that one included, sends its batches through a proxy. Forward passes and
Grad-CAM both run inside the owning process, so Grad-CAM works the same
shared or not. The owning process turns TensorFlow's GPU memory growth on
before loading, so it takes the memory it needs, not the whole GPU.

The forward pass runs on an inference engine (`engines`: TensorFlow, or
OpenVINO converted once per machine), chosen and resolved on the worker.
Every engine also returns the backbone's feature map: its global average
pool is each image's embedding, and Grad-CAM takes the gradient of the months
with respect to it from the Keras head alone.

With test-time augmentation (`tta_views` > 1) each batch also runs under
the other views of bone_age.tta, one engine call per view at the same batch
shape (traced once): the months are the views' mean and their SD the
spread. Grad-CAM, the embedding and the group probabilities come from the
plain view.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
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
  embedding: np.ndarray | None = None  # (C,) float32, global average pool of the backbone features
  engine: str = ""  # what computed it, e.g. 'openvino-float32' (engines.label)
  tta_sd_months: float | None = None  # SD of the TTA views' months; None without TTA


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


def visible_gpu_count() -> int:
  """GPUs this machine exposes, from the NVIDIA device files (touches no CUDA, loads no TensorFlow)."""
  return len(glob.glob("/dev/nvidia[0-9]*"))


def enable_gpu_memory_growth() -> None:
  """Turns on memory growth for every visible GPU.

  Must run before TensorFlow first uses a GPU in this process.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  gpus = tf.config.list_physical_devices("GPU")
  for gpu in gpus:
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as e:  # the GPU was already initialised in this process
      logging.warning("cannot turn on memory growth for %s: %s", gpu.name, e)


class LoadedScorer:
  """The loaded export, its engine, and the one call RunInference makes on them.

  Lives in the process that loaded the model: the SDK process itself, or,
  with a shared model, the process that owns it, reached through a proxy
  that forwards method calls (arguments and results are numpy arrays and str).
  """

  def __init__(self, model, gradcam: bool, engine=None, tta_views: int = 1):
    from batch_inference import engines  # pylint: disable=g-import-not-at-top
    from bone_age import tta  # pylint: disable=g-import-not-at-top

    self._model = model
    self._gradcam = bool(gradcam)
    self._engine = engine if engine is not None else engines.TensorFlowEngine(model)
    self._tta_views = tta.check_views(tta_views)

  def engine_label(self) -> str:
    """The engine and precision that score here, e.g. 'openvino-bf16'."""
    return self._engine.label

  def score(self, images: np.ndarray, male: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Months (B,), group probabilities (B, G), Grad-CAM heatmaps (B, S, S) or None, embeddings (B, C),
    TTA spread (B,) or None.

    The months are the mean over the TTA views (the plain prediction with one view).
    """
    outputs = self._engine.run(images, male)
    heatmaps = None
    if self._gradcam:
      from bone_age import gradcam  # pylint: disable=g-import-not-at-top
      heatmaps = gradcam.heatmaps_from_features(self._model, outputs.features, male)
    months, spread = outputs.months, None
    if self._tta_views > 1:
      from bone_age import tta  # pylint: disable=g-import-not-at-top
      view_months = [outputs.months] + [self._engine.run(view, male).months
                                        for view in tta.views(images, self._tta_views)[1:]]
      months, spread = tta.summarise(np.stack(view_months))
    return months, outputs.probabilities, heatmaps, outputs.embeddings, spread


class BoneAgeModelHandler(base.ModelHandler[ScoreRequest, Inference, Any]):
  """Loads `<export_dir>` (bone_age.export layout) and scores ScoreRequests.

  Args:
    export_dir: An export directory (has export_metadata.json).
    batch_size: Images per forward pass; BatchElements is pinned to it.
    gradcam: Also compute the regression head's Grad-CAM, with each image's
      own sex, in the same batched pass.
    share_model: One model copy per GPU shared by all SDK processes of a
      worker (True), one copy per process (False), or decided on the worker:
      shared when it has a GPU (None).
    engine: engines.ENGINES entry, resolved on the worker ('auto': the
      fastest installed there).
    precision: engines.PRECISIONS entry ('auto': bf16 only where it holds).
    tta_views: Test-time augmentation views averaged per image (1: none).
  """

  def __init__(self, export_dir: str, *, batch_size: int = 8, gradcam: bool = False,
               share_model: bool | None = None, engine: str = "tensorflow", precision: str = "float32",
               tta_views: int = 1):
    super().__init__()
    from batch_inference import engines  # pylint: disable=g-import-not-at-top

    if engine not in engines.ENGINES:
      raise ValueError(f"unknown engine {engine!r}; expected one of {engines.ENGINES}")
    if precision not in engines.PRECISIONS:
      raise ValueError(f"unknown precision {precision!r}; expected one of {engines.PRECISIONS}")
    self._export_dir = export_dir
    self._batch_size = int(batch_size)
    self._gradcam = bool(gradcam)
    self._share_model = share_model
    self._engine = engine
    self._precision = precision
    self._tta_views = int(tta_views)

  def share_model_across_processes(self) -> bool:
    # Called on the worker when RunInference sets up, so the GPU check sees
    # the worker's hardware, not the launching machine's. Beam's default of one
    # shared copy fits the Dataflow GPU recipe (one GPU per worker): one copy
    # per GPU would need each copy pinned to its own device.
    if self._share_model is None:
      return visible_gpu_count() > 0
    return self._share_model

  def load_model(self) -> LoadedScorer:
    from batch_inference import engines  # pylint: disable=g-import-not-at-top
    from bone_age import export  # pylint: disable=g-import-not-at-top

    gpus = visible_gpu_count()
    if gpus:
      enable_gpu_memory_growth()
    model, _ = export.load_export(self._export_dir)
    engine = engines.load_engine(model, self._export_dir, self._engine, self._precision, gpu_count=gpus)
    # Once per worker process; the summary's rows_by_engine says it once per run.
    logging.debug("scoring with engine %s", engine.label)
    # RunInference keeps this object alive for the worker's lifetime (per
    # process, or in the owning process when shared): loaded once, not per bundle.
    return LoadedScorer(model, self._gradcam, engine, self._tta_views)

  def run_inference(self, batch: Sequence[ScoreRequest], model: LoadedScorer,
                    inference_args=None) -> Iterable[base.PredictionResult]:
    del inference_args
    size = max(self._batch_size, len(batch))
    images, male = stack_requests(batch, size)
    months, probs, heatmaps, embeddings, spread = model.score(images, male)
    engine = model.engine_label()
    return [
        base.PredictionResult(
            request, Inference(float(months[i]), probs[i], None if heatmaps is None else heatmaps[i],
                               embeddings[i], engine, None if spread is None else float(spread[i])))
        for i, request in enumerate(batch)
    ]

  def get_num_bytes(self, batch: Sequence[ScoreRequest]) -> int:
    return sum(r.image.nbytes for r in batch)

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE

  def batch_elements_kwargs(self):
    return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}
