"""MAE of an exported model on phantoms shrunk to 30-100% of their frame, with and without the hand crop.

Each phantom (seeds apart from the demo's training set) is drawn at full
size, then shrunk to each scale and pasted at a random place on a dark
detector of the original size, as a hand that fills only part of the film.
Every image goes through the scorer's own steps (decode, quality gate,
optional hand crop, letterbox) and the export's model; the script prints
the MAE per scale and the ratio of the 30-100% MAE to the full-scale MAE.

  python scripts/hand_crop_mae.py --model_dir=demo_output/model --num_phantoms=48 --seed=8

The crop's settings were chosen on --seed=7; the README reports --seed=8 and
--seed=9, drawn only to report. Choose settings on 7, never on 8 or 9.
"""

import argparse
import sys
import time

import numpy as np


def _prepare(data: bytes, name: str, size_px: int, crop: bool) -> np.ndarray:
  from bone_age import hand_crop, imaging, letterbox, quality  # pylint: disable=g-import-not-at-top
  radiograph = imaging.decode_radiograph(data, name)
  gated = quality.apply_gate(radiograph, name, quality.FLAG)
  pixels = gated.pixels
  if crop:
    pixels, _ = hand_crop.crop_to_hand(pixels, gated.hand)
  return letterbox.letterbox(pixels, size_px)[0]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--num_phantoms", type=int, default=64)
  parser.add_argument("--seed", type=int, default=8, help="phantom seed: 7 chose the crop settings, 8 and 9 report")
  parser.add_argument("--scales", default="1.0,0.8,0.6,0.45,0.3")
  args = parser.parse_args(argv)

  import cv2  # pylint: disable=g-import-not-at-top
  from bone_age import export, phantoms, quality_corpus  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  start = time.process_time()
  model, metadata = export.load_export(export.resolve_export_dir(args.model_dir))
  size_px = int(metadata["image_size_px"])
  scales = [float(s) for s in args.scales.split(",")]
  labels = phantoms.sample_labels(args.num_phantoms, args.seed)
  errors = {(scale, crop): [] for scale in scales for crop in (True, False)}
  for index, (_, months, male) in enumerate(labels):
    image = phantoms.render_phantom(months, male, phantoms.image_seed(args.seed, index)).image
    rng = np.random.default_rng([args.seed, index])
    for scale in scales:
      if scale >= 1.0:
        placed = image
      else:
        height, width = image.shape
        canvas = np.clip(rng.normal(12.0, 3.0, image.shape), 0, 255).astype(np.uint8)
        small = cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
        top = int(rng.integers(0, height - small.shape[0] + 1))
        left = int(rng.integers(0, width - small.shape[1] + 1))
        canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
        placed = canvas
      data = quality_corpus.png(placed)
      for crop in (True, False):
        square = _prepare(data, f"{index}@{scale}", size_px, crop)
        out = model.predict_on_batch({ba_model.IMAGE_INPUT: square[None, ..., None],
                                      ba_model.MALE_INPUT: np.asarray([[float(male)]], np.float32)})
        errors[(scale, crop)].append(abs(float(np.asarray(out[ba_model.AGE_OUTPUT]).ravel()[0]) - months))
  print(f"{args.num_phantoms} phantoms, model {args.model_dir}, {time.process_time() - start:.0f} CPU s\n")
  print("| scale | MAE crop on (months) | MAE crop off (months) |")
  print("|---|---|---|")
  for scale in scales:
    print(f"| {scale:g} | {np.mean(errors[(scale, True)]):.1f} | {np.mean(errors[(scale, False)]):.1f} |")
  full = max(scales)
  for crop in (True, False):
    pooled = np.mean([e for s in scales for e in errors[(s, crop)]])
    ratio = pooled / np.mean(errors[(full, crop)])
    print(f"crop {'on ' if crop else 'off'}: MAE over all scales {pooled:.1f} months = {ratio:.2f} x the full-scale MAE "
          f"(target with the crop: <= 1.10)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
