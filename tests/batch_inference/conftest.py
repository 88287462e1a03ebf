"""Fixtures of the scorer tests: a tiny exported model and input builders."""

import datetime
import io
import pathlib

import cv2
import numpy as np
import pytest

import corrupt_inputs

IMAGE_SIZE_PX = 64


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> pathlib.Path:
  """An export (bone_age.export layout) of the tiny backbone at 64 px, untrained."""
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  model = ba_model.build_model(image_size_px=IMAGE_SIZE_PX, age_group_edges_months=[113.0, 150.0], backbone="tiny",
                               weights=None)
  export_dir = tmp_path_factory.mktemp("export")
  export.save_export(model, str(export_dir), {"backbone": "tiny", "dataset_version": "test"})
  return export_dir


class Make:
  """Builders of test inputs (bytes), deterministic by seed."""

  # DICOM dates giving a chronological age of 126 months.
  DATES = {"birth_date": datetime.date(2010, 1, 15), "study_date": datetime.date(2020, 7, 15)}

  @staticmethod
  def pixels(seed: int, height_px: int = 90, width_px: int = 70) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((height_px, width_px)).astype(np.float32), (0, 0), 3)
    base = (base - base.min()) / (np.ptp(base) + 1e-6)
    return np.uint8(np.round(base * 255))

  @staticmethod
  def png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()

  @staticmethod
  def jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()

  @staticmethod
  def dicom(pixels: np.ndarray, **kwargs) -> bytes:
    from bone_age import dicom_writer  # pylint: disable=g-import-not-at-top
    return dicom_writer.encode_dicom(pixels, **kwargs)

  @staticmethod
  def png_bomb(width_px: int = 60_000, height_px: int = 60_000) -> bytes:
    """A PNG whose header declares 3.6 G pixels (refused before decoding)."""
    return corrupt_inputs.png_bomb(width_px, height_px)

  @staticmethod
  def unsupported_dicom(pixels: np.ndarray) -> bytes:
    """A DICOM whose header says PALETTE COLOR (not a radiograph)."""
    import pydicom  # pylint: disable=g-import-not-at-top
    ds = pydicom.dcmread(io.BytesIO(Make.dicom(pixels, sex="M")))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="session")
def make() -> type[Make]:
  return Make


def read_outputs(output_dir: pathlib.Path, run_id: str | None = None) -> dict:
  """predictions / rejects / summary / manifest of a published run (default: the LATEST one), rows sorted."""
  from batch_inference import results  # pylint: disable=g-import-not-at-top
  return results.read_run(str(output_dir), run_id)


@pytest.fixture(scope="session")
def outputs_of():
  return read_outputs

