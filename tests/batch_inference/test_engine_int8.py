"""int8 engine: quantized on a trained model, checked against TensorFlow float32, used only when the check passed."""

import numpy as np
import pytest

from batch_inference import engines
from batch_inference import score
from bone_age import cli
from bone_age import export
from bone_age import letterbox
from bone_age import model as ba_model
from bone_age import phantoms

from tests.batch_inference.conftest import IMAGE_SIZE_PX

needs_nncf = pytest.mark.skipif(
    not (engines.openvino_installed() and __import__("importlib").util.find_spec("nncf")),
    reason="openvino and nncf not installed (pip install '.[openvino]')")


def _phantoms(count: int, seed: int):
  """(images (N,S,S,1) uint8, male (N,) float32, months (N,)) of phantoms drawn small (fast) and letterboxed."""
  labels = phantoms.sample_labels(count, seed=seed)
  images = [letterbox.letterbox(phantoms.render_phantom(age, male, seed=seed * 10_000 + i, height_px=128,
                                                        width_px=100).image, IMAGE_SIZE_PX)[0]
            for i, (_, age, male) in enumerate(labels)]
  return (np.stack(images)[..., None], np.array([m for _, _, m in labels], np.float32),
          np.array([a for _, a, _ in labels], np.float32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny model trained on phantoms until its months follow the image, exported.

  Quantization error depends on the activations' ranges, which random
  weights do not have: the check has to run on a model that learned something.
  """
  import keras  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  images, male, months = _phantoms(256, seed=1)
  model = ba_model.build_model(image_size_px=IMAGE_SIZE_PX, age_group_edges_months=[113.0, 150.0], backbone="tiny",
                               weights=None)
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.9  # moving statistics that follow a short training (the trainer's learning test does too)
  model.compile(optimizer=keras.optimizers.Adam(3e-3), loss={ba_model.AGE_OUTPUT: "mae"})
  model.fit({ba_model.IMAGE_INPUT: images, ba_model.MALE_INPUT: male[:, None]}, {ba_model.AGE_OUTPUT: months[:, None]},
            epochs=40, batch_size=32, verbose=0)
  export_dir = tmp_path_factory.mktemp("trained_export")
  export.save_export(model, str(export_dir), {"backbone": "tiny", "dataset_version": "test-phantoms"})
  loaded, _ = export.load_export(str(export_dir))
  return loaded, str(export_dir)


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
  import os  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  old = os.environ.get(engine_openvino.CACHE_ENV)
  os.environ[engine_openvino.CACHE_ENV] = str(tmp_path_factory.mktemp("int8_cache"))
  yield
  if old is None:
    os.environ.pop(engine_openvino.CACHE_ENV)
  else:
    os.environ[engine_openvino.CACHE_ENV] = old


@pytest.mark.heavy
@needs_nncf
@pytest.mark.slow  # trains a model, quantizes it and scores three sets with two engines
def test_int8_check_holds_the_stated_tolerance_on_real_and_phantom_images(trained, engine_cache, real_batch):
  from batch_inference import engine_int8  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_openvino  # pylint: disable=g-import-not-at-top

  del engine_cache
  model, export_dir = trained
  validation = _phantoms(64, seed=2)
  test_split = _phantoms(48, seed=3)
  reference = engine_int8.run_batched(engines.TensorFlowEngine(model), *test_split[:2])
  # Trained, if briefly: its months spread and follow the phantoms' bone ages.
  assert reference.std() > 5.0 and np.corrcoef(reference, test_split[2])[0, 1] > 0.2, "the fixture did not learn"

  xml = engine_int8.quantize(model, export_dir, *validation[:2])
  assert engine_int8.quantize(model, export_dir, *validation[:2]) == xml  # cached by the calibration's content
  check = engine_int8.accuracy_check(model, xml, {"phantom_test": test_split[:2], "real_sample": real_batch})
  engine_int8.write_to_export(export_dir, xml, check)

  # The check's numbers are the months' real differences, measured here independently.
  int8 = engine_openvino.OpenVINOEngine(xml, engines.INT8)
  assert int8.label == "openvino-int8"
  for name, (images, male) in {"phantom_test": test_split[:2], "real_sample": real_batch}.items():
    keras_months = np.asarray(model.predict_on_batch({ba_model.IMAGE_INPUT: images,
                                                      ba_model.MALE_INPUT: male[:, None]})[ba_model.AGE_OUTPUT])[:, 0]
    diff = np.abs(engine_int8.run_batched(int8, images, male) - keras_months)
    measured = check["sets"][name]
    assert measured["images"] == len(images)
    assert measured["mean_abs_diff_months"] == pytest.approx(diff.mean(), abs=1e-3)
    assert measured["max_abs_diff_months"] == pytest.approx(diff.max(), abs=1e-3)
    assert measured["within_tolerance"] == (diff.mean() <= 0.5 and diff.max() <= 2.0)
  assert check["passed"] == all(s["within_tolerance"] for s in check["sets"].values())

  # The export now carries the int8 model; scoring uses it only if the check passed.
  assert engine_int8.read_check(export_dir)["passed"] == check["passed"]
  auto = engines.load_engine(model, export_dir, "openvino", "auto")
  if check["passed"]:
    assert auto.label == "openvino-int8"
    months = engine_int8.run_batched(engines.load_engine(model, export_dir, "openvino", engines.INT8), *real_batch)
    reference_real = engine_int8.run_batched(engines.TensorFlowEngine(model), *real_batch)
    assert engine_openvino.within_tolerance(engine_openvino.month_differences(reference_real, months))
  else:
    assert auto.precision != engines.INT8
    with pytest.raises(ValueError, match="beyond the tolerance"):
      engines.load_engine(model, export_dir, "openvino", engines.INT8)


@pytest.mark.heavy
@needs_nncf
@pytest.mark.slow
def test_int8_cache_key_follows_the_calibration_images(trained, engine_cache):
  from batch_inference import engine_int8  # pylint: disable=g-import-not-at-top

  del engine_cache
  model, export_dir = trained
  images, male, _ = _phantoms(16, seed=4)
  first = engine_int8.quantize(model, export_dir, images, male)
  other = engine_int8.quantize(model, export_dir, images[::-1].copy(), male[::-1].copy())
  assert first != other
  with pytest.raises(ValueError, match="at least 8 images"):
    engine_int8.quantize(model, export_dir, images[:7], male[:7])


@pytest.fixture(scope="module")
def real_batch(rsna_sample_dir):
  from batch_inference import engine_int8  # pylint: disable=g-import-not-at-top
  return engine_int8.read_real_sample(str(rsna_sample_dir), IMAGE_SIZE_PX)


@pytest.mark.skipif(not engines.openvino_installed(), reason="openvino not installed (pip install '.[openvino]')")
def test_int8_needs_a_quantized_export(tiny_export):
  model, _ = export.load_export(str(tiny_export))
  with pytest.raises(ValueError, match="has no int8 model"):
    engines.load_engine(model, str(tiny_export), "openvino", engines.INT8)


@pytest.mark.skipif(not engines.openvino_installed(), reason="openvino not installed (pip install '.[openvino]')")
def test_int8_model_of_other_weights_is_refused_and_auto_falls_back(tiny_export, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from batch_inference import engine_int8  # pylint: disable=g-import-not-at-top

  export_dir = tmp_path / "export"
  shutil.copytree(tiny_export, export_dir)
  (export_dir / engine_int8.EXPORT_SUBDIR).mkdir()
  # A passed check that names other weights than this export's model.keras (a model re-saved in place).
  (export_dir / engine_int8.EXPORT_SUBDIR / engine_int8.CHECK_FILE).write_text(
      json.dumps({"passed": True, "sets": {}, "export_sha256": "0" * 64}))
  model, _ = export.load_export(str(export_dir))
  with pytest.raises(ValueError, match="made from other weights"):
    engines.load_engine(model, str(export_dir), "openvino", engines.INT8)
  assert engines.load_engine(model, str(export_dir), "openvino", "auto").precision != engines.INT8


def test_int8_with_tensorflow_is_a_usage_error(tiny_export, tmp_path):
  # A usage error: the console script prints it as one line and exits 2 (tests/test_cli.py).
  with pytest.raises(cli.UsageError, match="--precision=int8 needs --engine=openvino"):
    score.parse_args([f"--model_dir={tiny_export}", f"--inputs={tmp_path}", f"--output_dir={tmp_path}",
                      "--engine=tensorflow", "--precision=int8"])
  with pytest.raises(ValueError, match="needs engine 'openvino'"):
    engines.load_engine(None, "unused", "tensorflow", engines.INT8)
