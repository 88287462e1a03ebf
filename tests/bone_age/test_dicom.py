"""DICOM decoding (photometric, bit depth, LUTs, compression), its guards, and the writer."""

import dataclasses
import datetime
import io
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom import uid as dicom_uid

from bone_age import dicom
from bone_age import dicom_writer
from bone_age import errors
from bone_age import imaging


def _radiograph_like(height_px=60, width_px=44, seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height_px, :width_px]
  image = 15.0 + 120.0 * (((yy - height_px / 2) / height_px) ** 2 + ((xx - width_px / 2) / width_px) ** 2 < 0.12)
  image += 100.0 * (((yy - height_px / 3) / height_px) ** 2 + ((xx - width_px / 2) / width_px) ** 2 < 0.01)
  image += rng.normal(0.0, 8.0, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


IMAGE = _radiograph_like()
EXPECTED = imaging.normalize_to_uint8(IMAGE)


def _decode(data: bytes, source: str = "study.dcm") -> imaging.Radiograph:
  radiograph = imaging.decode_radiograph(data, source)
  assert radiograph.source_format == "dicom"
  assert radiograph.pixels.dtype == np.uint8
  return radiograph


def _assert_same_picture(pixels: np.ndarray, expected: np.ndarray = EXPECTED, tolerance: int = 1):
  assert pixels.shape == expected.shape
  assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= tolerance


def _rewrite(data: bytes, edit) -> bytes:
  """Reads a DICOM, lets `edit(dataset)` change it, and writes it back."""
  dataset = pydicom.dcmread(io.BytesIO(data))
  edit(dataset)
  buffer = io.BytesIO()
  dataset.save_as(buffer, enforce_file_format=True)
  return buffer.getvalue()


def _expect_error(data, source, reason) -> errors.InputError:
  with pytest.raises(errors.InputError) as caught:
    imaging.decode_radiograph(data, source)
  assert caught.value.reason == reason, str(caught.value)
  assert caught.value.source == source and source in str(caught.value)
  return caught.value


# ----------------------------------------------------------- decoding paths


def test_monochrome2_8bit():
  _assert_same_picture(_decode(dicom_writer.encode_dicom(IMAGE)).pixels, tolerance=0)


def test_16bit_dicom_matches_8bit_png_of_the_same_picture():
  png = cv2.imencode(".png", IMAGE)[1].tobytes()
  from_png = imaging.decode_radiograph(png, "hand.png").pixels
  monochrome2 = dicom_writer.encode_dicom(IMAGE.astype(np.uint16) * 257)
  monochrome1 = dicom_writer.encode_dicom(65535 - IMAGE.astype(np.uint16) * 257, photometric="MONOCHROME1")
  _assert_same_picture(_decode(monochrome2).pixels, from_png)
  _assert_same_picture(_decode(monochrome1).pixels, from_png)


def test_monochrome1_is_inverted_to_bone_bright():
  stored = (255 - IMAGE).astype(np.uint8)
  _assert_same_picture(_decode(dicom_writer.encode_dicom(stored, photometric="MONOCHROME1")).pixels, tolerance=0)
  # The same stored values read as MONOCHROME2 give the negative.
  negative = _decode(dicom_writer.encode_dicom(stored)).pixels
  assert np.corrcoef(negative.ravel(), EXPECTED.ravel())[0, 1] < -0.99


@pytest.mark.parametrize("bits_stored", [10, 12, 14, 16])
def test_bits_stored_in_16_allocated(bits_stored):
  scale = (1 << bits_stored) // 256
  stored = IMAGE.astype(np.uint16) * scale
  _assert_same_picture(_decode(dicom_writer.encode_dicom(stored, bits_stored=bits_stored)).pixels, tolerance=0)


def test_bits_above_bits_stored_are_masked():
  stored = IMAGE.astype(np.uint16) * 16  # 12-bit values.
  data = dicom_writer.encode_dicom(stored, bits_stored=12)
  # Set garbage in the 4 unused high bits (overlay planes in old files).
  polluted = _rewrite(data, lambda ds: setattr(ds, "PixelData", (stored | 0xF000).astype("<u2").tobytes()))
  _assert_same_picture(_decode(polluted).pixels, tolerance=0)


def test_signed_pixels_with_rescale():
  stored = IMAGE.astype(np.int16) * 8 - 1000  # Negative stored values, PixelRepresentation 1.
  radiograph = _decode(dicom_writer.encode_dicom(stored, rescale=(2.0, -1024.0)))
  _assert_same_picture(radiograph.pixels, tolerance=0)


def test_fractional_rescale_slope():
  stored = IMAGE.astype(np.uint16) * 100
  _assert_same_picture(_decode(dicom_writer.encode_dicom(stored, rescale=(0.25, 7.5))).pixels)


def test_fractional_rescale_on_a_narrow_band_of_levels():
  # 101 stored levels high up in the 16-bit range: the float result must keep
  # its resolution when it is mapped back onto integers.
  stored = (30000 + (IMAGE.astype(np.uint32) * 100) // 255).astype(np.uint16)
  radiograph = _decode(dicom_writer.encode_dicom(stored, rescale=(0.3, -5.0)))
  _assert_same_picture(radiograph.pixels, imaging.normalize_to_uint8(stored))


def test_signed_monochrome1():
  stored = (-(IMAGE.astype(np.int16) * 8) + 500).astype(np.int16)
  _assert_same_picture(_decode(dicom_writer.encode_dicom(stored, photometric="MONOCHROME1")).pixels, tolerance=0)


def test_32bit_pixels_with_wide_range():
  wide = IMAGE.astype(np.int64) * 100_000 - 3_000_000  # Needs more than 16 bits.

  def make_32bit(dataset):
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 32, 32, 31, 1
    dataset.PixelData = wide.astype("<i4").tobytes()
    dataset.RescaleSlope, dataset.RescaleIntercept = "0.5", "10"

  _assert_same_picture(_decode(_rewrite(dicom_writer.encode_dicom(IMAGE), make_32bit)).pixels)


def test_negative_rescale_slope_flips_contrast():
  stored = (255 - IMAGE).astype(np.uint16)
  _assert_same_picture(_decode(dicom_writer.encode_dicom(stored, rescale=(-1.0, 255.0))).pixels)


def test_window_center_width_is_applied_in_rescaled_units():
  stored = IMAGE.astype(np.uint16)
  # Rescaled value = 2 * stored + 100; the window covers stored values 60..140.
  radiograph = _decode(dicom_writer.encode_dicom(stored, rescale=(2.0, 100.0), window=(300.0, 160.0)))
  pixels = radiograph.pixels
  assert np.all(pixels[IMAGE <= 59] == 0)
  assert np.all(pixels[IMAGE >= 141] == 255)
  inside = (IMAGE > 62) & (IMAGE < 138)
  order = np.argsort(IMAGE[inside], kind="stable")
  assert np.all(np.diff(pixels[inside][order].astype(int)) >= 0)
  assert len(np.unique(pixels[inside])) > 20  # Contrast kept inside the window.


def test_voi_lut_sequence_wins_over_window():
  def add_lut(dataset):
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = ((255 - np.arange(256)) * 257).astype("<u2").tobytes()  # A descending (inverting) LUT.
    dataset.VOILUTSequence = [item]
    dataset.WindowCenter, dataset.WindowWidth = "128", "256"

  data = _rewrite(dicom_writer.encode_dicom(IMAGE.astype(np.uint16)), add_lut)
  _assert_same_picture(_decode(data).pixels, imaging.normalize_to_uint8(255 - IMAGE))


def test_rle_lossless_compressed():
  def compress(dataset):
    dataset.compress(dicom_uid.RLELossless)

  data = _rewrite(dicom_writer.encode_dicom(IMAGE.astype(np.uint16) * 16, bits_stored=12), compress)
  assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == dicom_uid.RLELossless
  _assert_same_picture(_decode(data, "rle.dcm").pixels, tolerance=0)


def test_jpeg_baseline_compressed_through_pylibjpeg():
  jpeg = cv2.imencode(".jpg", IMAGE, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()

  def encapsulate_jpeg(dataset):
    dataset.file_meta.TransferSyntaxUID = dicom_uid.JPEGBaseline8Bit
    dataset.PixelData = encapsulate([jpeg])
    dataset["PixelData"].VR = "OB"

  data = _rewrite(dicom_writer.encode_dicom(IMAGE), encapsulate_jpeg)
  pixels = _decode(data, "jpeg.dcm").pixels
  assert np.abs(pixels.astype(int) - EXPECTED.astype(int)).mean() < 3.0


def test_without_preamble():
  data = dicom_writer.encode_dicom(IMAGE, preamble=False)
  assert data[128:132] != b"DICM" and data[:4] != b"DICM"
  _assert_same_picture(_decode(data).pixels, tolerance=0)


def test_dicm_prefix_without_preamble():
  data = dicom_writer.encode_dicom(IMAGE)[128:]
  assert data.startswith(b"DICM")
  _assert_same_picture(_decode(data, "stripped.dcm").pixels, tolerance=0)


def test_bare_implicit_vr_dataset_without_file_meta():
  dataset = pydicom.dcmread(io.BytesIO(dicom_writer.encode_dicom(IMAGE)))
  del dataset.file_meta
  buffer = DicomBytesIO()
  buffer.is_little_endian, buffer.is_implicit_VR = True, True
  write_dataset(buffer, dataset)
  data = buffer.getvalue()
  assert imaging.sniff_format(data) == "dicom"
  _assert_same_picture(_decode(data, "bare.dcm").pixels, tolerance=0)


def test_rgb_dicom_is_converted_to_gray():
  def make_rgb(dataset):
    dataset.SamplesPerPixel = 3
    dataset.PhotometricInterpretation = "RGB"
    dataset.PlanarConfiguration = 0
    dataset.PixelData = np.dstack([IMAGE] * 3).tobytes()

  _assert_same_picture(_decode(_rewrite(dicom_writer.encode_dicom(IMAGE), make_rgb)).pixels)


# ----------------------------------------------------------- patient facts


def test_patient_info_from_tags_and_name_never_copied():
  data = dicom_writer.encode_dicom(IMAGE, sex="F", birth_date=datetime.date(2012, 5, 17),
                            study_date=datetime.date(2024, 1, 9), patient_name="Doe^Jane")
  assert b"Doe^Jane" in data
  radiograph = _decode(data)
  assert radiograph.patient == imaging.PatientInfo(
      sex="F", birth_date=datetime.date(2012, 5, 17), study_date=datetime.date(2024, 1, 9))
  assert "Doe" not in repr(radiograph) and "Doe" not in repr(radiograph.patient)
  assert {field.name for field in dataclasses.fields(imaging.PatientInfo)} == {
      "sex", "birth_date", "study_date"}


@pytest.mark.parametrize("sex,expected", [("M", "M"), ("F", "F"), ("O", None), (None, None)])
def test_patient_sex(sex, expected):
  assert _decode(dicom_writer.encode_dicom(IMAGE, sex=sex)).patient.sex == expected


def test_unusable_patient_values_become_none():
  def spoil(dataset):
    dataset.PatientSex = "X"
    dataset.PatientBirthDate = "20231345"
    dataset.StudyDate = "yesterday"

  with pytest.warns(UserWarning):  # pydicom warns when invalid DA values are set.
    data = _rewrite(dicom_writer.encode_dicom(IMAGE, sex="M"), spoil)
  assert _decode(data).patient == imaging.PatientInfo(sex=None, birth_date=None, study_date=None)


def test_old_style_dotted_dates_parse():
  with pytest.warns(UserWarning):
    data = _rewrite(dicom_writer.encode_dicom(IMAGE), lambda ds: setattr(ds, "StudyDate", "2019.03.04"))
  assert _decode(data).patient.study_date == datetime.date(2019, 3, 4)


# ------------------------------------------------------------------- guards


def test_pixel_data_cut_short():
  data = dicom_writer.encode_dicom(IMAGE.astype(np.uint16) * 257)
  error = _expect_error(data[:-500], "cut.dcm", errors.TRUNCATED)
  assert "expected" in error.detail


def test_file_cut_before_pixel_data():
  data = dicom_writer.encode_dicom(IMAGE)
  pixel_offset = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data tag.
  for cut_at in (pixel_offset + 6, pixel_offset + 2, pixel_offset - 1, 300):
    error = _expect_error(data[:cut_at], f"cut_{cut_at}.dcm", errors.TRUNCATED)
    assert "inside" in error.detail


def test_image_without_pixel_data_element_is_no_pixel_data():
  """Ending exactly after a complete attribute: nothing was cut inside an element."""
  data = dicom_writer.encode_dicom(IMAGE)
  error = _expect_error(data[:data.rfind(b"\xe0\x7f\x10\x00")], "header_only.dcm", errors.NO_PIXEL_DATA)
  assert "no pixel data" in error.detail


def test_compressed_pixel_data_cut_short():
  data = _rewrite(dicom_writer.encode_dicom(IMAGE), lambda ds: ds.compress(dicom_uid.RLELossless))
  _expect_error(data[:-40], "rle_cut.dcm", errors.TRUNCATED)


def test_complete_dicom_without_pixel_data_is_no_pixel_data_not_cut_short():
  dataset = Dataset()
  dataset.SOPClassUID = dicom_uid.BasicTextSRStorage
  dataset.PatientSex = "M"
  dataset.file_meta = pydicom.dataset.FileMetaDataset()
  dataset.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
  dataset.file_meta.MediaStorageSOPClassUID = dicom_uid.BasicTextSRStorage
  dataset.file_meta.MediaStorageSOPInstanceUID = dicom_uid.generate_uid()
  buffer = io.BytesIO()
  dataset.save_as(buffer, enforce_file_format=True)
  error = _expect_error(buffer.getvalue(), "report.dcm", errors.NO_PIXEL_DATA)
  assert "cut" not in error.detail


def test_garbage_after_dicm_is_not_an_image():
  _expect_error(b"\x00" * 128 + b"DICM" + b"\xff" * 64, "garbage.dcm", errors.NOT_AN_IMAGE)


def test_dicom_decompression_bomb_checked_from_rows_columns(monkeypatch):
  data = _rewrite(dicom_writer.encode_dicom(IMAGE), lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)))

  def fail_if_called(self):
    raise AssertionError("pixels were decoded before the size check")
  monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail_if_called))
  error = _expect_error(data, "bomb.dcm", errors.DECOMPRESSION_BOMB)
  assert "Rows/Columns" in error.detail


def test_multiframe_is_unsupported():
  data = _rewrite(dicom_writer.encode_dicom(IMAGE), lambda ds: setattr(ds, "NumberOfFrames", 2))
  _expect_error(data, "cine.dcm", errors.UNSUPPORTED_DICOM)


def test_transfer_syntax_without_any_decoder_is_unsupported():
  def mpeg(dataset):
    dataset.file_meta.TransferSyntaxUID = dicom_uid.MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    dataset["PixelData"].VR = "OB"

  error = _expect_error(_rewrite(dicom_writer.encode_dicom(IMAGE), mpeg), "video.dcm", errors.UNSUPPORTED_DICOM)
  assert "MPEG" in error.detail


def test_missing_decoder_plugin_is_unsupported(monkeypatch):
  """As on a machine without pylibjpeg: a clear reason instead of a crash."""
  class MissingDecoder:
    is_available = False
    missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"]

  monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: MissingDecoder())
  data = _rewrite(dicom_writer.encode_dicom(IMAGE), lambda ds: ds.compress(dicom_uid.RLELossless))
  error = _expect_error(data, "needs_plugin.dcm", errors.UNSUPPORTED_DICOM)
  assert "pylibjpeg" in error.detail


@pytest.mark.parametrize("keyword,bad_value", [("WindowCenter", b"abc     "), ("NumberOfFrames", b"x       "),
                                               ("RescaleSlope", b"?       ")])
def test_malformed_attribute_values_are_unsupported_not_a_crash(keyword, bad_value):
  placeholder = b"86421357"  # pydicom refuses to set the bad value, so patch the bytes.

  def set_placeholder(dataset):
    dataset.WindowWidth = "100"
    setattr(dataset, keyword, placeholder.decode())

  data = _rewrite(dicom_writer.encode_dicom(IMAGE), set_placeholder)
  assert data.count(placeholder) == 1
  _expect_error(data.replace(placeholder, bad_value), f"bad_{keyword}.dcm", errors.UNSUPPORTED_DICOM)


def test_unsupported_photometric():
  data = _rewrite(dicom_writer.encode_dicom(IMAGE), lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"))
  _expect_error(data, "palette.dcm", errors.UNSUPPORTED_DICOM)


# ------------------------------------------------------------------ writer


def test_encode_is_deterministic_and_readable_by_pydicom():
  first = dicom_writer.encode_dicom(IMAGE, sex="M", study_date=datetime.date(2020, 2, 29))
  assert first == dicom_writer.encode_dicom(IMAGE, sex="M", study_date=datetime.date(2020, 2, 29))
  assert first != dicom_writer.encode_dicom(IMAGE, sex="F", study_date=datetime.date(2020, 2, 29))
  dataset = pydicom.dcmread(io.BytesIO(first))
  assert dataset.SOPClassUID == dicom_uid.SecondaryCaptureImageStorage
  assert (dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit) == (8, 8, 7)
  np.testing.assert_array_equal(dataset.pixel_array, IMAGE)


@pytest.mark.parametrize("kwargs", [
    {"pixels": np.zeros((4, 4), np.float32)},
    {"pixels": np.zeros((4, 4, 3), np.uint8)},
    {"pixels": np.full((4, 4), 4096, np.uint16), "bits_stored": 12},
    {"pixels": np.zeros((4, 4), np.uint8), "bits_stored": 12},
    {"pixels": np.zeros((4, 4), np.uint8), "photometric": "RGB"},
    {"pixels": np.zeros((4, 4), np.uint8), "sex": "male"},
])
def test_encode_rejects_bad_arguments(kwargs):
  pixels = kwargs.pop("pixels")
  with pytest.raises(ValueError):
    dicom_writer.encode_dicom(pixels, **kwargs)


def test_real_radiograph_is_the_same_picture_in_every_encoding(rsna_sample_dir):
  """The scorer's promise: PNG and DICOM of one radiograph give the same model input."""
  from bone_age import letterbox  # pylint: disable=g-import-not-at-top

  png = (rsna_sample_dir / "images" / "1377.png").read_bytes()
  image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
  deep = image.astype(np.uint16)
  encodings = {
      "png16": cv2.imencode(".png", deep * 257)[1].tobytes(),
      "dicom16": dicom_writer.encode_dicom(deep * 257),
      "dicom16_monochrome1": dicom_writer.encode_dicom(65535 - deep * 257, photometric="MONOCHROME1"),
      "dicom12_monochrome1": dicom_writer.encode_dicom(4095 - deep * 16, photometric="MONOCHROME1", bits_stored=12),
      "dicom8_no_preamble": dicom_writer.encode_dicom(image, preamble=False),
  }
  reference = imaging.decode_radiograph(png, "1377.png").pixels
  reference_square, _ = letterbox.letterbox(reference, 256)
  for name, data in encodings.items():
    pixels = imaging.decode_radiograph(data, name).pixels
    _assert_same_picture(pixels, reference)
    square, _ = letterbox.letterbox(pixels, 256)
    assert np.abs(square.astype(int) - reference_square).max() <= 1, name


def test_reader_and_writer_stand_apart_from_the_dispatcher():
  """bone_age.dicom reads without importing bone_age.imaging (which imports it lazily), nor the writer."""
  code = ("import sys; import bone_age.dicom; "
          "print(sorted(m for m in sys.modules if m in ('bone_age.imaging', 'bone_age.dicom_writer')))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=pathlib.Path(__file__).resolve().parents[2])
  assert result.stdout.strip() == "[]"
  assert not hasattr(dicom, "encode_dicom")
