"""The content gate and the hand crop on inputs made here (bone_age.quality_corpus)."""

import numpy as np
import pytest

from bone_age import errors
from bone_age import hand_crop
from bone_age import hand_laterality
from bone_age import imaging
from bone_age import quality
from bone_age import quality_corpus as qc


def _gate(data: bytes, policy=quality.STRICT, name="x"):
  return quality.apply_gate(imaging.decode_radiograph(data, name), name, policy)


def _codes(result):
  return {f.code for f in result.flags}


@pytest.mark.parametrize("pixels, reason", [
    (np.zeros((1, 1), np.uint8), quality.IMAGE_TOO_SMALL),
    (np.zeros((300, 240), np.uint8), quality.BLANK_IMAGE),
    (np.full((300, 240), 255, np.uint8), quality.BLANK_IMAGE),
    (np.zeros((300, 240, 4), np.uint8), quality.BLANK_IMAGE),  # fully transparent
    (np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 10)), quality.ABSURD_ASPECT_RATIO),
])
@pytest.mark.parametrize("policy", [quality.STRICT, quality.FLAG])
def test_degenerate_images_are_rejected_with_their_own_reason(pixels, reason, policy):
  with pytest.raises(errors.InputError) as e:
    _gate(qc.png(pixels), policy)
  assert e.value.reason == reason


def test_off_lets_everything_through_unchanged():
  result = _gate(qc.png(np.zeros((300, 240), np.uint8)), quality.OFF)
  assert result.flags == ()


def test_a_phantom_passes_without_flags():
  assert _gate(qc.png(qc.phantom(10_001))).flags == ()


def test_inverted_export_is_corrected_and_flagged():
  image = qc.phantom(10_001)
  result = _gate(qc.png(255 - image))
  assert _codes(result) == {quality.INVERTED_POLARITY}
  plain = imaging.decode_radiograph(qc.png(image), "x").pixels
  assert np.abs(result.pixels.astype(int) - plain.astype(int)).mean() < 2


def test_right_laterality_tag_mirrors_to_the_left_hand():
  image = qc.phantom(10_001)
  result = _gate(qc.dicom(np.ascontiguousarray(image[:, ::-1]), laterality="R"))
  assert _codes(result) == {quality.MIRRORED_RIGHT_HAND}
  left = _gate(qc.dicom(image)).pixels
  np.testing.assert_array_equal(result.pixels, left)


@pytest.mark.parametrize("seed", [10_001, 10_002])
def test_right_hand_without_a_tag_is_recognised_from_the_thumb_side_and_mirrored(seed):
  image = qc.phantom(seed)
  result = _gate(qc.png(np.ascontiguousarray(image[:, ::-1])))
  assert _codes(result) == {quality.MIRRORED_RIGHT_HAND}
  assert "thumb" in result.flags[0].detail
  # The model then sees exactly the left hand's pixels: the same prediction.
  np.testing.assert_array_equal(result.pixels, imaging.decode_radiograph(qc.png(image), "x").pixels)


def test_thumb_side_score_is_positive_for_a_left_hand_and_negative_mirrored():
  pixels = imaging.decode_radiograph(qc.png(qc.phantom(10_001)), "x").pixels
  left = hand_laterality.thumb_side_score(hand_crop.hand_mask(pixels).largest)
  right = hand_laterality.thumb_side_score(hand_crop.hand_mask(np.ascontiguousarray(pixels[:, ::-1])).largest)
  assert left > -quality.RIGHT_HAND_SCORE and right < quality.RIGHT_HAND_SCORE
  assert hand_laterality.thumb_side_score(np.zeros((64, 64), bool)) == 0.0
  block = np.zeros((64, 64), bool)
  block[10:60, 20:44] = True  # no digits, no valleys: undecided
  assert hand_laterality.thumb_side_score(block) == 0.0


def test_a_left_laterality_tag_wins_over_the_outline():
  image = qc.phantom(10_001)
  result = _gate(qc.dicom(np.ascontiguousarray(image[:, ::-1]), laterality="L"))
  assert quality.MIRRORED_RIGHT_HAND not in _codes(result)


def test_digits_cut_off_above_the_palm_are_a_partial_hand():
  image = qc.phantom(10_030)
  data = qc.png(image[:int(0.42 * image.shape[0])])
  with pytest.raises(errors.InputError) as e:
    _gate(data, quality.STRICT)
  assert e.value.reason == quality.NOT_A_HAND and "no palm" in e.value.detail
  assert quality.PARTIAL_HAND in _codes(_gate(data, quality.FLAG))


@pytest.mark.parametrize("modality, body_part", [("DX", "CHEST"), ("CR", "SKULL"), ("CT", "HAND"), ("MR", None)])
def test_dicom_of_another_modality_or_body_part(modality, body_part):
  data = qc.dicom(qc.phantom(10_002), modality=modality, body_part=body_part)
  with pytest.raises(errors.InputError) as e:
    _gate(data, quality.STRICT)
  assert e.value.reason == quality.NOT_A_HAND_RADIOGRAPH
  assert modality in e.value.detail or str(body_part) in e.value.detail
  assert quality.NON_HAND_DICOM_TAGS in _codes(_gate(data, quality.FLAG))


@pytest.mark.parametrize("make", [qc.chest_like, qc.skull_like, qc.knee_like, qc.text_page,
                                  lambda s: np.random.default_rng(s).integers(0, 256, (400, 300), dtype=np.uint8)])
def test_non_hand_pictures_are_rejected_in_strict_and_flagged_in_flag(make):
  data = qc.png(make(3))
  with pytest.raises(errors.InputError) as e:
    _gate(data, quality.STRICT)
  assert e.value.reason == quality.NOT_A_HAND
  assert _gate(data, quality.FLAG).flags


def test_small_hand_on_a_large_canvas_is_flagged_and_cropped_to_the_hand():
  image = qc.phantom(10_001)
  canvas = qc.on_large_canvas(image, 0.25, seed=4)
  result = _gate(qc.png(canvas))
  assert quality.SMALL_HAND in _codes(result)
  cropped, box = hand_crop.crop_to_hand(result.pixels, result.hand)
  assert box is not None
  # The hand is 25% of the canvas height: the crop keeps about that, plus margins.
  assert 0.2 * canvas.shape[0] < cropped.shape[0] < 0.45 * canvas.shape[0]


@pytest.mark.parametrize("seed", [10_002, 10_003])  # phantoms whose hand box spans the whole frame
def test_crop_leaves_a_hand_that_fills_the_frame_alone(seed):
  pixels = imaging.decode_radiograph(qc.png(qc.phantom(seed)), "x").pixels
  cropped, box = hand_crop.crop_to_hand(pixels)
  assert box is None and cropped is pixels


@pytest.mark.parametrize("seed", [10_001, 10_002, 10_003])
def test_a_hand_at_four_fifths_of_the_frame_is_cropped_to_the_full_frame_scale(seed):
  import cv2  # pylint: disable=g-import-not-at-top
  image = qc.phantom(seed)
  height, width = image.shape
  canvas = np.full_like(image, 12)
  small = cv2.resize(image, (int(width * 0.8), int(height * 0.8)), interpolation=cv2.INTER_AREA)
  canvas[20:20 + small.shape[0], 30:30 + small.shape[1]] = small
  cropped, box = hand_crop.crop_to_hand(canvas)
  assert box is not None

  def hand_share(pixels):  # the hand's height over the image's height
    rows = np.flatnonzero(hand_crop.hand_mask(pixels).mask.any(axis=1))
    return (rows[-1] - rows[0] + 1) / hand_crop.hand_mask(pixels).mask.shape[0]

  # Cropped, the hand spans about the share of the frame it spans at full
  # scale (uncropped, it would span 0.8 of it).
  assert hand_share(cropped) == pytest.approx(hand_share(image), rel=0.1)


def test_every_real_sample_radiograph_passes(shared_data_dir=None):
  import pathlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "rsna_sample" / "images"
  if not root.is_dir():
    pytest.skip(f"real sample radiographs not present at {root}")
  outcomes = {}
  for case in qc.real_sample(root):
    try:
      outcomes[case.name] = sorted(_codes(_gate(case.data, quality.STRICT, case.name)))
    except errors.InputError as e:
      outcomes[case.name] = e.reason
  failed = {k: v for k, v in outcomes.items() if v}
  assert len(outcomes) == 65
  assert not failed
