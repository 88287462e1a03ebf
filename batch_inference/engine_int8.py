"""int8 OpenVINO models: NNCF post-training quantization, and the accuracy check that licenses them.

An int8 model needs calibration images (the activations' ranges come from
them), which the scoring workers do not have. So quantization is a step of
its own, run where the dataset is:

  python -m batch_inference.engine_int8 --model_dir=<export> \
      --dataset_dir=<data_dir>/rsna_bone_age/384px/1.0.0 [--real_sample_dir=<rsna_sample>]

It calibrates on the dataset's validation split, then scores the test split
(and, when given, real radiographs) with the int8 model and with the export's
TensorFlow float32 model and checks the month differences against the
tolerances (mean <= 0.5, largest <= 2 months). The int8 model and the check
are written into the export (`openvino_int8/`); workers read them from
there. `--precision=int8` scores with it only when the check passed;
`--precision=auto` prefers it then.

Quantization results are cached like the float32 conversion, keyed by the
export's content, the OpenVINO and NNCF versions and the calibration images'
sha256, so a rerun on the same data does not quantize again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

from batch_inference import engine_openvino
from batch_inference import engines

EXPORT_SUBDIR = "openvino_int8"
CHECK_FILE = "check.json"
WEIGHTS_FILE = "model.bin"
DEFAULT_CALIBRATION_IMAGES = 300
CALIBRATION_SPLIT = "validation"
CHECK_SPLIT = "test"
# Quantization runs on one static batch shape; engines reshape the model to their own batch size later.
CALIBRATION_BATCH_SIZE = 8


def calibration_digest(images: np.ndarray, male: np.ndarray) -> str:
  """sha256 of the calibration images and sexes (part of the cache key)."""
  digest = hashlib.sha256()
  digest.update(np.ascontiguousarray(images, np.uint8).tobytes())
  digest.update(np.ascontiguousarray(male, np.float32).tobytes())
  return digest.hexdigest()


def _import_nncf():
  """NNCF, imported with its telemetry declined (engine_openvino.no_vendor_telemetry)."""
  with engine_openvino.no_vendor_telemetry():
    import nncf  # pylint: disable=g-import-not-at-top
  return nncf


def _versions() -> str:
  nncf = _import_nncf()
  ov = engine_openvino.import_openvino()

  return f"ov{ov.get_version().split('-')[0]}-nncf{nncf.__version__}"


def _calibration_batches(images: np.ndarray, male: np.ndarray) -> list[dict]:
  """Whole batches of CALIBRATION_BATCH_SIZE (a remainder is dropped: the shape is static)."""
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  return [{ba_model.IMAGE_INPUT: images[s:s + CALIBRATION_BATCH_SIZE], ba_model.MALE_INPUT: male[s:s + CALIBRATION_BATCH_SIZE]}
          for s in range(0, len(images) - CALIBRATION_BATCH_SIZE + 1, CALIBRATION_BATCH_SIZE)]


def quantize(model, export_dir: str, images: np.ndarray, male: np.ndarray) -> str:
  """The int8 IR of this export calibrated on (images, male), quantizing it first if not cached.

  Args:
    model: The export's Keras model.
    export_dir: The export (keys the cache with the float32 conversion's digest).
    images: (N, S, S, 1) uint8 letterboxed calibration radiographs, N >= CALIBRATION_BATCH_SIZE.
    male: (N,) float32.

  Returns:
    Path of the cached int8 model.xml.
  """
  nncf = _import_nncf()
  ov = engine_openvino.import_openvino()

  batches = _calibration_batches(images, male)
  if not batches:
    raise ValueError(f"int8 calibration needs at least {CALIBRATION_BATCH_SIZE} images, got {len(images)}")
  float32_xml = engine_openvino.converted_model_path(model, export_dir)
  # The float32 entry's name already carries the export's digest and the OpenVINO version.
  key = (f"{os.path.basename(os.path.dirname(float32_xml))}-int8-nncf{nncf.__version__}-"
         f"{calibration_digest(images, male)[:16]}")
  final_dir = os.path.join(engine_openvino.cache_root(), key)
  xml_path = os.path.join(final_dir, engine_openvino.MODEL_XML)
  if os.path.exists(xml_path):
    return xml_path
  core = ov.Core()
  float_model = core.read_model(float32_xml)
  float_model.reshape({port.get_any_name(): ov.PartialShape([CALIBRATION_BATCH_SIZE, *port.get_partial_shape()[1:]])
                       for port in float_model.inputs})
  logging.info("quantizing %s to int8 on %d calibration images", export_dir, len(batches) * CALIBRATION_BATCH_SIZE)
  int8_model = nncf.quantize(float_model, nncf.Dataset(batches), subset_size=len(batches),
                             preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False)
  # The batch dimension is left free again: each engine fixes its own.
  int8_model.reshape({port.get_any_name(): ov.PartialShape([-1, *port.get_partial_shape()[1:]])
                      for port in int8_model.inputs})
  staging = tempfile.mkdtemp(prefix=f".{key}-", dir=engine_openvino.cache_root())
  try:
    ov.save_model(int8_model, os.path.join(staging, engine_openvino.MODEL_XML), compress_to_fp16=False)
    try:
      os.rename(staging, final_dir)
    except OSError:
      if not os.path.exists(xml_path):
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return xml_path


def run_batched(engine, images: np.ndarray, male: np.ndarray, batch_size: int = 8) -> np.ndarray:
  """Months of an engine over any number of images, the last batch padded to batch_size (one compilation)."""
  months = []
  for start in range(0, len(images), batch_size):
    batch_images, batch_male = images[start:start + batch_size], male[start:start + batch_size]
    count = len(batch_images)
    if count < batch_size:
      batch_images = np.concatenate([batch_images, np.repeat(batch_images[-1:], batch_size - count, axis=0)])
      batch_male = np.concatenate([batch_male, np.repeat(batch_male[-1:], batch_size - count)])
    months.append(engine.run(batch_images, batch_male).months[:count])
  return np.concatenate(months)


def accuracy_check(model, int8_xml: str, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
  """Month differences of the int8 model from TensorFlow float32 on each named (images, male) set.

  Returns:
    {"sets": {name: {images, mean_abs_diff_months, max_abs_diff_months, within_tolerance}},
     "passed": every set within tolerance, "tolerance_months": {...}}
  """
  reference = engines.TensorFlowEngine(model)
  int8 = engine_openvino.OpenVINOEngine(int8_xml, engines.INT8)
  results = {}
  for name, (images, male) in sets.items():
    differences = engine_openvino.month_differences(run_batched(reference, images, male),
                                                    run_batched(int8, images, male))
    results[name] = {"images": int(len(images)), **differences,
                     "within_tolerance": engine_openvino.within_tolerance(differences)}
  return {"sets": results, "passed": bool(results) and all(r["within_tolerance"] for r in results.values()),
          "tolerance_months": {"mean": engine_openvino.MAX_MEAN_ABS_DIFF_MONTHS,
                               "max": engine_openvino.MAX_ABS_DIFF_MONTHS}}


def write_to_export(export_dir: str, int8_xml: str, check: dict) -> str:
  """Copies the int8 model and its check into export_dir/openvino_int8/ (local or gs://); returns that dir.

  The check gains the sha256 of the export's weights, so an int8 model left
  beside other weights is refused at load.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  check = {**check, "export_sha256": engine_openvino._export_digest(export_dir)}  # pylint: disable=protected-access

  target = os.path.join(export_dir, EXPORT_SUBDIR)
  tf.io.gfile.makedirs(target)
  for name in (engine_openvino.MODEL_XML, WEIGHTS_FILE):
    tf.io.gfile.copy(os.path.join(os.path.dirname(int8_xml), name), os.path.join(target, name), overwrite=True)
  with tf.io.gfile.GFile(os.path.join(target, CHECK_FILE), "w") as f:
    f.write(json.dumps(check, indent=2) + "\n")
  return target


def read_check(export_dir: str) -> dict | None:
  """The export's int8 check, or None when it carries no int8 model."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from bone_age import export  # pylint: disable=g-import-not-at-top

  export_dir = export.resolve_export_dir(export_dir)
  path = os.path.join(export_dir, EXPORT_SUBDIR, CHECK_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def load_from_export(export_dir: str) -> engine_openvino.OpenVINOEngine:
  """The export's int8 model as an engine, its check attached.

  Raises:
    ValueError: when the export has no int8 model, or its accuracy check did not pass.
  """
  ov = engine_openvino.import_openvino()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from bone_age import export  # pylint: disable=g-import-not-at-top

  export_dir = export.resolve_export_dir(export_dir)
  check = read_check(export_dir)
  if check is None:
    raise ValueError(f"export {export_dir} has no int8 model: run python -m batch_inference.engine_int8 "
                     f"--model_dir={export_dir} --dataset_dir=<prepared dataset> first")
  if not check.get("passed"):
    raise ValueError(f"export {export_dir}: the int8 model's months differ from float32 beyond the tolerance "
                     f"({check.get('sets')}); score at float32")
  digest = engine_openvino._export_digest(export_dir)  # pylint: disable=protected-access
  if check.get("export_sha256") != digest:
    raise ValueError(f"export {export_dir}: its int8 model was made from other weights (model.keras sha256 "
                     f"{check.get('export_sha256')}, now {digest}); quantize again")
  folder = os.path.join(export_dir, EXPORT_SUBDIR)
  with tf.io.gfile.GFile(os.path.join(folder, engine_openvino.MODEL_XML), "rb") as f:
    xml_bytes = f.read()
  with tf.io.gfile.GFile(os.path.join(folder, WEIGHTS_FILE), "rb") as f:
    weights = np.frombuffer(f.read(), np.uint8)
  engine = engine_openvino.OpenVINOEngine(ov.Core().read_model(xml_bytes, ov.Tensor(weights)), engines.INT8)
  engine.check = {"chosen": engines.INT8, **check}
  return engine


def read_split(dataset_dir: str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(images (N,S,S,1) uint8, male (N,) float32) of a prepared dataset's split, in stored order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from bone_age import schema  # pylint: disable=g-import-not-at-top

  ds = tfds.builder_from_directory(dataset_dir).as_dataset(split=split, shuffle_files=False)
  if limit:
    ds = ds.take(limit)
  images, male = [], []
  for example in ds.as_numpy_iterator():
    images.append(example[schema.IMAGE])
    male.append(float(example[schema.MALE]))
  return np.stack(images), np.asarray(male, np.float32)


def read_real_sample(sample_dir: str, size_px: int) -> tuple[np.ndarray, np.ndarray]:
  """A labels.csv (id, male) + images/<id>.png folder, letterboxed: (images, male)."""
  import csv  # pylint: disable=g-import-not-at-top

  from bone_age import imaging  # pylint: disable=g-import-not-at-top
  from bone_age import letterbox  # pylint: disable=g-import-not-at-top

  with open(os.path.join(sample_dir, "labels.csv")) as f:
    rows = list(csv.DictReader(f))
  images = []
  for row in rows:
    with open(os.path.join(sample_dir, "images", f"{row['id']}.png"), "rb") as f:
      images.append(letterbox.letterbox(imaging.decode_radiograph(f.read(), row["id"]).pixels, size_px)[0])
  return np.stack(images)[..., None], np.array([r["male"] == "True" for r in rows], np.float32)


def quantize_export(model_dir: str, dataset_dir: str, real_sample_dir: str | None = None,
                    calibration_images: int = DEFAULT_CALIBRATION_IMAGES) -> dict:
  """Calibrates, quantizes, checks and writes the int8 model into the export; returns the check."""
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  export_dir = export.resolve_export_dir(model_dir)
  model, _ = export.load_export(export_dir)
  images, male = read_split(dataset_dir, CALIBRATION_SPLIT, calibration_images)
  xml_path = quantize(model, export_dir, images, male)
  sets = {f"{CHECK_SPLIT}_split": read_split(dataset_dir, CHECK_SPLIT)}
  if real_sample_dir:
    sets["real_sample"] = read_real_sample(real_sample_dir, ba_model.image_size_px(model))
  check = accuracy_check(model, xml_path, sets)
  check.update({"calibration": {"dataset_dir": dataset_dir, "split": CALIBRATION_SPLIT,
                                "images": int(len(images) // CALIBRATION_BATCH_SIZE * CALIBRATION_BATCH_SIZE),
                                "sha256": calibration_digest(images, male)},
                "versions": _versions()})
  write_to_export(export_dir, xml_path, check)
  return check


def main(argv: list[str] | None = None) -> dict:
  from absl import flags  # pylint: disable=g-import-not-at-top

  fv = flags.FlagValues()
  flags.DEFINE_string("model_dir", None, "Export dir (or a model_dir holding export/).", flag_values=fv, required=True)
  flags.DEFINE_string("dataset_dir", None, "Prepared TFDS dataset at the export's size, e.g. "
                      "<data_dir>/rsna_bone_age/384px/1.0.0 (validation: calibration; test: the check).",
                      flag_values=fv, required=True)
  flags.DEFINE_string("real_sample_dir", None, "Optional folder of real radiographs (labels.csv with id,male + "
                      "images/<id>.png) the check also scores.", flag_values=fv)
  flags.DEFINE_integer("calibration_images", DEFAULT_CALIBRATION_IMAGES, "Validation images to calibrate on.",
                       flag_values=fv)
  fv(["engine_int8", *(sys.argv[1:] if argv is None else argv)])
  logging.basicConfig(level=logging.INFO)
  check = quantize_export(fv.model_dir, fv.dataset_dir, fv.real_sample_dir, fv.calibration_images)
  for name, result in check["sets"].items():
    print(f"int8 vs TensorFlow float32 on {name} ({result['images']} images): mean |diff| "
          f"{result['mean_abs_diff_months']:.3f} months, largest {result['max_abs_diff_months']:.3f}"
          f"{'' if result['within_tolerance'] else ' (OUTSIDE the 0.5 / 2 month tolerance)'}")
  print(f"int8 check {'passed: --precision=int8 and auto may use it' if check['passed'] else 'failed: scoring stays float32'}")
  return check


if __name__ == "__main__":
  main()
