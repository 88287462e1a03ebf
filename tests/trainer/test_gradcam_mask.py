"""Grad-CAM mass inside the phantoms' age-signal mask: the metric, and the demo model against it."""

import json

import cv2
import numpy as np
import pytest

from bone_age import phantoms
from trainer import evaluate
from trainer import experiments
from trainer import gradcam_mask
from trainer import train_lib


def test_heat_mass_in_mask_matches_hand_computation():
  heat = np.zeros((2, 4, 4))
  heat[0, 0, 0], heat[0, 3, 3] = 3.0, 1.0  # 3 of 4 units of heat inside the mask below
  heat[1] = 1.0  # spread evenly: the share equals the mask's area
  mask = np.zeros((2, 4, 4))
  mask[:, 0, :] = 1.0  # the first row: a quarter of the square
  mask[0, 1, 1] = 0.5  # partial coverage on a cold pixel changes nothing
  shares = gradcam_mask.heat_mass_in_mask(heat, mask)
  assert shares[0] == pytest.approx(0.75)
  assert shares[1] == pytest.approx(mask[1].mean())
  assert np.isnan(gradcam_mask.heat_mass_in_mask(np.zeros((1, 4, 4)), mask[:1]))[0]


def test_mask_is_letterboxed_like_its_image(tmp_path):
  mask = np.zeros((100, 50), np.uint8)
  mask[:50, :] = 255  # the top half of a tall image
  cv2.imwrite(str(tmp_path / "m.png"), mask)
  square = gradcam_mask.mask_on_square(str(tmp_path / "m.png"), 20)
  # A 100 x 50 image fills 20 x 10 of the square, centred: columns 5-14; the top 10 rows are the mask.
  assert square[:10, 5:15].min() == pytest.approx(1.0) and square[10:].max() == 0.0 and square[:, :5].max() == 0.0
  assert gradcam_mask.mask_on_square(str(tmp_path / "absent.png"), 20) is None


@pytest.mark.slow
def test_demo_model_looks_at_the_age_signal(phantom_data_dir, tmp_path, trainer_helpers):
  """The trained demo model's Grad-CAM mass in the mask is at least twice the mask's share of the image."""
  # The fixture's phantoms, re-drawn with the same labels and seeds to recover their masks.
  labels = phantoms.sample_labels(256 + 32 + 64, 0)
  masks_dir = tmp_path / "masks"
  masks_dir.mkdir()
  for example_id, months, male in labels[256 + 32:]:
    phantom = phantoms.render_phantom(months, male, phantoms.image_seed(0, int(example_id)), height_px=128,
                                      width_px=100)
    cv2.imwrite(str(masks_dir / f"{example_id}.png"), phantom.age_signal_mask.astype(np.uint8) * 255)
  config = experiments.resolve("demo_cpu",
                               list(trainer_helpers.SMALL_OVERRIDES) + list(trainer_helpers.LEARN_OVERRIDES))
  result = train_lib.train_and_evaluate(config, str(phantom_data_dir), str(tmp_path / "run"))
  report = evaluate.evaluate(str(phantom_data_dir), result.export_dir, "test", str(tmp_path / "eval"),
                             masks_dir=str(masks_dir))
  share = report["gradcam_mask_share"]
  print("demo_cpu Grad-CAM mask share:", json.dumps(share))
  assert share["num_images"] == 64 and share["num_without_mask"] == 0
  assert share["ratio_to_area"] >= 2.0, share
  assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["gradcam_mask_share"] == share
