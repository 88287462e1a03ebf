"""DICOM integrity: the pixel budget on compressed frames and precise reject reasons."""

import io
import struct
import tracemalloc

import cv2
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom import uid as dicom_uid

import corrupt_inputs
from bone_age import dicom_writer
from bone_age import errors
from bone_age import imaging

# Far below the 225 MB a 15000 x 15000 frame decodes to.
_SMALL_PEAK_BYTES = 32 * 2**20


def _expect_error(data, source, reason, **kwargs) -> errors.InputError:
  with pytest.raises(errors.InputError) as caught:
    imaging.decode_radiograph(data, source, **kwargs)
  assert caught.value.reason == reason, str(caught.value)
  assert caught.value.source == source and source in str(caught.value)
  return caught.value


def _jpeg(height_px=64, width_px=64) -> bytes:
  rng = np.random.default_rng(3)
  image = np.clip(rng.normal(120, 30, (height_px, width_px)), 0, 255).astype(np.uint8)
  return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def test_small_dicom_holding_a_huge_jpeg_is_refused_without_the_allocation():
  """Header 64x64, a real 15000x15000 JPEG inside (2.6 MB): decoding it would allocate 225 MB."""
  data = corrupt_inputs.dicom_with_frame(corrupt_inputs.flat_jpeg(15000, 15000), dicom_uid.JPEGBaseline8Bit)
  assert len(data) < 3_000_000
  tracemalloc.start()
  try:
    error = _expect_error(data, "bomb.dcm", errors.DECOMPRESSION_BOMB)
    peak_bytes = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert "15000x15000" in error.detail and "frame header" in error.detail
  assert peak_bytes < _SMALL_PEAK_BYTES, f"peak {peak_bytes:,} bytes"


def test_flat_jpeg_builder_makes_a_real_image():
  """The bomb above is a real JPEG: libjpeg decodes the same builder's output, warning-free."""
  decoded = imaging.decode_radiograph(corrupt_inputs.flat_jpeg(1600, 1200), "flat.jpg")
  assert decoded.pixels.shape == (1200, 1600)


def test_compressed_frame_within_budget_but_not_rows_columns_is_refused(monkeypatch):
  data = corrupt_inputs.dicom_with_frame(_jpeg(200, 120), dicom_uid.JPEGBaseline8Bit, rows=64, columns=64)

  def fail_if_called(self):
    raise AssertionError("pixels were decoded before the frame header was checked")
  monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail_if_called))
  error = _expect_error(data, "mismatch.dcm", errors.UNSUPPORTED_DICOM)
  assert "120x200" in error.detail and "64x64" in error.detail


def test_compressed_frame_budget_follows_max_pixels():
  data = corrupt_inputs.dicom_with_frame(_jpeg(), dicom_uid.JPEGBaseline8Bit)
  assert imaging.decode_radiograph(data, "ok.dcm").pixels.shape == (64, 64)
  # Rows/Columns are checked first; both say 64x64 here.
  _expect_error(data, "small_budget.dcm", errors.DECOMPRESSION_BOMB, max_pixels=4095)


def test_jpeg_ls_frame_header_is_read():
  """SOF55 (JPEG-LS) carries the size like a JPEG SOF: a claimed giant is refused before decoding."""
  sof55 = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, 20000, 20000, 1) + b"\x01\x11\x00"
  frame = b"\xff\xd8" + sof55 + b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x00\x00" + b"\x00" * 8 + b"\xff\xd9"
  error = _expect_error(corrupt_inputs.dicom_with_frame(frame, dicom_uid.JPEGLSLossless), "ls.dcm",
                        errors.DECOMPRESSION_BOMB)
  assert "20000x20000" in error.detail


def _j2k_codestream(width_px: int, height_px: int) -> bytes:
  siz = struct.pack(">HHIIIIIIIIH", 41, 0, width_px, height_px, 0, 0, width_px, height_px, 0, 0, 1) + b"\x07\x01\x01"
  return b"\xff\x4f\xff\x51" + siz + b"\xff\x90" + b"\x00" * 20 + b"\xff\xd9"


def test_jpeg_2000_size_is_read_from_its_siz_segment():
  error = _expect_error(corrupt_inputs.dicom_with_frame(_j2k_codestream(30000, 30000), dicom_uid.JPEG2000Lossless),
                        "j2k.dcm", errors.DECOMPRESSION_BOMB)
  assert "SIZ" in error.detail and "30000x30000" in error.detail


def test_rle_frame_with_wrong_segment_count_is_refused():
  header = struct.pack("<16I", 3, 64, 70, 80, *([0] * 12))
  frame = header + b"\x00" * 32
  error = _expect_error(corrupt_inputs.dicom_with_frame(frame, dicom_uid.RLELossless), "rle.dcm",
                        errors.UNSUPPORTED_DICOM)
  assert "3 segments" in error.detail


def _deflated(data: bytes) -> bytes:
  """The uncompressed DICOM rewritten in the Deflated Explicit VR Little Endian transfer syntax."""
  dataset = pydicom.dcmread(io.BytesIO(data))
  dataset.file_meta.TransferSyntaxUID = dicom_uid.DeflatedExplicitVRLittleEndian
  buffer = io.BytesIO()
  dataset.save_as(buffer, enforce_file_format=True)
  return buffer.getvalue()


def test_deflated_dicom_decodes():
  image = np.clip(np.random.default_rng(0).normal(100, 20, (60, 44)), 0, 255).astype(np.uint8)
  data = _deflated(dicom_writer.encode_dicom(image))
  assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == dicom_uid.DeflatedExplicitVRLittleEndian
  radiograph = imaging.decode_radiograph(data, "deflated.dcm")
  assert np.array_equal(radiograph.pixels, imaging.normalize_to_uint8(image))


def test_deflated_dicom_is_inflated_only_up_to_the_budget():
  """3000x3000 zeros deflate to a few kB; with a 1 MP budget the inflation stops early."""
  data = _deflated(dicom_writer.encode_dicom(np.zeros((3000, 3000), np.uint8)))
  assert len(data) < 100_000
  tracemalloc.start()
  try:
    error = _expect_error(data, "deflate_bomb.dcm", errors.DECOMPRESSION_BOMB, max_pixels=1_000_000)
    peak_bytes = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert "inflates to more than" in error.detail
  assert peak_bytes < 4 * 1_000_000 + 4 * 2**20 + _SMALL_PEAK_BYTES // 4, f"peak {peak_bytes:,} bytes"


def test_deflated_dicom_cut_short_is_truncated():
  data = _deflated(dicom_writer.encode_dicom(np.zeros((300, 300), np.uint8)))
  _expect_error(data[:-20], "deflate_cut.dcm", errors.TRUNCATED)


def test_jpeg_extended_decoder_failure_is_decoder_error_not_truncated():
  """A complete JPEG Extended frame the decoder refuses (undefined quantisation table):
  the transfer syntax name contains "ended", which once made every such failure "truncated"."""
  frame = bytearray(_jpeg())
  sof = frame.index(b"\xff\xc0")
  frame[sof + 12] = 3  # The one component's quantisation table: 3, never defined.
  data = corrupt_inputs.dicom_with_frame(bytes(frame), dicom_uid.JPEGExtended12Bit)
  error = _expect_error(data, "extended.dcm", errors.DECODER_ERROR)
  assert "JPEG Extended" in error.detail


def test_bit_rot_inside_a_dicom_jpeg_frame_is_corrupt_image():
  rng = np.random.default_rng(1)
  image = np.clip(rng.normal(120, 40, (256, 256)), 0, 255).astype(np.uint8)
  frame = corrupt_inputs.jpeg_with_bit_rot(image)
  data = corrupt_inputs.dicom_with_frame(frame, dicom_uid.JPEGBaseline8Bit, rows=256, columns=256)
  _expect_error(data, "rot.dcm", errors.CORRUPT_IMAGE)


@pytest.mark.parametrize("name,reason", [
    ("JPEG-lossy.dcm", errors.DECODER_ERROR),  # JPEG Extended whose scan header libjpeg refuses: once "truncated".
    ("rtplan_truncated.dcm", errors.TRUNCATED),  # Cut inside an element.
    ("rtplan.dcm", errors.NO_PIXEL_DATA),  # Complete, no image.
    ("test-SR.dcm", errors.NO_PIXEL_DATA),
    ("JPEG2000-embedded-sequence-delimiter.dcm", errors.DECOMPRESSION_BOMB),  # Its SIZ claims 3.8 T pixels.
])
def test_pydicom_bundled_files_get_precise_reasons(name, reason):
  path = pydicom.data.get_testdata_file(name)
  if path is None:
    pytest.skip(f"pydicom's bundled test file {name} is not installed")
  with open(path, "rb") as f:
    _expect_error(f.read(), name, reason)
