"""boneage-evaluate: metrics and plots of an exported model on one dataset split.

  boneage-evaluate --data_dir=DATA --model_dir=RUN --split=test --output_dir=EVAL

--model_dir is a training run directory (holding export/) or an export
directory itself. The dataset config is chosen by the model's image size.
Flags live in a private FlagValues: importing this module defines no global
absl flags, so it cannot collide with boneage-train's (both have --data_dir)
or leave required-flag validators behind for other entry points.
"""

import json
import sys

from absl import flags

from bone_age import conformal
from bone_age import tta
from trainer import evaluate


def _parse_flags(argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("data_dir", None, "TFDS data dir holding rsna_bone_age/<S>px/<version>.", flag_values=fv)
  flags.DEFINE_string("model_dir", None, "Training run dir (with export/) or an export dir.", flag_values=fv)
  flags.DEFINE_string("split", "test", "Dataset split to evaluate.", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where metrics.json, predictions.csv and plots go.", flag_values=fv)
  flags.DEFINE_integer("batch_size", evaluate.DEFAULT_BATCH_SIZE, "Images per forward pass.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_string("masks_dir", None, "Phantoms' masks/ folder (<id>.png age-signal masks): adds the Grad-CAM "
                      "mass inside the mask to metrics.json.", flag_values=fv)
  flags.DEFINE_integer("tta_views", tta.DEFAULT_VIEWS, "Test-time augmentation views averaged per image "
                       "(bone_age.tta: small rotations, scales and shifts, never a flip); 1 = the plain prediction.",
                       lower_bound=1, upper_bound=tta.MAX_VIEWS, flag_values=fv)
  flags.DEFINE_float("interval_alpha", conformal.DEFAULT_ALPHA, "Miscoverage of the split-conformal prediction "
                     "interval whose coverage and width are reported (0.1: a 90% interval).", lower_bound=1e-6,
                     upper_bound=1 - 1e-6, flag_values=fv)
  usage = f"usage: boneage-evaluate --data_dir=DATA --model_dir=RUN --output_dir=EVAL [--split=test]\n{fv.get_help()}"
  if any(arg in ("-h", "--help", "-help") for arg in argv[1:]):
    print(usage)
    sys.exit(0)
  for name in ("data_dir", "model_dir", "output_dir"):
    flags.mark_flag_as_required(name, flag_values=fv)
  try:
    fv(argv)
  except flags.Error as e:
    sys.exit(f"boneage-evaluate: {e}\n\n{usage}")
  return fv


def main(argv: list[str] | None = None) -> None:
  """Console script `boneage-evaluate`; prints the headline metrics as JSON."""
  fv = _parse_flags(list(sys.argv if argv is None else argv))
  report = evaluate.evaluate(fv.data_dir, fv.model_dir, fv.split, fv.output_dir, fv.batch_size, fv.masks_dir,
                             fv.tta_views, fv.interval_alpha)
  headline = {"split": report["split"], "overall": report["overall"], "baseline": report["baseline"],
              "prediction_interval": report["prediction_interval"]}
  if "gradcam_mask_share" in report:
    headline["gradcam_mask_share"] = report["gradcam_mask_share"]
  print(json.dumps(headline, indent=2))


if __name__ == "__main__":
  main()
