"""The OpenVINO engine: the export's forward graph converted once per machine, cached.

Conversion starts from the Keras model (not the SavedModel signature) so the
converted graph also outputs the backbone's feature map, which the embedding
and the head-only Grad-CAM need. The converted model is written, weights in
float32, under a cache directory keyed by the export's model.keras content
and the OpenVINO version: a worker converts at its first setup and later
workers (or runs) on the same machine reuse it. `$BONEAGE_ENGINE_CACHE`
moves the cache (default ~/.cache/bone_age/openvino).

Compiled models are per batch size with a static input shape (the handler
pads every batch to one size, so a run compiles one or two sizes). One
loaded model serves every thread of a worker process (RunInference shares it),
so each thread gets its own infer requests: a request is not thread-safe.

Batch scoring wants throughput, so the engine compiles with OpenVINO's
THROUGHPUT hint, which splits the cores into streams of a few threads each
(fewer threads per convolution synchronise less), and `run` splits each batch
into one part per stream, inferred concurrently. A caller with one thread
thus still keeps every core busy; with LATENCY one stream spans all cores.

OpenVINO's converter and NNCF send usage telemetry to Google Analytics (and
write a client id under ~/intel) unless they believe they run in CI. A machine
that holds patient data must make no outbound connection it was not asked
for, so `no_vendor_telemetry` declines it through the switches those libraries
read: NNCF_CI for NNCF (read once, at its import) and CI=true for
openvino-telemetry, which starts at `import openvino` and again at each
conversion. Every OpenVINO import of the project goes through
`import_openvino` for that reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import contextlib
import tempfile
import threading

import numpy as np

from batch_inference import engines

CACHE_ENV = "BONEAGE_ENGINE_CACHE"
MODEL_XML = "model.xml"
# Largest bf16 - float32 month differences `auto` precision accepts (the thresholds).
MAX_MEAN_ABS_DIFF_MONTHS = 0.5
MAX_ABS_DIFF_MONTHS = 2.0
CHECK_PHANTOMS = 16
_OUTPUTS = ("boneage_months", "age_group", "features")
# int8 models carry their own quantized operations; the rest of their graph runs float32.
_PRECISION_HINTS = {engines.FLOAT32: "f32", engines.BF16: "bf16", engines.INT8: "f32"}
DEFAULT_PERFORMANCE_HINT = "THROUGHPUT"


@contextlib.contextmanager
def no_vendor_telemetry():
  """Within it, OpenVINO's converter and NNCF send no telemetry (see the module docstring)."""
  os.environ.setdefault("NNCF_CI", "1")  # only NNCF's telemetry reads it
  saved = os.environ.get("CI")
  os.environ["CI"] = "true"
  try:
    yield
  finally:
    if saved is None:
      os.environ.pop("CI", None)
    else:
      os.environ["CI"] = saved


def import_openvino():
  """The openvino module, imported with its telemetry declined."""
  with no_vendor_telemetry():
    import openvino  # pylint: disable=g-import-not-at-top
  return openvino


def cache_root() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "bone_age", "openvino")


def _export_digest(export_dir: str) -> str:
  """sha256 of the export's model.keras (local or gs://): the weights the converted graph holds (the model id)."""
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import provenance  # pylint: disable=g-import-not-at-top

  return provenance.model_sha256(export.resolve_export_dir(export_dir))


def _forward_function(model):
  """A tf.function image uint8 (B,S,S,1), male (B,) -> months, probabilities, features."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  size = ba_model.image_size_px(model)
  feature_model = keras.Model(model.inputs, [ba_model.backbone_feature_tensor(model), model.output])

  @tf.function(input_signature=[tf.TensorSpec((None, size, size, 1), tf.uint8, name=ba_model.IMAGE_INPUT),
                                tf.TensorSpec((None,), tf.float32, name=ba_model.MALE_INPUT)])
  def forward(image, male):
    features, outputs = feature_model({ba_model.IMAGE_INPUT: image, ba_model.MALE_INPUT: tf.reshape(male, (-1, 1))},
                                      training=False)
    return {_OUTPUTS[0]: tf.reshape(outputs[ba_model.AGE_OUTPUT], (-1,)), _OUTPUTS[1]: outputs[ba_model.GROUP_OUTPUT],
            _OUTPUTS[2]: features}

  return forward


def convert(model, xml_path: str) -> None:
  """Converts the model's forward (with features) to OpenVINO IR at xml_path, weights kept float32."""
  ov = import_openvino()

  with no_vendor_telemetry():
    ov_model = ov.convert_model(_forward_function(model).get_concrete_function())
  ov.save_model(ov_model, xml_path, compress_to_fp16=False)


def converted_model_path(model, export_dir: str) -> str:
  """The cached IR of this export for this OpenVINO version, converting it first if absent."""
  ov = import_openvino()

  key = f"{_export_digest(export_dir)[:32]}-ov{ov.get_version().split('-')[0]}"
  final_dir = os.path.join(cache_root(), key)
  xml_path = os.path.join(final_dir, MODEL_XML)
  if os.path.exists(xml_path):
    return xml_path
  os.makedirs(cache_root(), exist_ok=True)
  # Written aside and renamed into place, so concurrent workers never read half a model.
  staging = tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root())
  try:
    logging.info("converting %s for OpenVINO into %s", export_dir, final_dir)
    convert(model, os.path.join(staging, MODEL_XML))
    try:
      os.rename(staging, final_dir)
    except OSError:
      if not os.path.exists(xml_path):  # not another worker's finished conversion: a real failure
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return xml_path


def cpu_has_native_bf16() -> bool:
  """Whether OpenVINO's CPU plugin computes in bf16 natively here (else a bf16 hint gains nothing)."""
  ov = import_openvino()

  return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine:
  """A converted model compiled for the CPU at one precision.

  Args:
    model: IR path from `converted_model_path` (or `engine_int8`), or an
      already read openvino.Model.
    precision: engines.FLOAT32 or engines.BF16 (OpenVINO's inference precision
      hint), or engines.INT8 for a quantized model.
    performance_hint: OpenVINO's PERFORMANCE_HINT: "THROUGHPUT" (default:
      several streams; each batch is split across them) or "LATENCY" (one
      stream uses every core; a batch runs whole).
  """

  name = "openvino"

  def __init__(self, model, precision: str, *, performance_hint: str = DEFAULT_PERFORMANCE_HINT):
    ov = import_openvino()

    if precision not in _PRECISION_HINTS:
      raise ValueError(f"OpenVINO precision must be one of {tuple(_PRECISION_HINTS)}, got {precision!r}")
    self.precision = precision
    self.label = engines.label(self.name, precision)
    self.performance_hint = performance_hint
    self._config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision], "PERFORMANCE_HINT": performance_hint}
    self.check: dict | None = None  # the reduced-precision agreement check, when one was made
    self._core = ov.Core()
    self._model = self._core.read_model(model) if isinstance(model, (str, os.PathLike)) else model
    self._compiled: dict[int, object] = {}
    self._compile_lock = threading.Lock()
    self._streams: int | None = None  # inferred concurrently per batch; known after the first compilation
    self._requests = threading.local()

  def _compiled_model(self, batch_size: int):
    with self._compile_lock:
      if batch_size not in self._compiled:
        ov = import_openvino()

        model = self._model.clone()
        model.reshape({port.get_any_name(): ov.PartialShape([batch_size, *port.get_partial_shape()[1:]])
                       for port in model.inputs})
        compiled = self._core.compile_model(model, "CPU", self._config)
        if self._streams is None:
          self._streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._compiled[batch_size] = compiled
      return self._compiled[batch_size]

  def _request(self, batch_size: int, part: int):
    """This thread's infer request for the part-th concurrent slice of that size."""
    requests = self._requests.__dict__.setdefault("by_size_and_part", {})
    if (batch_size, part) not in requests:
      requests[(batch_size, part)] = self._compiled_model(batch_size).create_infer_request()
    return requests[(batch_size, part)]

  def part_sizes(self, batch_size: int) -> list[int]:
    """How a batch is split over the streams: near-equal parts, at most one per stream."""
    if self._streams is None:
      self._compiled_model(batch_size)
    parts = min(self._streams, batch_size)
    return [len(part) for part in np.array_split(np.arange(batch_size), parts)]

  def run(self, images: np.ndarray, male: np.ndarray) -> engines.EngineOutputs:
    """images (B, S, S, 1) uint8, male (B,) float32 -> EngineOutputs."""
    from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

    images = np.ascontiguousarray(images, np.uint8)
    male = np.asarray(male, np.float32).reshape(-1)
    started, start = [], 0
    for part, size in enumerate(self.part_sizes(len(images))):
      request = self._request(size, part)
      request.start_async({ba_model.IMAGE_INPUT: images[start:start + size],
                           ba_model.MALE_INPUT: male[start:start + size]})
      started.append(request)
      start += size
    outputs = {name: [] for name in _OUTPUTS}
    for request in started:
      request.wait()
      for port, value in request.results.items():
        if port.get_any_name() in outputs:
          outputs[port.get_any_name()].append(np.array(value, np.float32))
    months, probs, features = (np.concatenate(outputs[name]) for name in _OUTPUTS)
    return engines.EngineOutputs(months.reshape(-1), probs, features)


def phantom_batch(size_px: int, count: int = CHECK_PHANTOMS) -> tuple[np.ndarray, np.ndarray]:
  """Letterboxed phantom radiographs over the age range, both sexes: (count, S, S, 1) uint8, (count,) float32."""
  from bone_age import letterbox  # pylint: disable=g-import-not-at-top
  from bone_age import phantoms  # pylint: disable=g-import-not-at-top

  ages = np.linspace(12.0, 216.0, count)
  images = [letterbox.letterbox(phantoms.render_phantom(float(a), bool(i % 2), seed=i).image, size_px)[0]
            for i, a in enumerate(ages)]
  return np.stack(images)[..., None], (np.arange(count) % 2).astype(np.float32)


def month_differences(reference: np.ndarray, candidate: np.ndarray) -> dict:
  """Mean and largest |candidate - reference| in months."""
  diff = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64))
  return {"mean_abs_diff_months": float(diff.mean()), "max_abs_diff_months": float(diff.max())}


def within_tolerance(differences: dict) -> bool:
  return (differences["mean_abs_diff_months"] <= MAX_MEAN_ABS_DIFF_MONTHS
          and differences["max_abs_diff_months"] <= MAX_ABS_DIFF_MONTHS)


def load_checked(model, export_dir: str, *, batch_size: int = 8) -> OpenVINOEngine:
  """bf16 where the CPU has it natively and this model's months stay close to float32 on phantoms, else float32.

  The check scores CHECK_PHANTOMS phantom radiographs with both precisions
  of the same converted graph (float32 OpenVINO agrees with TensorFlow to
  float rounding) and keeps bf16 only within the mean / largest month
  tolerances. The verdict is kept on the engine (`check`) and logged.
  """
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  xml_path = converted_model_path(model, export_dir)
  float32 = OpenVINOEngine(xml_path, engines.FLOAT32)
  if not cpu_has_native_bf16():
    logging.info("OpenVINO engine at float32: this CPU has no native bf16")
    float32.check = {"chosen": engines.FLOAT32, "reason": "no native bf16 on this CPU"}
    return float32
  images, male = phantom_batch(ba_model.image_size_px(model))
  bf16 = OpenVINOEngine(xml_path, engines.BF16)
  reference, candidate = [], []
  for start in range(0, len(images), batch_size):
    reference.append(float32.run(images[start:start + batch_size], male[start:start + batch_size]).months)
    candidate.append(bf16.run(images[start:start + batch_size], male[start:start + batch_size]).months)
  differences = month_differences(np.concatenate(reference), np.concatenate(candidate))
  chosen = bf16 if within_tolerance(differences) else float32
  chosen.check = {"chosen": chosen.precision, "phantoms": len(images), **differences}
  logging.info("OpenVINO engine at %s: bf16 vs float32 on %d phantoms %s", chosen.precision, len(images), differences)
  return chosen
