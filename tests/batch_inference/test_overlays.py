"""Overlays: radiograph and untinted-where-cold heat side by side, footer in plain words."""

import numpy as np
import pytest

from batch_inference import overlays

_ROW = {"id": "p8", "boneage": "10 years 4 months", "boneage_months": 124.2, "sex": "M", "sex_source": "dicom",
        "chronological_age_months": 126.0, "ba_minus_ca_months": -1.8, "sds": -0.18, "sds_reading": "normal",
        "sds_missing_reason": None}


def _panels(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """The two image panels cut out of a rendered overlay (placed pixel for pixel above the footer)."""
  top = image.shape[0] - overlays._FOOTER_PX - height  # pylint: disable=protected-access
  left_x = overlays._MARGIN_PX  # pylint: disable=protected-access
  right_x = left_x + width + overlays._GAP_PX  # pylint: disable=protected-access
  return image[top:top + height, left_x:left_x + width], image[top:top + height, right_x:right_x + width]


def test_left_panel_is_the_radiograph_and_heat_tints_only_hot_regions():
  rng = np.random.default_rng(0)
  height, width = 400, 330
  original = rng.integers(0, 256, (height, width), dtype=np.uint8)
  heat = np.zeros((height, width), np.float32)
  heat[100:200, 100:200] = 1.0
  heat[300:350, 50:100] = 0.2  # below the alpha floor: not drawn
  image = overlays.render(original, heat, _ROW, "abc123")
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  left, right = _panels(image, height, width)
  assert np.array_equal(left, np.repeat(original[..., None], 3, axis=2))
  cold = heat < overlays._HEAT_ALPHA_FLOOR  # pylint: disable=protected-access
  assert np.array_equal(right[cold], left[cold])
  hot = right[100:200, 100:200].astype(int)
  assert np.abs(hot - left[100:200, 100:200].astype(int)).mean() > 30
  assert (hot[..., 0] - hot[..., 2]).mean() > 20  # inferno's hot end is warm (red over blue)


def test_footer_states_the_results_in_plain_words():
  lines = overlays.footer_lines(_ROW, "abc123")
  text = "\n".join(lines)
  assert "p8: Bone age 10 years 4 months (124.2 months)" in text
  assert "male (from the DICOM header)" in text and "(M, dicom)" not in text
  assert "Chronological age 10 years 6 months (126.0 months); BA - CA -1.8 months; SD score -0.18 (normal)" in text
  assert lines[-2].startswith("Model abc123: experiment unknown, step unknown (reason unknown)")
  assert lines[-1] == "Run time unknown; input sha256 unknown. Research use only, not a medical device."
  with_interval = overlays.footer_lines({**_ROW, "interval_low_months": 110.0, "interval_high_months": 138.4,
                                         "interval_level": 0.9, "boneage_tta_sd_months": 2.34,
                                         "model_id": "row-model"}, "abc123")
  assert "90% interval 110.0 to 138.4 months, TTA SD 2.3" in with_interval[0]
  assert with_interval[-2].startswith("Model row-model:")
  no_age = overlays.footer_lines({**_ROW, "chronological_age_months": None, "ba_minus_ca_months": None, "sds": None,
                                  "sds_reading": None, "sds_missing_reason": "chronological_age_unknown"})
  assert no_age[1] == "Chronological age unknown, so no BA - CA and no SD score"
  outside = overlays.footer_lines({**_ROW, "chronological_age_months": 230.0, "ba_minus_ca_months": -105.8,
                                   "sds": None, "sds_reading": None,
                                   "sds_missing_reason": "chronological_age_outside_table"})
  assert outside[1].endswith("no SD score (chronological age outside table)")


_PROVENANCE = {"model_id": "0123456789ab", "experiment": "demo_cpu", "checkpoint_step": 2800,
               "checkpoint_reason": "last", "dataset": "rsna_bone_age", "dataset_version": "1.0.0",
               "software_version": "0.1.0", "run_started_utc": "2026-12-02T15:00:00+00:00",
               "input_sha256": "ab" * 32}


def test_footer_names_the_provenance_and_fits_the_overlay():
  lines = overlays.footer_lines({**_ROW, **_PROVENANCE})
  assert lines[-2] == ("Model 0123456789ab: experiment demo_cpu, step 2800 (last), trained on rsna_bone_age 1.0.0; "
                       "software 0.1.0")
  assert lines[-1] == ("Run 2026-12-02T15:00:00+00:00; input sha256 abababababababab.... "
                       "Research use only, not a medical device.")
  image = overlays.render(np.full((90, 70), 128, np.uint8), np.zeros((90, 70), np.float32), {**_ROW, **_PROVENANCE})
  font = overlays._font(13)  # pylint: disable=protected-access
  assert all(font.getlength(line) + overlays._MARGIN_PX <= image.shape[1] for line in lines)  # pylint: disable=protected-access


@pytest.mark.parametrize("shape", [(90, 70), (512, 400), (300, 512)])
def test_any_size_renders_with_room_for_the_footer(shape):
  original = np.full(shape, 128, np.uint8)
  image = overlays.render(original, np.zeros(shape, np.float32), _ROW)
  assert image.shape[1] >= overlays._MIN_FIGURE_WIDTH_PX  # pylint: disable=protected-access
  min_height = overlays._MIN_PANEL_PX * shape[0] // max(shape)  # pylint: disable=protected-access
  assert image.shape[0] >= max(shape[0], min_height)
