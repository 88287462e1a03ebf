"""Benchmark of the inference engines: images per CPU-second against the bare TensorFlow forward, and accuracy.

What it measures, in one run, on the same images, the configurations interleaved
round by round so a busy machine slows them alike:
  bare        the export's Keras model, `predict_on_batch` float32 (the baseline)
  tensorflow  the scorer's TensorFlow engine (one tf.function, XLA on a GPU)
  openvino    float32 (engine_openvino), bf16 inference precision where the CPU
              has native BF16 (elsewhere a bf16 hint computes float32), and
              int8 quantized with NNCF (engine_int8) if nncf is installed,
              each at every OpenVINO performance hint asked for (--ov_hints)
  onnxruntime float32 through tf2onnx, if both are installed (measured for the
              engine choice only; the scorer does not ship it)
each without and with Grad-CAM (features from the engine, gradient from the
Keras head: bone_age.gradcam.heatmaps_from_features; the bare baseline with
Grad-CAM is bone_age.gradcam.predict_with_gradcam, one tape over the model).
Speed is images per process CPU-second (every thread of this process counts),
printed as the ratio to the bare forward of the same round, median and range.

Accuracy: months of each engine against the bare float32 forward on the real
sample radiographs (../shared/data/rsna_sample, or $BONEAGE_SHARED_DATA/rsna_sample;
skipped with a message when absent) and on phantom radiographs (the test split
of --dataset_dir, else rendered phantoms): mean and largest |difference| in
months, against the 0.5 / 2 month tolerance. int8 is calibrated on the
validation split of --dataset_dir (else on phantoms of other seeds). Its error
says something only for a trained model (--model_dir, e.g. the demo's export):
with the default random-weight Xception it is printed but is not the gate.

GPU: with a GPU visible, also the TensorFlow engine with XLA at batch 32;
otherwise the output says there is none.

  .venv/bin/python benchmarks/bench_engine.py                          # Xception at 384 px
  .venv/bin/python benchmarks/bench_engine.py --num_images=16 --repeats=2   # a busy 2-core CPU
  .venv/bin/python benchmarks/bench_engine.py --model_dir=demo_output/model \
      --dataset_dir=demo_output/tfds/rsna_bone_age/128px/1.0.0            # the int8 gate on a trained model

Writes bench_output/engine.json.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPU_BATCH_SIZE = 32


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--image_size_px", type=int, default=384)
  parser.add_argument("--backbone", default="xception")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--num_images", type=int, default=48, help="images per timed configuration and round")
  parser.add_argument("--repeats", type=int, default=3, help="rounds of every configuration, interleaved")
  parser.add_argument("--phantoms", type=int, default=16, help="phantom radiographs of the accuracy check")
  parser.add_argument("--real_images", type=int, default=0, help="real sample radiographs to use; 0: all")
  parser.add_argument("--fit_head_images", type=int, default=64,
                      help="phantoms the month layer is fitted on (least squares) so predictions follow the image; "
                           "0 keeps the random-weight model")
  parser.add_argument("--skip_onnx", action="store_true")
  parser.add_argument("--model_dir", default=None,
                      help="score this export (e.g. a trained one) instead of the random-weight --backbone model")
  parser.add_argument("--dataset_dir", default=None,
                      help="prepared dataset at the export's size: validation split calibrates int8, test split "
                           "replaces the rendered phantoms")
  parser.add_argument("--calibration_images", type=int, default=64, help="int8 calibration images")
  parser.add_argument("--ov_hints", default="LATENCY",
                      help="comma-separated OpenVINO PERFORMANCE_HINTs to measure (LATENCY, THROUGHPUT)")
  parser.add_argument("--output_dir", default=str(REPO / "bench_output"))
  return parser.parse_args(argv)


def real_sample(size_px: int):
  """(images (N,S,S,1) uint8, male (N,)) of the shared real sample, or None when it is absent."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bone_age import imaging  # pylint: disable=g-import-not-at-top
  from bone_age import letterbox  # pylint: disable=g-import-not-at-top

  shared = pathlib.Path(os.environ.get("BONEAGE_SHARED_DATA", REPO.parent / "shared" / "data"))
  sample = shared / "rsna_sample"
  if not (sample / "labels.csv").exists():
    return None
  with open(sample / "labels.csv") as f:
    rows = list(csv.DictReader(f))
  images = [letterbox.letterbox(imaging.decode_radiograph((sample / "images" / f"{r['id']}.png").read_bytes(),
                                                          r["id"]).pixels, size_px)[0] for r in rows]
  return np.stack(images)[..., None], np.array([r["male"] == "True" for r in rows], np.float32)


class OnnxRuntimeEngine:
  """The same forward graph through tf2onnx and ONNX Runtime (CPU), for comparison only."""

  name = "onnxruntime"

  def __init__(self, model):
    import onnxruntime  # pylint: disable=g-import-not-at-top
    import tf2onnx  # pylint: disable=g-import-not-at-top

    from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

    forward = engine_openvino._forward_function(model)  # pylint: disable=protected-access
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=forward.input_signature, opset=17)
    self.label = "onnxruntime-float32"
    self.precision = "float32"
    self._session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

  def run(self, images, male):
    import numpy as np  # pylint: disable=g-import-not-at-top

    from batch_inference import engines  # pylint: disable=g-import-not-at-top

    months, probs, features = self._session.run(["boneage_months", "age_group", "features"],
                                                {"image": images, "male": np.asarray(male, np.float32)})
    return engines.EngineOutputs(months.reshape(-1), probs, features)


def fit_month_layer(model, num_images: int, batch_size: int) -> dict:
  """Fits the month layer to phantom bone ages by least squares on the head's last features.

  A random-weight backbone's months barely move between images, so their
  differences across engines say little about a trained model's. Fitting the
  final linear layer (cheap: one forward per phantom) gives predictions that
  follow the image; the phantoms come from other seeds than the accuracy check's.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bone_age import letterbox  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top
  from bone_age import phantoms  # pylint: disable=g-import-not-at-top

  size = ba_model.image_size_px(model)
  labels = phantoms.sample_labels(num_images, seed=7)
  images = np.stack([letterbox.letterbox(phantoms.render_phantom(age, male, seed=10_000 + i).image, size)[0]
                     for i, (_, age, male) in enumerate(labels)])[..., None]
  male = np.array([m for _, _, m in labels], np.float32)[:, None]
  ages = np.array([a for _, a, _ in labels], np.float64)
  month_layer = model.get_layer(ba_model.AGE_UNIT_LAYER)
  body = keras.Model(model.inputs, month_layer.input)
  hidden = np.concatenate([body({ba_model.IMAGE_INPUT: images[s:s + batch_size], ba_model.MALE_INPUT: male[s:s + batch_size]},
                                training=False).numpy() for s in range(0, num_images, batch_size)]).astype(np.float64)
  design = np.concatenate([hidden, np.ones((num_images, 1))], axis=1)
  ridge = 1e-3 * np.trace(design.T @ design) / design.shape[1]
  solution = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ (ages / 240.0))
  month_layer.set_weights([solution[:-1, None].astype(np.float32), solution[-1:].astype(np.float32)])
  fitted = np.clip(design @ solution * 240.0, 0, 240)
  return {"phantoms": num_images, "train_mae_months": float(np.abs(fitted - ages).mean()),
          "label_sd_months": float(ages.std())}


def _calibration_phantoms(size_px: int, count: int):
  """(images, male) of phantoms from other seeds than the accuracy check's, for int8 calibration."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bone_age import letterbox  # pylint: disable=g-import-not-at-top
  from bone_age import phantoms  # pylint: disable=g-import-not-at-top

  labels = phantoms.sample_labels(count, seed=11)
  images = np.stack([letterbox.letterbox(phantoms.render_phantom(age, male, seed=20_000 + i).image, size_px)[0]
                     for i, (_, age, male) in enumerate(labels)])[..., None]
  return images, np.array([m for _, _, m in labels], np.float32)


def _cpu_capabilities() -> list[str]:
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top
  ov = engine_openvino.import_openvino()
  return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _batches(images, male, batch_size):
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size], male[start:start + batch_size]


def _bare_step(model, gradcam_on: bool):
  from batch_inference import handler  # pylint: disable=g-import-not-at-top
  from bone_age import gradcam  # pylint: disable=g-import-not-at-top

  if gradcam_on:
    return lambda images, male: gradcam.predict_with_gradcam(model, images, male, batch_size=len(images))[0]
  return lambda images, male: handler.forward(model, images, male)[0]


def _engine_step(model, engine, gradcam_on: bool):
  from bone_age import gradcam  # pylint: disable=g-import-not-at-top

  def step(images, male):
    outputs = engine.run(images, male)
    if gradcam_on:
      gradcam.heatmaps_from_features(model, outputs.features, male)
    return outputs.months

  return step


def _timed(step, images, male, batch_size) -> float:
  """Images per process CPU-second of `step` over all batches."""
  cpu_start = time.process_time()
  for batch in _batches(images, male, batch_size):
    step(*batch)
  return len(images) / (time.process_time() - cpu_start)


def _months(step, images, male, batch_size):
  import numpy as np  # pylint: disable=g-import-not-at-top

  return np.concatenate([np.asarray(step(*b)).reshape(-1) for b in _batches(images, male, batch_size)])


def main(argv=None) -> dict:
  args = _parse_args(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from batch_inference import engine_int8  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top
  from batch_inference import engines  # pylint: disable=g-import-not-at-top
  from benchmarks import bench_score  # pylint: disable=g-import-not-at-top
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  out_dir = pathlib.Path(args.output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  report = {"config": vars(args), "cpu_count": os.cpu_count(),
            # 0: TensorFlow sizes its pools to the machine's cores (the fair baseline).
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}
  if args.model_dir:
    export_dir = pathlib.Path(export.resolve_export_dir(args.model_dir))
    model, metadata = export.load_export(str(export_dir))
    size = ba_model.image_size_px(model)
    description = (f"{metadata.get('backbone')} at {size} px, trained export {export_dir} "
                   f"(validation MAE {metadata.get('best_validation_mae_months', 'n/a')} months)")
  else:
    export_dir = bench_score.ensure_export(out_dir, args)
    model, _ = export.load_export(str(export_dir))
    size = args.image_size_px
    description = f"{args.backbone} at {size} px, random weights (weights=None)"
  if args.fit_head_images and not args.model_dir:
    fitted_dir = out_dir / f"export_{args.backbone}_{size}_month_layer_fitted_{args.fit_head_images}"
    if not (fitted_dir / export.EXPORT_METADATA_FILE).exists():
      report["month_layer_fit"] = fit_month_layer(model, args.fit_head_images, args.batch_size)
      export.save_export(model, str(fitted_dir), {"backbone": args.backbone, "dataset_version": "bench-phantoms",
                                                  "month_layer_fit": report["month_layer_fit"]})
    export_dir = fitted_dir
    model, metadata = export.load_export(str(export_dir))
    report["month_layer_fit"] = metadata["month_layer_fit"]
    description += (f", month layer fitted to {args.fit_head_images} phantoms "
                    f"(train MAE {report['month_layer_fit']['train_mae_months']:.1f} months, "
                    f"label SD {report['month_layer_fit']['label_sd_months']:.1f})")
  report.update({"export_dir": str(export_dir), "model": description})

  if args.dataset_dir:
    phantoms = engine_int8.read_split(args.dataset_dir, engine_int8.CHECK_SPLIT, args.phantoms)
    calibration = engine_int8.read_split(args.dataset_dir, engine_int8.CALIBRATION_SPLIT, args.calibration_images)
  else:
    phantoms = engine_openvino.phantom_batch(size, count=args.phantoms)
    calibration = _calibration_phantoms(size, args.calibration_images)
  real = real_sample(size)
  if real is not None and args.real_images:
    real = (real[0][:args.real_images], real[1][:args.real_images])
  if real is None:
    print("real sample: ../shared/data/rsna_sample not found (set BONEAGE_SHARED_DATA): accuracy on phantoms only")
  phantom_name = f"phantom_{engine_int8.CHECK_SPLIT}_split" if args.dataset_dir else "phantoms"
  sets = {phantom_name: phantoms, **({"real_sample": real} if real is not None else {})}
  pool_images = np.concatenate([s[0] for s in sets.values()])
  pool_male = np.concatenate([s[1] for s in sets.values()])
  reps = -(-args.num_images // len(pool_images))
  timed_images = np.concatenate([pool_images] * reps)[:args.num_images]
  timed_male = np.concatenate([pool_male] * reps)[:args.num_images]

  candidates = {"tensorflow-float32": engines.TensorFlowEngine(model)}
  if engines.openvino_installed():
    start = time.perf_counter()
    xml_path = engine_openvino.converted_model_path(model, str(export_dir))
    report["openvino_convert_or_cache_s"] = time.perf_counter() - start
    report["cpu_native_bf16"] = engine_openvino.cpu_has_native_bf16()
    report["cpu_optimization_capabilities"] = _cpu_capabilities()
    xml_by_precision = {engines.FLOAT32: xml_path}
    if report["cpu_native_bf16"]:
      xml_by_precision[engines.BF16] = xml_path
    if importlib.util.find_spec("nncf"):
      start = time.process_time()
      xml_by_precision[engines.INT8] = engine_int8.quantize(model, str(export_dir), *calibration)
      report["int8_quantize_or_cache_cpu_s"] = time.process_time() - start
      report["int8_calibration_images"] = len(calibration[0])
    else:
      print("int8: nncf not installed (pip install '.[openvino]')")
    for hint in args.ov_hints.split(","):
      for precision, xml in xml_by_precision.items():
        engine = engine_openvino.OpenVINOEngine(xml, precision, performance_hint=hint)
        candidates[f"{engine.label}-{hint.lower()}"] = engine
  else:
    print("openvino: not installed (pip install '.[openvino]')")
  if not args.skip_onnx:
    try:
      start = time.perf_counter()
      candidates["onnxruntime-float32"] = OnnxRuntimeEngine(model)
      report["onnx_convert_s"] = time.perf_counter() - start
    except ImportError as e:
      print(f"onnxruntime: skipped ({e})")

  steps = {}
  for gradcam_on in (False, True):
    suffix = "+gradcam" if gradcam_on else ""
    steps["bare-tensorflow-float32" + suffix] = _bare_step(model, gradcam_on)
    for label, engine in candidates.items():
      steps[label + suffix] = _engine_step(model, engine, gradcam_on)

  # Accuracy first (this also warms every configuration: tracing and compilation are not timed).
  reference = {name: _months(steps["bare-tensorflow-float32"], imgs, male, args.batch_size)
               for name, (imgs, male) in sets.items()}
  accuracy = {}
  for label in candidates:
    accuracy[label] = {}
    for name, (imgs, male) in sets.items():
      diff = engine_openvino.month_differences(reference[name], _months(steps[label], imgs, male, args.batch_size))
      accuracy[label][name] = {**diff, "within_tolerance": engine_openvino.within_tolerance(diff)}
    _months(steps[label + "+gradcam"], phantoms[0][:args.batch_size], phantoms[1][:args.batch_size], args.batch_size)
  report["reduced_precision_gate"] = {
      label: {"passed": all(d["within_tolerance"] for d in by_set.values()), "sets": sorted(by_set)}
      for label, by_set in accuracy.items() if "-int8" in label or "-bf16" in label}
  _months(steps["bare-tensorflow-float32+gradcam"], phantoms[0][:args.batch_size], phantoms[1][:args.batch_size],
          args.batch_size)
  report["accuracy_months_vs_bare_float32"] = accuracy

  rates = {name: [] for name in steps}
  for _ in range(args.repeats):
    for name, step in steps.items():
      rates[name].append(_timed(step, timed_images, timed_male, args.batch_size))
  speed = {}
  for name, values in rates.items():
    bare = rates["bare-tensorflow-float32" + ("+gradcam" if name.endswith("+gradcam") else "")]
    ratios = [v / b for v, b in zip(values, bare)]
    speed[name] = {"images_per_cpu_s": values, "ratio_to_bare": ratios,
                   "median_ratio": statistics.median(ratios)}
  report["speed"] = speed

  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    engine = engines.TensorFlowEngine(model, jit_compile=True)
    images = np.concatenate([timed_images] * -(-GPU_BATCH_SIZE * 4 // len(timed_images)))[:GPU_BATCH_SIZE * 4]
    male = np.zeros(len(images), np.float32)
    engine.run(images[:GPU_BATCH_SIZE], male[:GPU_BATCH_SIZE])
    start = time.perf_counter()
    for batch in _batches(images, male, GPU_BATCH_SIZE):
      engine.run(*batch)
    report["gpu"] = {"devices": [g.name for g in gpus], "engine": engine.label, "batch_size": GPU_BATCH_SIZE,
                     "images_per_s": len(images) / (time.perf_counter() - start)}
  else:
    report["gpu"] = "no GPU here: GPU numbers not measured (with one visible, the TensorFlow engine runs with XLA at batch 32)"

  _print(report)
  (out_dir / "engine.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
  return report


def _print(report: dict) -> None:
  print(f"model: {report['model']}; batch {report['config']['batch_size']}, "
        f"{report['config']['num_images']} images x {report['config']['repeats']} rounds")
  if "cpu_native_bf16" in report:
    print(f"OpenVINO conversion (or cache hit): {report['openvino_convert_or_cache_s']:.1f} s; native bf16 on this "
          f"CPU: {report['cpu_native_bf16']}" + ("" if report["cpu_native_bf16"] else
                                                 " (a bf16 hint then computes float32)"))
  print(f"TensorFlow threads: intra-op {report['tf_intra_op_threads']}, inter-op {report['tf_inter_op_threads']} "
        f"(0: one per core, {report['cpu_count']} here)")
  if "cpu_optimization_capabilities" in report:
    print(f"OpenVINO CPU capabilities: {', '.join(report['cpu_optimization_capabilities'])}")
  if "int8_calibration_images" in report:
    print(f"int8: NNCF quantization on {report['int8_calibration_images']} calibration images "
          f"(or cache hit): {report['int8_quantize_or_cache_cpu_s']:.1f} CPU-s")
  print("accuracy, months vs bare TensorFlow float32 (mean / max |diff|, tolerance 0.5 / 2):")
  for label, sets in report["accuracy_months_vs_bare_float32"].items():
    parts = [f"{name} {d['mean_abs_diff_months']:.4f} / {d['max_abs_diff_months']:.4f}"
             f"{'' if d['within_tolerance'] else ' OUTSIDE'}" for name, d in sets.items()]
    print(f"  {label:28s} " + "; ".join(parts))
  for label, gate in report.get("reduced_precision_gate", {}).items():
    print(f"  gate {label}: {'PASSED' if gate['passed'] else 'FAILED (scoring would stay float32)'} on {', '.join(gate['sets'])}")
  print("images per CPU-second, ratio to the bare TensorFlow float32 forward of the same round:")
  for name, s in report["speed"].items():
    rates = " / ".join(f"{v:.2f}" for v in s["images_per_cpu_s"])
    ratios = " / ".join(f"{r:.2f}" for r in s["ratio_to_bare"])
    print(f"  {name:36s} {rates:>24s} img/CPU-s   x{s['median_ratio']:.2f} (rounds: {ratios})")
  print(f"GPU: {report['gpu']}")


if __name__ == "__main__":
  main()
