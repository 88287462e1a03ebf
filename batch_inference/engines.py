"""Inference engines: what runs the model's forward pass on a worker.

Every engine takes what the scorer has (uint8 letterboxed images, a sex per
image) and returns the months, the age-group probabilities and the backbone's
last feature map. The feature map gives the per-image embedding (its global
average pool, for the quality gate) and, with Grad-CAM, the heatmap: the
gradient of the months with respect to it comes from the small Keras head
alone (`bone_age.gradcam.heatmaps_from_features`), so no engine runs the
backbone twice.

  tensorflow  the Keras model as one `tf.function`; XLA-compiled on a GPU.
  openvino    the same graph converted once per machine with OpenVINO
              (`engine_openvino`), float32 or bf16; optional extra.
  auto        openvino on a CPU-only machine where it is installed, else
              tensorflow (a GPU runs TensorFlow with XLA).

Precision: `float32` everywhere; `bf16` asks OpenVINO for bfloat16 inference
(fast on CPUs with native BF16, e.g. AVX-512 BF16 or AMX); `int8` scores with
the export's quantized model (`engine_int8`: calibrated on the validation
split, written into the export with an accuracy check) and refuses one whose
check failed; `auto` takes int8 where the export carries one that passed, else
bf16 where the CPU has it natively and the model's months stay close to
float32 on phantom radiographs (`engine_openvino.load_checked`), else float32.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import numpy as np

ENGINES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("float32", "bf16", "int8", "auto")
FLOAT32 = "float32"
BF16 = "bf16"
INT8 = "int8"
REDUCED_PRECISIONS = (BF16, INT8)
# Batch size the TensorFlow engine pads to on a GPU: smaller batches leave the GPU idle.
GPU_MIN_BATCH_SIZE = 32


@dataclasses.dataclass
class EngineOutputs:
  """One batch's answers: months (B,), probabilities (B, G), backbone features (B, h, w, C), all float32."""
  months: np.ndarray
  probabilities: np.ndarray
  features: np.ndarray

  @property
  def embeddings(self) -> np.ndarray:
    """(B, C) float32: the global average pool of the feature map, the head's own first step."""
    return self.features.mean(axis=(1, 2), dtype=np.float32)


def openvino_installed() -> bool:
  return importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str, gpu_count: int) -> str:
  """`auto` -> the fastest engine available here; an explicit engine must be installed.

  Raises:
    ValueError: for an unknown engine or one whose package is missing.
  """
  if engine not in ENGINES:
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
  if engine == "auto":
    return "openvino" if gpu_count == 0 and openvino_installed() else "tensorflow"
  if engine == "openvino" and not openvino_installed():
    raise ValueError("engine 'openvino' needs the openvino package: pip install 'bone-age[openvino]'")
  return engine


def label(engine: str, precision: str, xla: bool = False) -> str:
  """What outputs record as the engine, e.g. 'openvino-bf16' or 'tensorflow-float32-xla'."""
  return f"{engine}-{precision}" + ("-xla" if xla else "")


class TensorFlowEngine:
  """The Keras model's features and outputs from one compiled forward pass.

  Args:
    model: A loaded bone age model.
    jit_compile: XLA-compile the forward (worth it on a GPU, where the batch
      shape is fixed by padding, so it compiles once).
  """

  name = "tensorflow"

  def __init__(self, model, *, jit_compile: bool = False):
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

    self.precision = FLOAT32
    self.jit_compile = bool(jit_compile)
    self.label = label(self.name, self.precision, self.jit_compile)
    # Built from tensors already in the model's graph, so the model gains no nodes.
    feature_model = keras.Model(model.inputs, [ba_model.backbone_feature_tensor(model), model.output])

    @tf.function(jit_compile=self.jit_compile, reduce_retracing=True)
    def forward(image, male):
      features, outputs = feature_model({ba_model.IMAGE_INPUT: image, ba_model.MALE_INPUT: male}, training=False)
      return outputs[ba_model.AGE_OUTPUT][:, 0], outputs[ba_model.GROUP_OUTPUT], features

    self._forward = forward

  def run(self, images: np.ndarray, male: np.ndarray) -> EngineOutputs:
    """images (B, S, S, 1) uint8, male (B,) float32 -> EngineOutputs."""
    months, probs, features = self._forward(images, np.asarray(male, np.float32).reshape(-1, 1))
    return EngineOutputs(np.asarray(months, np.float32), np.asarray(probs, np.float32),
                         np.asarray(features, np.float32))


def load_engine(model, export_dir: str, engine: str, precision: str, *, gpu_count: int = 0):
  """The engine to score with, resolved on the machine that runs it.

  Args:
    model: The export's Keras model (already loaded: the head is needed anyway).
    export_dir: The export it came from (keys OpenVINO's conversion cache).
    engine: One of ENGINES.
    precision: One of PRECISIONS.
    gpu_count: GPUs visible here (TensorFlow with XLA when > 0).

  Raises:
    ValueError: for an unknown or missing engine, bf16 or int8 asked of
      TensorFlow, or int8 asked of an export without a passed int8 check.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
  resolved = resolve_engine(engine, gpu_count)
  if resolved == "tensorflow":
    if precision in REDUCED_PRECISIONS:
      raise ValueError(f"precision {precision!r} needs engine 'openvino'; the TensorFlow engine runs float32")
    return TensorFlowEngine(model, jit_compile=gpu_count > 0)
  from batch_inference import engine_int8  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  if precision == INT8:
    return engine_int8.load_from_export(export_dir)
  if precision == "auto":
    if engine_int8.read_check(export_dir) is not None:
      try:
        engine = engine_int8.load_from_export(export_dir)
        logging.info("OpenVINO engine at int8: the export's int8 check passed %s", engine.check.get("sets"))
        return engine
      except ValueError as e:  # a failed check or other weights: auto falls back
        logging.info("not int8: %s", e)
    return engine_openvino.load_checked(model, export_dir)
  logging.info("OpenVINO engine at %s (asked for)", precision)
  return engine_openvino.OpenVINOEngine(engine_openvino.converted_model_path(model, export_dir), precision)
