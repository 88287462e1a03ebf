"""boneage-evaluate: metrics and plots of an exported model on one dataset split.

  boneage-evaluate --data_dir=DATA --model_dir=RUN --split=test --output_dir=EVAL

--model_dir is a training run directory (holding export/) or an export
directory itself. The dataset config is chosen by the model's image size.
Flags live in a private FlagValues: importing this module defines no global
absl flags (nor imports TensorFlow), so it cannot collide with another
command's flags.
"""

import json
import os
import sys

from absl import flags

from bone_age import cli
from bone_age import conformal
from bone_age import tta

_PROG = "boneage-evaluate"
_USAGE = "--data_dir=TFDS_DIR --model_dir=RUN_DIR --output_dir=EVAL_DIR [--split=test] [flags]"
_FLAG_GROUPS = (
    cli.FlagGroup("Model and data", ("model_dir", "data_dir", "split")),
    cli.FlagGroup("Outputs", ("output_dir", "masks_dir", "batch_size")),
    cli.FlagGroup("Uncertainty", ("tta_views", "interval_alpha")),
)
# trainer.evaluate.DEFAULT_BATCH_SIZE; not imported here so that --help and usage errors need no TensorFlow.
_DEFAULT_BATCH_SIZE = 32
_METRICS_FILE = "metrics.json"
_EXPORT_METADATA_FILE = "export_metadata.json"  # bone_age.export.EXPORT_METADATA_FILE (that module loads TensorFlow)


def _parse_flags(argv: list[str]) -> flags.FlagValues:
  """Parses a full command line; raises cli.UsageError for mistakes (SystemExit(0) after --help)."""
  fv = flags.FlagValues()
  flags.DEFINE_string("data_dir", None, "TFDS data dir holding rsna_bone_age/<S>px/<version>.", flag_values=fv)
  flags.DEFINE_string("model_dir", None, "Training run dir (with export/) or an export dir.", flag_values=fv)
  flags.DEFINE_string("split", "test", "Dataset split to evaluate.", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where metrics.json, predictions.csv and plots go.", flag_values=fv)
  flags.DEFINE_integer("batch_size", _DEFAULT_BATCH_SIZE, "Images per forward pass.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_string("masks_dir", None, "Phantoms' masks/ folder (<id>.png age-signal masks): adds the Grad-CAM "
                      "mass inside the mask to metrics.json.", flag_values=fv)
  flags.DEFINE_integer("tta_views", tta.DEFAULT_VIEWS, "Test-time augmentation views averaged per image "
                       "(bone_age.tta: small rotations, scales and shifts, never a flip); 1 = the plain prediction.",
                       lower_bound=1, upper_bound=tta.MAX_VIEWS, flag_values=fv)
  flags.DEFINE_float("interval_alpha", conformal.DEFAULT_ALPHA, "Miscoverage of the split-conformal prediction "
                     "interval whose coverage and width are reported (0.1: a 90% interval).", lower_bound=1e-6,
                     upper_bound=1 - 1e-6, flag_values=fv)
  cli.parse(_PROG, _USAGE, fv, argv, _FLAG_GROUPS, required=("data_dir", "model_dir", "output_dir"))
  cli.require_path("data_dir", fv.data_dir, "build the dataset first with boneage-preprocess")
  cli.require_path("model_dir", fv.model_dir, "train a model first with boneage-train")
  places = (fv.model_dir, os.path.join(fv.model_dir, "export"))
  if "://" not in fv.model_dir and not any(os.path.exists(os.path.join(d, _EXPORT_METADATA_FILE)) for d in places):
    raise cli.UsageError(f"--model_dir={fv.model_dir}: no trained model there (no {_EXPORT_METADATA_FILE} in it or "
                         "its export/ folder); train one first with boneage-train")
  cli.require_path("masks_dir", fv.masks_dir, "boneage-phantoms writes one as <output_dir>/masks")
  return fv


def _main(argv: list[str]) -> int:
  fv = _parse_flags(argv)
  cli.import_tensorflow_quietly(argv)
  from bone_age import errors  # pylint: disable=g-import-not-at-top
  from trainer import evaluate  # pylint: disable=g-import-not-at-top
  try:
    report = evaluate.evaluate(fv.data_dir, fv.model_dir, fv.split, fv.output_dir, fv.batch_size, fv.masks_dir,
                               fv.tta_views, fv.interval_alpha)
  except FileNotFoundError as e:
    raise cli.UsageError(f"--model_dir={fv.model_dir}: no trained model there ({e}); train one first with "
                         "boneage-train") from e
  except errors.InputError as e:
    raise cli.UsageError(str(e)) from e
  print(headline(report, fv.output_dir))
  return 0


def headline(report: dict, output_dir: str) -> str:
  """Two lines for the console: the split's MAE with its interval next to the baseline, and where the rest is."""
  overall, baseline = report["overall"], report["baseline"]
  low, high = overall.get("mae_months_ci95") or (None, None)
  interval = f" (95% CI {low:.1f}-{high:.1f})" if low is not None else ""
  within = overall.get("within_12_months")
  parts = [f"{report['split']} split, {overall['count']} images: MAE {overall['mae_months']:.1f} months{interval}",
           f"predict-the-training-mean {baseline['mae_months']:.1f} months"]
  if within is not None:
    parts.append(f"{100 * within:.0f}% within 12 months")
  interval = report.get("prediction_interval") or {}
  if interval.get("coverage") is not None:
    parts.append(f"{100 * interval['level']:.0f}% interval covers {100 * interval['coverage']:.0f}%")
  return " · ".join(parts) + f"\nmetrics ({_METRICS_FILE}), predictions and plots in {output_dir}"


def main(argv: list[str] | None = None) -> None:
  """Console script `boneage-evaluate` (argv: a full command line); prints the headline metrics."""
  argv = list(sys.argv if argv is None else argv)
  cli.quiet_start(argv)
  cli.run_main(_PROG, lambda: _main(argv), argv)


if __name__ == "__main__":
  main()
