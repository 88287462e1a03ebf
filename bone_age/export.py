"""The export: one directory a scorer or evaluator needs, and nothing else.

Layout (what `boneage-train` writes to <model_dir>/export):
  model.keras               Keras model, loadable in safe mode (custom layers
                            are registered in bone_age.layers)
  saved_model/              TensorFlow SavedModel with a `serving_default`
                            signature: image uint8 (B,S,S,1), male float32 (B,)
                            -> boneage_months (B,), age_group (B,G)
  export_metadata.json      image size, age-group edges, backbone, dataset
                            version and the signature names, so a consumer
                            needs neither the trainer's config nor Keras.
"""

import json
import os

import keras

from bone_age import layers as _layers  # pylint: disable=unused-import  (registers the custom layers)
from bone_age import model as ba_model
from bone_age.age_groups import MAX_AGE_MONTHS

EXPORT_METADATA_FILE = "export_metadata.json"
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SERVING_SIGNATURE = "serving_default"
# Keys a caller must supply; the model itself knows the rest.
REQUIRED_METADATA = ("backbone", "dataset_version")


def _gfile():
  """tf.io.gfile, so export dirs may live on GCS (Vertex AI) as well as on disk."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf.io.gfile


def _to_json(value):
  """numpy scalars and arrays (e.g. metrics from the trainer) as plain JSON values."""
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"export metadata value {value!r} of type {type(value).__name__} is not JSON serialisable")


def _serving_metadata(model: keras.Model, metadata: dict) -> dict:
  """Caller metadata merged with what the model itself says, checked for conflicts."""
  missing = [k for k in REQUIRED_METADATA if k not in metadata]
  if missing:
    raise ValueError(f"export metadata lacks {missing}")
  derived = {
      "image_size_px": ba_model.image_size_px(model),
      "age_group_edges_months": ba_model.age_group_edges(model),
  }
  for key, value in derived.items():
    given = metadata.get(key)
    if given is not None and (list(map(float, given)) if isinstance(value, list) else int(given)) != value:
      raise ValueError(f"export metadata {key}={given!r} contradicts the model ({value!r})")
  return {
      **metadata,
      **derived,
      "max_age_months": MAX_AGE_MONTHS,
      "num_age_groups": len(derived["age_group_edges_months"]) + 1,
      "keras_file": KERAS_FILE,
      "saved_model_dir": SAVED_MODEL_DIR,
      "serving_signature": SERVING_SIGNATURE,
      "signature_inputs": {ba_model.IMAGE_INPUT: "uint8 (B,S,S,1) letterboxed radiograph",
                           ba_model.MALE_INPUT: "float32 (B,) 1 = male, 0 = female"},
      "signature_outputs": {ba_model.AGE_OUTPUT: "float32 (B,) months in [0, max_age_months]",
                            ba_model.GROUP_OUTPUT: "float32 (B,G) age-group probabilities"},
      "keras_version": keras.__version__,
  }


def _write_saved_model(model: keras.Model, path: str) -> None:
  """A SavedModel whose signature takes what a scorer has: uint8 pixels and a flat sex vector."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  size = ba_model.image_size_px(model)

  # keras.ops (not tf.*) so the same endpoint also converts under the JAX backend (jax2tf).
  def serve(image, male):
    inputs = {ba_model.IMAGE_INPUT: image, ba_model.MALE_INPUT: keras.ops.reshape(male, (-1, 1))}
    outputs = model(inputs, training=False)
    return {
        ba_model.AGE_OUTPUT: keras.ops.reshape(outputs[ba_model.AGE_OUTPUT], (-1,)),
        ba_model.GROUP_OUTPUT: outputs[ba_model.GROUP_OUTPUT],
    }

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(
      name=SERVING_SIGNATURE,
      fn=serve,
      input_signature=[
          tf.TensorSpec((None, size, size, 1), tf.uint8, name=ba_model.IMAGE_INPUT),
          tf.TensorSpec((None,), tf.float32, name=ba_model.MALE_INPUT),
      ],
  )
  archive.write_out(path, verbose=False)


def save_export(model: keras.Model, export_dir: str, metadata: dict) -> None:
  """Writes model.keras, saved_model/ and export_metadata.json into export_dir.

  Args:
    model: a model from bone_age.model.build_model (trained).
    export_dir: created if absent; existing files of the layout are replaced.
    metadata: at least `backbone` and `dataset_version`; anything else a
      scorer should know (training config name, metrics). `image_size_px` and
      `age_group_edges_months` are taken from the model and, if given, must agree.

  Raises:
    ValueError: for missing or contradictory metadata.
  """
  # Serialised before anything is written, so bad metadata leaves no half export.
  metadata_json = json.dumps(_serving_metadata(model, metadata), indent=2, sort_keys=True, default=_to_json)
  gfile = _gfile()
  gfile.makedirs(export_dir)
  model.save(os.path.join(export_dir, KERAS_FILE))
  _write_saved_model(model, os.path.join(export_dir, SAVED_MODEL_DIR))
  with gfile.GFile(os.path.join(export_dir, EXPORT_METADATA_FILE), "w") as f:
    f.write(metadata_json)


def read_metadata(export_dir: str) -> dict:
  """export_metadata.json of an export directory."""
  with _gfile().GFile(os.path.join(export_dir, EXPORT_METADATA_FILE)) as f:
    return json.loads(f.read())


def load_export(export_dir: str) -> tuple[keras.Model, dict]:
  """The Keras model (safe mode: no arbitrary code runs) and its metadata.

  Raises:
    FileNotFoundError: if export_dir is not an export.
    ValueError: if the model and its metadata disagree (a mixed-up export).
  """
  export_dir = resolve_export_dir(export_dir)
  metadata = read_metadata(export_dir)
  model = keras.saving.load_model(os.path.join(export_dir, metadata.get("keras_file", KERAS_FILE)), safe_mode=True)
  if ba_model.age_group_edges(model) != [float(e) for e in metadata["age_group_edges_months"]]:
    raise ValueError(f"{export_dir}: model edges {ba_model.age_group_edges(model)} differ from metadata "
                     f"{metadata['age_group_edges_months']}")
  if ba_model.image_size_px(model) != int(metadata["image_size_px"]):
    raise ValueError(f"{export_dir}: model input size differs from metadata image_size_px")
  return model, metadata


def load_serving_signature(export_dir: str):
  """The SavedModel serving function (TensorFlow only, no Keras needed).

  Returns the loaded SavedModel object and its signature: keep the object
  alive as long as the signature is used (REFERENCE.md 4).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  export_dir = resolve_export_dir(export_dir)
  metadata = read_metadata(export_dir)
  loaded = tf.saved_model.load(os.path.join(export_dir, metadata.get("saved_model_dir", SAVED_MODEL_DIR)))
  return loaded, loaded.signatures[metadata.get("serving_signature", SERVING_SIGNATURE)]


def resolve_export_dir(model_dir: str) -> str:
  """model_dir itself if it is an export, else model_dir/export.

  Raises:
    FileNotFoundError: naming both places looked at.
  """
  for candidate in (model_dir, os.path.join(model_dir, "export")):
    if _gfile().exists(os.path.join(candidate, EXPORT_METADATA_FILE)):
      return candidate
  raise FileNotFoundError(f"no {EXPORT_METADATA_FILE} in {model_dir} or {os.path.join(model_dir, 'export')}")
