"""The same radiograph as PNG and as DICOM (MONOCHROME1/2, 8 and 16 bit) scores the same."""

import csv

import cv2
import numpy as np
import pytest
from apache_beam.testing import test_pipeline

from batch_inference import score

NUM_IMAGES = 3
TOLERANCE_MONTHS = 0.05


def _grey_images(rsna_sample_dir, count):
  """(id, male, uint8 pixels) of the first `count` plain greyscale PNGs."""
  with open(rsna_sample_dir / "labels.csv") as f:
    rows = list(csv.DictReader(f))
  found = []
  for row in rows:
    pixels = cv2.imread(str(rsna_sample_dir / "images" / f"{row['id']}.png"), cv2.IMREAD_UNCHANGED)
    if pixels is not None and pixels.ndim == 2 and pixels.dtype == np.uint8:
      found.append((row["id"], row["male"] == "True", pixels))
    if len(found) == count:
      return found
  pytest.skip("not enough greyscale PNGs in the RSNA sample")


def test_png_and_dicom_copies_give_the_same_prediction(tiny_export, make, outputs_of, rsna_sample_dir, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  lines = ["id,male"]
  for image_id, male, pixels in _grey_images(rsna_sample_dir, NUM_IMAGES):
    sex = "M" if male else "F"
    lines.append(f"{image_id},{male}")
    (inputs / f"{image_id}.png").write_bytes((rsna_sample_dir / "images" / f"{image_id}.png").read_bytes())
    (inputs / f"{image_id}_m2.dcm").write_bytes(make.dicom(pixels, sex=sex))
    (inputs / f"{image_id}_m1.dcm").write_bytes(make.dicom(255 - pixels, photometric="MONOCHROME1", sex=sex))
    (inputs / f"{image_id}_16.dcm").write_bytes(make.dicom(pixels.astype(np.uint16) * 257, bits_stored=16, sex=sex))
  (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
  score.run([f"--model_dir={tiny_export}", f"--inputs={inputs}/*", f"--output_dir={tmp_path / 'out'}",
             f"--metadata_csv={tmp_path / 'meta.csv'}", "--batch_size=4"], test_pipeline=test_pipeline.TestPipeline())
  out = outputs_of(tmp_path / "out")
  assert out["summary"]["scored"] == 4 * NUM_IMAGES and not out["rejects"]
  months = {r["id"]: r["boneage_months"] for r in out["predictions"]}
  sexes = {r["id"]: (r["sex"], r["sex_source"]) for r in out["predictions"]}
  png_months = []
  format_gaps_months = []
  for image_id in {i.split("_")[0] for i in months}:
    png_months.append(months[image_id])
    for variant in ("m2", "m1", "16"):
      dicom_id = f"{image_id}_{variant}"
      assert months[dicom_id] == pytest.approx(months[image_id], abs=TOLERANCE_MONTHS), dicom_id
      format_gaps_months.append(abs(months[dicom_id] - months[image_id]))
      assert sexes[dicom_id] == (sexes[image_id][0], "dicom")
    assert sexes[image_id][1] == "csv"
  # The untrained model still tells these radiographs apart, by far more than the
  # formats differ, so the agreement is not trivial. (Its spread across images
  # depends on the random initialisation; the ratio does not.)
  spread_months = max(png_months) - min(png_months)
  assert spread_months > 0 and spread_months > 10 * max(format_gaps_months), (png_months, format_gaps_months)
