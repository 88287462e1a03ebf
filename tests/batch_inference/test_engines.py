"""Inference engines: the same predictions, embeddings and Grad-CAM as the Keras model, and the choice recorded."""

import csv

import numpy as np
import pytest
from apache_beam.testing import test_pipeline

from batch_inference import engines
from batch_inference import handler
from batch_inference import score
from bone_age import cli
from bone_age import export
from bone_age import gradcam
from bone_age import imaging
from bone_age import letterbox
from bone_age import model as ba_model

from tests.batch_inference.conftest import IMAGE_SIZE_PX

# float32 engines compute the same graph; only the order of float additions differs.
FLOAT32_TOLERANCE_MONTHS = 1e-3

needs_openvino = pytest.mark.skipif(not engines.openvino_installed(),
                                    reason="openvino not installed (pip install '.[openvino]')")


@pytest.fixture(scope="module")
def loaded(tiny_export):
  model, _ = export.load_export(str(tiny_export))
  return model


@pytest.fixture(scope="module")
def real_batch(rsna_sample_dir):
  """The 65 real sample radiographs, letterboxed to the tiny export's size, with their sexes."""
  with open(rsna_sample_dir / "labels.csv") as f:
    rows = list(csv.DictReader(f))
  images = []
  for row in rows:
    data = (rsna_sample_dir / "images" / f"{row['id']}.png").read_bytes()
    pixels = imaging.decode_radiograph(data, row["id"]).pixels
    images.append(letterbox.letterbox(pixels, IMAGE_SIZE_PX)[0])
  return np.stack(images)[..., None], np.array([r["male"] == "True" for r in rows], np.float32)


@pytest.fixture(scope="module")
def phantom_batch():
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top  (numpy-only helpers)
  return engine_openvino.phantom_batch(IMAGE_SIZE_PX, count=8)


@pytest.fixture(scope="module")
def openvino_xml(loaded, tiny_export, tmp_path_factory):
  if not engines.openvino_installed():
    pytest.skip("openvino not installed")
  import os  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  os.environ[engine_openvino.CACHE_ENV] = str(tmp_path_factory.mktemp("engine_cache"))
  return engine_openvino.converted_model_path(loaded, str(tiny_export))


def _keras_reference(model, images, male):
  """Months, probabilities, embeddings and Grad-CAM the plain Keras way."""
  import keras  # pylint: disable=g-import-not-at-top

  inputs = {ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male.reshape(-1, 1)}
  outputs = model.predict_on_batch(inputs)
  features = keras.Model(model.inputs, ba_model.backbone_feature_tensor(model))(inputs, training=False).numpy()
  _, _, heatmaps = gradcam.predict_with_gradcam(model, images, male)
  return (np.asarray(outputs[ba_model.AGE_OUTPUT])[:, 0], np.asarray(outputs[ba_model.GROUP_OUTPUT]),
          features.mean(axis=(1, 2)), heatmaps)


def _run_in_batches(engine, images, male, batch_size=8):
  out = [engine.run(*handler.stack_requests(
      [handler.ScoreRequest(images[i, ..., 0], male[i]) for i in range(s, min(s + batch_size, len(images)))],
      batch_size)) for s in range(0, len(images), batch_size)]
  n = len(images)
  return (np.concatenate([o.months for o in out])[:n], np.concatenate([o.probabilities for o in out])[:n],
          np.concatenate([o.embeddings for o in out])[:n], np.concatenate([o.features for o in out])[:n])


def _assert_same_predictions(model, engine, images, male, tolerance_months):
  months, probs, embeddings, features = _run_in_batches(engine, images, male)
  ref_months, ref_probs, ref_embeddings, ref_heatmaps = _keras_reference(model, images, male)
  diff = np.abs(months - ref_months)
  assert diff.mean() <= tolerance_months and diff.max() <= 4 * tolerance_months, diff
  np.testing.assert_allclose(probs, ref_probs, atol=1e-3)
  assert embeddings.dtype == np.float32 and embeddings.shape == ref_embeddings.shape
  np.testing.assert_allclose(embeddings, ref_embeddings, rtol=1e-3, atol=1e-4)
  heatmaps = gradcam.heatmaps_from_features(model, features, male)
  lit = ref_heatmaps.max(axis=(1, 2)) > 0
  assert lit.sum() >= len(images) // 2  # enough non-trivial maps for the correlation to mean something
  for i in np.flatnonzero(lit):
    assert np.corrcoef(heatmaps[i].ravel(), ref_heatmaps[i].ravel())[0, 1] >= 0.99, i


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_tensorflow_engine_matches_keras_on_real_and_phantom_images(loaded, real_batch, phantom_batch, jit_compile):
  engine = engines.TensorFlowEngine(loaded, jit_compile=jit_compile)
  assert engine.label == ("tensorflow-float32-xla" if jit_compile else "tensorflow-float32")
  for images, male in (real_batch, phantom_batch):
    _assert_same_predictions(loaded, engine, images, male, FLOAT32_TOLERANCE_MONTHS)


@needs_openvino
def test_openvino_float32_matches_keras_on_real_and_phantom_images(loaded, openvino_xml, real_batch, phantom_batch):
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  engine = engine_openvino.OpenVINOEngine(openvino_xml, engines.FLOAT32)
  assert engine.label == "openvino-float32"
  for images, male in (real_batch, phantom_batch):
    _assert_same_predictions(loaded, engine, images, male, FLOAT32_TOLERANCE_MONTHS)


@needs_openvino
@pytest.mark.slow  # a second compilation; on CPUs without native bf16 OpenVINO computes it in float32
def test_openvino_bf16_stays_within_the_reduced_precision_tolerance(loaded, openvino_xml, real_batch, phantom_batch):
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  engine = engine_openvino.OpenVINOEngine(openvino_xml, engines.BF16)
  assert engine.label == "openvino-bf16"
  for images, male in (real_batch, phantom_batch):
    months = _run_in_batches(engine, images, male)[0]
    reference = _keras_reference(loaded, images, male)[0]
    assert engine_openvino.within_tolerance(engine_openvino.month_differences(reference, months))


@needs_openvino
def test_a_batch_split_over_streams_equals_the_whole_batch_on_one_stream(openvino_xml, phantom_batch):
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  images, male = phantom_batch[0][:5], phantom_batch[1][:5]
  whole = engine_openvino.OpenVINOEngine(openvino_xml, engines.FLOAT32, performance_hint="LATENCY")
  split = engine_openvino.OpenVINOEngine(openvino_xml, engines.FLOAT32, performance_hint="THROUGHPUT")
  assert whole.part_sizes(5) == [5]
  sizes = split.part_sizes(5)
  assert sum(sizes) == 5 and max(sizes) - min(sizes) <= 1
  expected, got = whole.run(images, male), split.run(images, male)
  for name in ("months", "probabilities", "features"):
    np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-4, atol=1e-3)


@needs_openvino
def test_openvino_engine_serves_concurrent_threads(openvino_xml, phantom_batch):
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  engine = engine_openvino.OpenVINOEngine(openvino_xml, engines.FLOAT32)
  images, male = phantom_batch
  batches = [(np.roll(images, shift, axis=0)[:4], np.roll(male, shift)[:4]) for shift in range(8)]
  serial = [engine.run(*b).months for b in batches]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(lambda b: engine.run(*b).months, batches))
  for expected, got in zip(serial, threaded):
    np.testing.assert_array_equal(got, expected)


@needs_openvino
def test_conversion_is_cached_per_export_content(loaded, tiny_export, openvino_xml, tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  before = os.stat(openvino_xml).st_mtime_ns
  assert engine_openvino.converted_model_path(loaded, str(tiny_export)) == openvino_xml
  assert os.stat(openvino_xml).st_mtime_ns == before  # reused, not converted again
  # Other weights under the same layout are another export: another cache entry.
  other = ba_model.build_model(image_size_px=IMAGE_SIZE_PX, age_group_edges_months=[113.0, 150.0], backbone="tiny",
                               weights=None)
  export.save_export(other, str(tmp_path / "other"), {"backbone": "tiny", "dataset_version": "test"})
  assert engine_openvino._export_digest(str(tmp_path / "other")) != engine_openvino._export_digest(str(tiny_export))


@needs_openvino
def test_auto_precision_keeps_bf16_only_within_tolerance(loaded, tiny_export, openvino_xml):
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  assert engine_openvino.within_tolerance({"mean_abs_diff_months": 0.5, "max_abs_diff_months": 2.0})
  assert not engine_openvino.within_tolerance({"mean_abs_diff_months": 0.51, "max_abs_diff_months": 1.0})
  assert not engine_openvino.within_tolerance({"mean_abs_diff_months": 0.1, "max_abs_diff_months": 2.1})
  engine = engine_openvino.load_checked(loaded, str(tiny_export))
  assert engine.check["chosen"] == engine.precision
  if engine_openvino.cpu_has_native_bf16():
    assert engine.check["phantoms"] == engine_openvino.CHECK_PHANTOMS
    assert (engine.precision == engines.BF16) == engine_openvino.within_tolerance(engine.check)
  else:
    assert engine.precision == engines.FLOAT32 and "no native bf16" in engine.check["reason"]


def test_engine_choice():
  assert engines.resolve_engine("auto", gpu_count=1) == "tensorflow"
  assert engines.resolve_engine("auto", gpu_count=0) == ("openvino" if engines.openvino_installed() else "tensorflow")
  assert engines.resolve_engine("tensorflow", gpu_count=0) == "tensorflow"
  with pytest.raises(ValueError, match="unknown engine"):
    engines.resolve_engine("tensorrt", gpu_count=0)
  with pytest.raises(ValueError, match="needs engine 'openvino'"):
    engines.load_engine(None, "unused", "tensorflow", engines.BF16)
  with pytest.raises(ValueError, match="unknown precision"):
    engines.load_engine(None, "unused", "tensorflow", "int4")
  with pytest.raises(ValueError, match="unknown engine"):
    handler.BoneAgeModelHandler("unused", engine="tensorrt")


def test_bf16_with_tensorflow_is_a_usage_error(tiny_export, tmp_path):
  # A usage error: the console script prints it as one line and exits 2 (tests/test_cli.py).
  with pytest.raises(cli.UsageError, match="--precision=bf16 needs --engine=openvino"):
    score.parse_args([f"--model_dir={tiny_export}", f"--inputs={tmp_path}", f"--output_dir={tmp_path}",
                      "--engine=tensorflow", "--precision=bf16"])


def test_batch_size_zero_is_large_only_for_gpu_workers(monkeypatch):
  monkeypatch.setattr(handler, "visible_gpu_count", lambda: 0)
  assert score.default_batch_size(["--runner=DirectRunner"]) == score.CPU_BATCH_SIZE
  assert score.default_batch_size(["--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"]) == 32


# The OpenVINO run converts once more in a fresh process-free pipeline: the float32 agreement tests above
# cover its numbers, so the end-to-end run is a slow test.
@pytest.mark.parametrize("engine", ["tensorflow", pytest.param("openvino", marks=[needs_openvino, pytest.mark.slow])])
def test_every_row_and_the_summary_record_the_engine(engine, tiny_export, openvino_xml_or_none, make, outputs_of,
                                                     tmp_path):
  del openvino_xml_or_none  # only warms the conversion cache of this export
  inputs = tmp_path / "in"
  inputs.mkdir()
  for i in range(3):
    (inputs / f"{i}.png").write_bytes(make.png(make.pixels(i)))
  (inputs / "broken.png").write_bytes(make.png(make.pixels(9))[:60])  # truncated: a reject, not a crash
  summary = score.run([f"--model_dir={tiny_export}", f"--inputs={inputs}/*", f"--output_dir={tmp_path / 'out'}",
                       "--unknown_sex=male", "--gradcam=true", "--batch_size=2", f"--engine={engine}"],
                      test_pipeline=test_pipeline.TestPipeline())
  label = f"{engine}-float32"
  assert summary["read"] == 4 and summary["scored"] == 3 and summary["rejected"] == 1 and summary["read_equals_scored_plus_rejected"]
  assert summary["rows_by_engine"] == {label: 3}
  assert summary["engine"] == {"requested": engine, "precision": "float32", "batch_size": 2}
  out = outputs_of(tmp_path / "out")
  assert [r["engine"] for r in out["predictions"]] == [label] * 3
  assert all(r["engine"] == label for r in out["csv_rows"])
  assert out["summary"]["rows_by_engine"] == {label: 3} and out["summary"]["engine"]["requested"] == engine


@pytest.fixture
def openvino_xml_or_none(request):
  if "openvino" in request.node.name and engines.openvino_installed():
    return request.getfixturevalue("openvino_xml")
  return None


_CONVERT_AND_QUANTIZE_IMPORT = """
import tensorflow as tf
from batch_inference import engine_int8, engine_openvino
ov = engine_openvino.import_openvino()
engine_int8._import_nncf()
with engine_openvino.no_vendor_telemetry():
  ov.convert_model(tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec((1, 4), tf.float32)]).get_concrete_function())
"""


@needs_openvino
def test_conversion_and_quantization_send_no_telemetry(tmp_path):
  # openvino-telemetry writes a client id under ~/intel before it sends anything; a fresh HOME shows whether it did.
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  home = tmp_path / "home"
  home.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI")}
  env.update(HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _CONVERT_AND_QUANTIZE_IMPORT], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert not (home / "intel").exists() or not any((home / "intel").iterdir()), sorted((home / "intel").iterdir())
