"""Tests of the synthetic phantoms: determinism, labels, mask, layout, learnability."""

import json
import pathlib

import cv2
import numpy as np
import pandas as pd
import pytest

from bone_age import phantom_drawing
from bone_age import phantoms
from bone_age import schema

SMALL = {"height_px": 130, "width_px": 100}


def _read_gray(path: pathlib.Path) -> np.ndarray:
  image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert image is not None, path
  return image


def test_render_is_deterministic_by_seed():
  first = phantoms.render_phantom(120.0, True, 5)
  again = phantoms.render_phantom(120.0, True, 5)
  other = phantoms.render_phantom(120.0, True, 6)
  np.testing.assert_array_equal(first.image, again.image)
  np.testing.assert_array_equal(first.age_signal_mask, again.age_signal_mask)
  assert np.abs(first.image.astype(int) - other.image.astype(int)).mean() > 2.0


@pytest.mark.parametrize("height_px,width_px", [(520, 400), (300, 300), (2080, 1600)])
def test_render_shapes_and_types(height_px, width_px):
  phantom = phantoms.render_phantom(60.0, False, 0, height_px=height_px, width_px=width_px)
  assert phantom.image.shape == (height_px, width_px) and phantom.image.dtype == np.uint8
  assert phantom.age_signal_mask.shape == (height_px, width_px) and phantom.age_signal_mask.dtype == bool
  assert 0.002 < phantom.age_signal_mask.mean() < 0.15
  assert phantom.image.std() > 20.0  # a picture, not a flat field


def test_render_rejects_tiny_canvas():
  with pytest.raises(ValueError, match="16 x 16"):
    phantoms.render_phantom(60.0, False, 0, height_px=8, width_px=100)


def test_write_dataset_is_byte_identical_for_a_seed(tmp_path):
  a = phantoms.write_dataset(tmp_path / "a", 3, seed=11, **SMALL)
  b = phantoms.write_dataset(tmp_path / "b", 3, seed=11, **SMALL)
  c = phantoms.write_dataset(tmp_path / "c", 3, seed=12, **SMALL)
  files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
  assert len(files) == 8  # labels.csv + the synthetic marker + 3 images + 3 masks
  for rel in files:
    assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
  assert (a / "images" / "1.png").read_bytes() != (c / "images" / "1.png").read_bytes()


def test_sample_labels_look_like_rsna():
  labels = phantoms.sample_labels(4000, seed=3, first_id=100)
  ids, ages, males = zip(*labels)
  assert list(ids) == [str(i) for i in range(100, 4100)]
  ages = np.array(ages)
  assert ages.min() >= 6 and ages.max() <= 228
  np.testing.assert_array_equal(ages, np.round(ages))  # whole months like RSNA train.csv
  assert 124.0 < ages.mean() < 130.0 and 37.0 < ages.std() < 44.0
  assert 0.51 < np.mean(males) < 0.57
  assert phantoms.sample_labels(50, seed=3) == phantoms.sample_labels(50, seed=3)
  assert phantoms.sample_labels(50, seed=3) != phantoms.sample_labels(50, seed=4)
  assert phantoms.sample_labels(0, seed=3) == []


def test_skeleton_matures_with_age_and_earlier_in_girls():
  bone_pixels = [phantom_drawing.draw_anatomy(a, True, 260, 200)[1].sum() for a in (6, 40, 90, 140, 190, 228)]
  assert all(b > a for a, b in zip(bone_pixels, bone_pixels[1:])), bone_pixels
  girl = phantom_drawing.draw_anatomy(100, False, 260, 200)[1].sum()
  boy = phantom_drawing.draw_anatomy(100, True, 260, 200)[1].sum()
  assert girl > boy
  # Growth plates are open in children and fused at skeletal maturity.
  assert phantom_drawing.plate_gap_units(60.0, "radius") > 4.0
  assert phantom_drawing.plate_gap_units(228.0, "distal") == 0.0
  assert phantom_drawing.carpal_radius_scale(1.0, 2.0) == 0.0


def test_mask_lies_on_bright_structures_and_moves_with_the_pose():
  renders = [phantoms.render_phantom(150.0, True, seed) for seed in range(4)]
  for phantom in renders:
    inside = phantom.image[phantom.age_signal_mask].mean()
    assert inside > 1.6 * phantom.image[~phantom.age_signal_mask].mean()
  # Each mask follows its own image's rotation and shift: another pose's
  # mask lands off the bones of this image.
  for phantom, other in zip(renders, renders[1:] + renders[:1]):
    own = phantom.image[phantom.age_signal_mask].mean()
    crossed = phantom.image[other.age_signal_mask & ~phantom.age_signal_mask].mean()
    assert own > crossed + 25.0
  assert not np.array_equal(renders[0].age_signal_mask, renders[1].age_signal_mask)


def test_write_dataset_layout(tmp_path):
  out = phantoms.write_dataset(tmp_path / "set", 4, seed=2, first_id=7, **SMALL)
  assert out == tmp_path / "set"
  assert json.loads((out / schema.SYNTHETIC_MARKER_FILE).read_text())["generator"] == "boneage-phantoms"
  text = (out / "labels.csv").read_text()
  assert text.splitlines()[0] == "id,boneage,male"
  assert {line.rsplit(",", 1)[1] for line in text.splitlines()[1:]} <= {"True", "False"}
  table = pd.read_csv(out / "labels.csv")
  assert list(table.columns) == ["id", "boneage", "male"]
  assert table["male"].dtype == bool
  assert list(table["id"]) == [7, 8, 9, 10]
  expected = phantoms.sample_labels(4, seed=2, first_id=7)
  assert list(table["boneage"]) == [age for _, age, _ in expected]
  assert sorted(p.name for p in (out / "images").iterdir()) == ["10.png", "7.png", "8.png", "9.png"]
  for example_id in table["id"]:
    image = _read_gray(out / "images" / f"{example_id}.png")
    mask = _read_gray(out / "masks" / f"{example_id}.png")
    assert image.shape == mask.shape == (130, 100) and image.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}


def test_write_dataset_rejects_unknown_format(tmp_path):
  with pytest.raises(ValueError, match="image_format"):
    phantoms.write_dataset(tmp_path, 1, seed=0, image_format="tiff")


def test_mixed_dataset_writes_dicom_that_imaging_decodes(tmp_path):
  import pydicom  # pylint: disable=g-import-not-at-top
  from bone_age import imaging  # pylint: disable=g-import-not-at-top

  out = phantoms.write_dataset(tmp_path / "mixed", 4, seed=9, image_format="mixed", **SMALL)
  names = sorted(p.name for p in (out / "images").iterdir())
  assert names == ["1.png", "2.dcm", "3.png", "4.dcm"]
  for index, (example_id, boneage_months, male) in enumerate(phantoms.sample_labels(4, seed=9)):
    path = out / "images" / f"{example_id}{'.dcm' if index % 2 else '.png'}"
    decoded = imaging.decode_radiograph(path.read_bytes(), str(path))
    drawn = phantoms.render_phantom(boneage_months, male, phantoms.image_seed(9, index), **SMALL).image
    expected = imaging.normalize_to_uint8(drawn)
    assert decoded.pixels.shape == expected.shape
    assert np.abs(decoded.pixels.astype(int) - expected.astype(int)).max() <= 1
    if index % 2:
      assert decoded.source_format == "dicom"
      assert decoded.patient.sex == ("M" if male else "F")
      age_days = (decoded.patient.study_date - decoded.patient.birth_date).days
      assert abs(age_days / 30.4375 - boneage_months) < 60.0  # chronological age near bone age
      header = pydicom.dcmread(path)
      assert "PHANTOM" in str(header.PatientName)  # so scorers can prove names never leak
      assert header.PhotometricInterpretation == ("MONOCHROME1" if index == 3 else "MONOCHROME2")


def _letterbox_64(image: np.ndarray) -> np.ndarray:
  size_px = 64
  scale = size_px / max(image.shape)
  small = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                     interpolation=cv2.INTER_AREA)
  square = np.zeros((size_px, size_px), np.uint8)
  y0, x0 = (size_px - small.shape[0]) // 2, (size_px - small.shape[1]) // 2
  square[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
  return square


def _ridge_test_mae(features: np.ndarray, ages: np.ndarray, num_train: int, l2: float) -> float:
  """Closed-form ridge (dual form: fewer examples than pixels) fit on the first num_train rows."""
  x_train, x_test = features[:num_train], features[num_train:]
  centre = x_train.mean(axis=0)
  x_train, x_test = x_train - centre, x_test - centre
  y_train = ages[:num_train] - ages[:num_train].mean()
  alpha = np.linalg.solve(x_train @ x_train.T + l2 * np.eye(num_train), y_train)
  predicted = x_test @ (x_train.T @ alpha) + ages[:num_train].mean()
  return float(np.abs(predicted - ages[num_train:]).mean())


def test_phantoms_are_learnable_from_pixels_and_sex():
  """A linear model on 64 px letterboxed pixels must beat predict-the-mean by far.

  The shuffled-label control shows the same procedure fails when the pixels
  carry no age, so the margin measures the drawn signal, not overfitting.
  """
  seed, num_images, num_train = 7, 300, 200
  labels = phantoms.sample_labels(num_images, seed)
  rows, ages, males = [], [], []
  for index, (_, boneage_months, male) in enumerate(labels):
    image = phantoms.render_phantom(boneage_months, male, phantoms.image_seed(seed, index), height_px=260,
                                    width_px=200).image
    pixels = _letterbox_64(image).astype(np.float64).ravel()
    rows.append((pixels - pixels.mean()) / pixels.std())  # exposure-invariant, like a network's normalisation
    ages.append(boneage_months)
    males.append(male)
  features = np.hstack([np.array(rows), 10.0 * np.array(males, np.float64)[:, None]])
  ages = np.array(ages)
  baseline_mae = float(np.abs(ages[num_train:] - ages[:num_train].mean()).mean())
  model_mae = _ridge_test_mae(features, ages, num_train, l2=100.0)
  shuffled = np.random.default_rng(0).permutation(ages[:num_train])
  control_mae = _ridge_test_mae(features, np.concatenate([shuffled, ages[num_train:]]), num_train, l2=100.0)
  assert model_mae <= 0.6 * baseline_mae, (model_mae, baseline_mae)
  assert control_mae > 0.85 * baseline_mae, (control_mae, baseline_mae)


def test_main_writes_and_reports(tmp_path, capsys):
  out = tmp_path / "cli"
  phantoms.main(["boneage-phantoms", f"--output_dir={out}", "--num_images=2", "--seed=4", "--height_px=65",
                 "--width_px=50"])
  assert "wrote 2 phantoms" in capsys.readouterr().out
  assert pd.read_csv(out / "labels.csv").shape == (2, 3)
  assert _read_gray(out / "images" / "2.png").shape == (65, 50)


def test_main_requires_output_dir(capsys):
  with pytest.raises(SystemExit) as exit_info:
    phantoms.main(["boneage-phantoms", "--num_images=2"])
  assert exit_info.value.code == 2 and "--output_dir is required" in capsys.readouterr().err
