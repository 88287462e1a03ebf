"""The bone age model: raw letterboxed radiograph + sex -> months and age group.

One Keras functional model, backend-agnostic (Keras layers and keras.ops
only), so the same code trains under TensorFlow and JAX and exports for
serving. Architecture is the seed notebook's (REFERENCE.md 1) with its
defects fixed: preprocessing inside the model, a clamped month output and
age-group edges that travel with the weights.

The backbone is a nested functional model named `backbone`; Grad-CAM needs
its output tensor as seen from the outer model (see `backbone_feature_layer`).
"""

from collections.abc import Sequence

import keras

from bone_age import layers as ba_layers

IMAGE_INPUT = "image"
MALE_INPUT = "male"
AGE_OUTPUT = "boneage_months"
GROUP_OUTPUT = "age_group"

BACKBONE_LAYER = "backbone"
PREPROCESS_LAYER = "preprocess"
AGE_UNIT_LAYER = "boneage_unit"
# Xception's separable-conv stem needs at least 71 px (keras.applications check).
XCEPTION_MIN_SIZE_PX = 71

# Pixel scaling each keras.applications family was trained with (module name prefix -> mode).
_SCALING_BY_MODULE = {
    "xception": "tf", "inception_v3": "tf", "inception_resnet_v2": "tf", "mobilenet": "tf",
    "mobilenet_v2": "tf", "nasnet": "tf", "resnet_v2": "tf",
    "resnet": "caffe", "resnet50": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "densenet": "torch",
    "efficientnet": "raw", "efficientnet_v2": "raw", "convnext": "raw", "regnet": "raw", "mobilenet_v3": "raw",
}


def _tiny_backbone(image_size_px: int) -> keras.Model:
  """A 3-conv network with the same interface as a keras.applications backbone.

  Exists only so tests can run the real model, training and export paths in
  seconds; its last layer is a ReLU like Xception's `block14_sepconv2_act`.
  """
  inputs = keras.Input((image_size_px, image_size_px, 3), name="backbone_input")
  x = inputs
  for i, filters in enumerate((8, 16, 32)):
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"tiny_conv{i}")(x)
    x = keras.layers.BatchNormalization(name=f"tiny_bn{i}")(x)
    x = keras.layers.Activation("relu", name=f"tiny_act{i}")(x)
  return keras.Model(inputs, x, name=BACKBONE_LAYER)


def resolve_application(backbone: str):
  """The keras.applications constructor for a case-insensitive name, e.g. 'resnet50'.

  Raises:
    ValueError: naming the valid choices, for an unknown backbone.
  """
  wanted = backbone.lower().replace("_", "")
  for name in dir(keras.applications):
    candidate = getattr(keras.applications, name)
    if callable(candidate) and name[0].isupper() and name.lower() == wanted:
      return candidate
  names = sorted(n for n in dir(keras.applications) if n[0].isupper())
  raise ValueError(f"unknown backbone {backbone!r}; expected 'tiny' or one of keras.applications: {names}")


def pixel_scaling_mode(backbone: str) -> str:
  """How the backbone wants its pixels (see bone_age.layers.SCALING_MODES)."""
  if backbone == "tiny":
    return "tf"
  module = resolve_application(backbone).__module__.rsplit(".", 1)[-1]
  return _SCALING_BY_MODULE.get(module, "tf")


def _build_backbone(backbone: str, image_size_px: int, weights: str | None) -> keras.Model:
  if backbone == "tiny":
    net = _tiny_backbone(image_size_px)
    if weights is not None:
      net.load_weights(weights)
    return net
  if backbone.lower() == "xception" and image_size_px < XCEPTION_MIN_SIZE_PX:
    raise ValueError(f"Xception needs image_size_px >= {XCEPTION_MIN_SIZE_PX}, got {image_size_px}")
  application = resolve_application(backbone)
  net = application(include_top=False, weights=weights, input_shape=(image_size_px, image_size_px, 3), pooling=None)
  # Re-wrap under a fixed name so Grad-CAM and the trainer find it whatever the architecture.
  return keras.Model(net.inputs, net.output, name=BACKBONE_LAYER)


def build_model(*, image_size_px: int, age_group_edges_months: Sequence[float], backbone: str = "xception",
                weights: str | None = "imagenet", dropout_image: float = 0.5,
                dropout_fusion: float = 0.4) -> keras.Model:
  """The two-input, two-output bone age model.

  Args:
    image_size_px: S of the letterboxed (S, S, 1) uint8 input.
    age_group_edges_months: inner group edges from the dataset metadata;
      the softmax has len(edges) + 1 classes and the edges are saved with it.
    backbone: "xception", "tiny" (tests) or any keras.applications name.
    weights: "imagenet", None (random init) or a local weights file path.
    dropout_image: dropout after global average pooling (seed: 0.5).
    dropout_fusion: dropout after the fused BatchNorm (seed: 0.4).

  Returns:
    A functional model with inputs {"image": uint8 (B,S,S,1), "male": float32
    (B,1)} and float32 outputs {"boneage_months": (B,1) in [0, 240],
    "age_group": (B,G) softmax}, whatever the global dtype policy.
  """
  if weights == "imagenet" and backbone == "tiny":
    weights = None  # there is no pretrained tiny network; "imagenet" is only the production default.
  image = keras.Input((image_size_px, image_size_px, 1), dtype="uint8", name=IMAGE_INPUT)
  male = keras.Input((1,), dtype="float32", name=MALE_INPUT)

  pixels = ba_layers.GreyToBackboneInput(mode=pixel_scaling_mode(backbone), name=PREPROCESS_LAYER)(image)
  features = _build_backbone(backbone, image_size_px, weights)(pixels)
  x = keras.layers.GlobalAveragePooling2D(name="image_gap")(features)
  x = keras.layers.Dropout(dropout_image, name="image_dropout")(x)
  x = keras.layers.Dense(1024, activation="relu", name="image_dense")(x)
  s = keras.layers.Dense(32, activation="relu", name="sex_dense")(male)
  x = keras.layers.Concatenate(name="fusion_concat")([x, s])
  x = keras.layers.Dense(1024, activation="relu", name="fusion_dense1")(x)
  x = keras.layers.BatchNormalization(name="fusion_bn")(x)
  x = keras.layers.Dropout(dropout_fusion, name="fusion_dropout")(x)
  x = keras.layers.Dense(512, activation="relu", name="fusion_dense2")(x)

  # Heads in float32 under any mixed policy: bf16 has ~3 significant digits,
  # i.e. ~1 month of resolution at 240 months, the size of the error we measure.
  unit_age = keras.layers.Dense(1, dtype="float32", name=AGE_UNIT_LAYER,
                                bias_initializer=keras.initializers.Constant(0.5))(x)
  months = ba_layers.ClampedMonths(dtype="float32", name=AGE_OUTPUT)(unit_age)
  group = ba_layers.AgeGroupSoftmax(age_group_edges_months, dtype="float32", name=GROUP_OUTPUT)(x)
  return keras.Model(inputs={IMAGE_INPUT: image, MALE_INPUT: male},
                     outputs={AGE_OUTPUT: months, GROUP_OUTPUT: group}, name="bone_age")


def age_group_edges(model: keras.Model) -> list[float]:
  """The inner age-group edges (months) the model's softmax was trained on."""
  return list(model.get_layer(GROUP_OUTPUT).age_group_edges_months)


def image_size_px(model: keras.Model) -> int:
  """S of the model's (S, S, 1) image input."""
  return int(model.get_layer(IMAGE_INPUT).output.shape[1])


def backbone_feature_layer(model: keras.Model) -> keras.layers.Layer:
  """The nested backbone model, whose output is what Grad-CAM differentiates against.

  An inner layer of the nested backbone cannot be an output of a new model
  built on `model.inputs` (it is "not connected to inputs", REFERENCE.md 4);
  the backbone as a whole is. Use `backbone_feature_tensor` for the tensor.
  """
  return model.get_layer(BACKBONE_LAYER)


def backbone_feature_tensor(model: keras.Model):
  """The backbone's output as a symbolic tensor of the OUTER model's graph.

  `keras.Model(model.inputs, [backbone_feature_tensor(model), model.output])`
  gives features and predictions from one forward pass.
  """
  layer = backbone_feature_layer(model)
  # Each call of the backbone on a symbolic tensor is one inbound node; the one
  # wired into `model` is the node whose output is reachable from model.inputs
  # (another model sharing the backbone would add nodes of its own).
  outer_nodes = [node for node in layer._inbound_nodes if node.operation is layer]  # pylint: disable=protected-access
  for node in outer_nodes:
    tensors = node.output_tensors
    if _in_graph(model, tensors[0]):
      return tensors[0]
  raise ValueError(f"backbone of model {model.name!r} is not connected to its inputs")


def _in_graph(model: keras.Model, tensor) -> bool:
  try:
    keras.Model(model.inputs, tensor)
    return True
  except ValueError:
    return False
