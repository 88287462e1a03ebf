"""boneage-evaluate: metrics and plots of an exported model on one dataset split.

  boneage-evaluate --data_dir=DATA --model_dir=RUN --split=test --output_dir=EVAL

--model_dir is a training run directory (holding export/) or an export
directory itself. The dataset config is chosen by the model's image size.
"""

import json

from absl import app
from absl import flags

from trainer import evaluate

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir holding rsna_bone_age/<S>px/<version>.", required=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run dir (with export/) or an export dir.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Dataset split to evaluate.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where metrics.json, predictions.csv and plots go.",
                                  required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", evaluate.DEFAULT_BATCH_SIZE, "Images per forward pass.")


def main(argv=None):
  if argv is None:
    app.run(_main)
  else:
    _main(argv)


def _main(argv):
  del argv  # flags only
  report = evaluate.evaluate(_DATA_DIR.value, _MODEL_DIR.value, _SPLIT.value, _OUTPUT_DIR.value, _BATCH_SIZE.value)
  print(json.dumps({"split": report["split"], "overall": report["overall"], "baseline": report["baseline"]}, indent=2))


if __name__ == "__main__":
  app.run(_main)
