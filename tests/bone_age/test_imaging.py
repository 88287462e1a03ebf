"""Decoding PNG / JPEG into the one grayscale form, its guards, and the stretch."""

import io
import struct
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import corrupt_inputs
from bone_age import dicom_writer
from bone_age import errors
from bone_age import imaging


def _radiograph_like(height_px=64, width_px=48, seed=0) -> np.ndarray:
  """uint8 image with a dark background, a mid-grey 'hand' and bright 'bones'."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height_px, :width_px]
  image = 20.0 + 100.0 * (((yy - height_px / 2) / height_px) ** 2 + ((xx - width_px / 2) / width_px) ** 2 < 0.12)
  image += 110.0 * (((yy - height_px / 3) / height_px) ** 2 + ((xx - width_px / 2) / width_px) ** 2 < 0.01)
  image += rng.normal(0.0, 8.0, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
  ok, encoded = cv2.imencode(".png", image)
  assert ok
  return encoded.tobytes()


def _pil_png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def _expect_error(data, source, reason, **kwargs) -> errors.InputError:
  with pytest.raises(errors.InputError) as caught:
    imaging.decode_radiograph(data, source, **kwargs)
  error = caught.value
  assert error.reason == reason, str(error)
  assert error.source == source
  assert source in str(error)
  return error


# ------------------------------------------------------------------ sniffing


def test_sniff_format_by_magic_bytes():
  image = _radiograph_like()
  assert imaging.sniff_format(_png(image)) == "png"
  assert imaging.sniff_format(cv2.imencode(".jpg", image)[1].tobytes()) == "jpeg"
  assert imaging.sniff_format(dicom_writer.encode_dicom(image)) == "dicom"
  assert imaging.sniff_format(dicom_writer.encode_dicom(image, preamble=False)) == "dicom"
  assert imaging.sniff_format(b"%PDF-1.7 hello") is None
  assert imaging.sniff_format(b"") is None


# ---------------------------------------------------------------- PNG paths


def test_png_8bit_gray_is_the_stretched_image():
  image = _radiograph_like()
  radiograph = imaging.decode_radiograph(_png(image), "hand.png")
  assert radiograph.source_format == "png"
  assert radiograph.patient is None
  assert radiograph.pixels.dtype == np.uint8 and radiograph.pixels.shape == image.shape
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(image))


def test_png_16bit_keeps_full_depth():
  image = _radiograph_like()
  # Low byte carries information: a decoder that dropped to 8 bits would lose it.
  deep = image.astype(np.uint16) * 257
  radiograph = imaging.decode_radiograph(_png(deep), "deep.png")
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(image))
  small_range = (image.astype(np.uint16) + 1000)  # all values < 256 * 5: only the low byte varies much
  radiograph = imaging.decode_radiograph(_png(small_range), "narrow16.png")
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(image))


def test_palette_png_decodes_through_its_palette():
  image = _radiograph_like()
  indices = (255 - image).astype(np.uint8)  # Palette maps index i to grey 255 - i.
  palette_image = Image.fromarray(indices, mode="P")
  palette_image.putpalette([value for i in range(256) for value in (255 - i,) * 3])
  data = _pil_png(palette_image)
  assert data[25] == 3  # IHDR colour type: palette.
  radiograph = imaging.decode_radiograph(data, "palette.png")
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(image))


def test_palette_png_with_transparency_composites_over_black():
  image = _radiograph_like()
  palette_image = Image.fromarray(image, mode="P")
  palette_image.putpalette([value for i in range(256) for value in (i,) * 3])
  transparent_index = int(image[0, 0])
  palette_image.info["transparency"] = transparent_index
  buffer = io.BytesIO()
  palette_image.save(buffer, format="PNG", transparency=transparent_index)
  radiograph = imaging.decode_radiograph(buffer.getvalue(), "palette_trns.png")
  expected = np.where(image == transparent_index, 0, image).astype(np.uint8)
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(expected))


def test_rgb_png_uses_luminance():
  image = _radiograph_like()
  gray_rgb = np.dstack([image] * 3)
  radiograph = imaging.decode_radiograph(_png(gray_rgb), "rgb.png")
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(image))
  colour = gray_rgb.copy()
  colour[..., 2] = 255  # Red channel saturated (BGR order): luminance still follows the grey content.
  radiograph = imaging.decode_radiograph(_png(colour), "tinted.png")
  assert np.corrcoef(radiograph.pixels.ravel(), image.ravel())[0, 1] > 0.99


def test_rgba_png_composites_alpha_over_black():
  image = _radiograph_like()
  alpha = np.full_like(image, 255)
  alpha[:, : image.shape[1] // 2] = 0  # Left half fully transparent.
  bgra = np.dstack([image, image, image, alpha])
  radiograph = imaging.decode_radiograph(_png(bgra), "rgba.png")
  expected = image.copy()
  expected[:, : image.shape[1] // 2] = 0
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(expected))


def test_gray_alpha_png_composites_alpha_over_black():
  image = _radiograph_like()
  alpha = np.full_like(image, 255)
  alpha[:8] = 0
  data = _pil_png(Image.fromarray(np.dstack([image, alpha]), mode="LA"))
  assert data[25] == 4  # IHDR colour type: grey + alpha.
  expected = image.copy()
  expected[:8] = 0
  radiograph = imaging.decode_radiograph(data, "gray_alpha.png")
  np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(expected))


def test_jpeg_decodes_close_to_source():
  image = _radiograph_like(96, 80)
  data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
  radiograph = imaging.decode_radiograph(data, "hand.jpg")
  assert radiograph.source_format == "jpeg" and radiograph.patient is None
  difference = np.abs(radiograph.pixels.astype(int) - imaging.normalize_to_uint8(image).astype(int))
  assert difference.mean() < 4.0


def test_colour_jpeg_decodes_to_gray():
  image = _radiograph_like(96, 80)
  data = cv2.imencode(".jpg", np.dstack([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
  radiograph = imaging.decode_radiograph(data, "colour.jpg")
  assert radiograph.pixels.shape == image.shape


def test_accepts_bytearray_and_memoryview():
  data = _png(_radiograph_like())
  expected = imaging.decode_radiograph(data, "a.png").pixels
  np.testing.assert_array_equal(imaging.decode_radiograph(bytearray(data), "b.png").pixels, expected)
  np.testing.assert_array_equal(imaging.decode_radiograph(memoryview(data), "c.png").pixels, expected)


# -------------------------------------------------------------------- guards


def test_empty_file():
  _expect_error(b"", "images/empty.png", errors.EMPTY_FILE)


@pytest.mark.parametrize("cut", ["half", "before_iend", "inside_iend", "header_only", "signature_only"])
def test_truncated_png(cut):
  data = _png(_radiograph_like(120, 100, seed=3))
  cut_at = {"half": len(data) // 2, "before_iend": len(data) - 12, "inside_iend": len(data) - 3,
            "header_only": 33, "signature_only": 5}[cut]
  # cv2 would decode most of these without complaint (missing rows black).
  _expect_error(data[:cut_at], f"cut_{cut}.png", errors.TRUNCATED)


@pytest.mark.parametrize("cut", ["no_eoi", "half", "inside_header"])
def test_truncated_jpeg(cut):
  data = cv2.imencode(".jpg", _radiograph_like(120, 100))[1].tobytes()
  cut_at = {"no_eoi": len(data) - 2, "half": len(data) // 2, "inside_header": 40}[cut]
  _expect_error(data[:cut_at], f"cut_{cut}.jpg", errors.TRUNCATED)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n", b"<html><body>404</body></html>",
                                     b"\x00" * 300, bytes(range(256)) * 4])
def test_non_image_bytes_under_an_image_name(content):
  error = _expect_error(content, "uploads/radiograph.png", errors.NOT_AN_IMAGE)
  assert "not a PNG, JPEG or DICOM" in error.detail


def test_png_signature_without_header_is_not_an_image():
  _expect_error(b"\x89PNG\r\n\x1a\n" + b"garbage!" * 10, "fake.png", errors.NOT_AN_IMAGE)


def test_png_chunk_failing_its_crc_is_corrupt_image():
  data = corrupt_inputs.png_with_bad_crc(_png(_radiograph_like(120, 100, seed=5)))
  error = _expect_error(data, "bitrot.png", errors.CORRUPT_IMAGE)
  assert "'IDAT' chunk at byte 33 fails its CRC" in error.detail


def test_png_with_damaged_pixel_stream_but_good_crcs_is_corrupt_image():
  data = corrupt_inputs.png_with_damaged_stream(_png(_radiograph_like(120, 100, seed=5)))
  error = _expect_error(data, "damaged.png", errors.CORRUPT_IMAGE)
  assert "libpng" in error.detail


def test_jpeg_with_bit_rot_is_corrupt_image_with_the_decoders_message():
  """libjpeg decodes it with a "Corrupt JPEG data" warning that cv2 only prints."""
  data = corrupt_inputs.jpeg_with_bit_rot(_radiograph_like(400, 300, seed=2))
  assert imaging.cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) is not None
  error = _expect_error(data, "bitrot.jpg", errors.CORRUPT_IMAGE)
  assert "Corrupt JPEG data" in error.detail


def test_jpeg_corruption_is_caught_without_simplejpeg(monkeypatch):
  """The default install lacks the `jpeg` extra: pylibjpeg-libjpeg checks the stream instead."""
  monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg -> ImportError
  data = corrupt_inputs.jpeg_with_bit_rot(_radiograph_like(400, 300, seed=2))
  _expect_error(data, "bitrot.jpg", errors.CORRUPT_IMAGE)
  good = cv2.imencode(".jpg", _radiograph_like(400, 300, seed=2))[1].tobytes()
  assert imaging.decode_radiograph(good, "good.jpg").pixels.shape == (400, 300)


def test_jpeg_decodes_to_the_same_pixels_as_cv2():
  image = _radiograph_like(400, 300, seed=4)
  data = cv2.imencode(".jpg", cv2.merge([image, image // 2, 255 - image]))[1].tobytes()
  expected = imaging.normalize_to_uint8(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
  assert np.array_equal(imaging.decode_radiograph(data, "colour.jpg").pixels, expected)


def test_jpeg_without_frame_is_not_an_image():
  _expect_error(b"\xff\xd8\xff\xd9", "empty_scan.jpg", errors.NOT_AN_IMAGE)


def test_recognised_but_unsupported_format():
  tiff = b"II*\x00" + b"\x00" * 100
  error = _expect_error(tiff, "scan.tif", errors.UNSUPPORTED_FORMAT)
  assert "TIFF" in error.detail


@pytest.mark.parametrize("data,name", [(corrupt_inputs.png_bomb(60_000, 60_000), "bomb.png"),
                                       (corrupt_inputs.jpeg_header_bomb(65_000, 65_000), "bomb.jpg")])
def test_decompression_bomb_is_refused_before_decoding(data, name, monkeypatch):
  def fail_if_called(*args, **kwargs):
    raise AssertionError("pixels were decoded before the size check")
  monkeypatch.setattr(imaging.cv2, "imdecode", fail_if_called)
  error = _expect_error(data, name, errors.DECOMPRESSION_BOMB)
  assert "limit" in error.detail


def test_pixel_limit_applies_to_real_images():
  data = _png(_radiograph_like(100, 100))
  _expect_error(data, "big.png", errors.DECOMPRESSION_BOMB, max_pixels=9_999)
  assert imaging.decode_radiograph(data, "ok.png", max_pixels=10_000).pixels.shape == (100, 100)


def test_zero_sized_header_is_not_an_image():
  _expect_error(corrupt_inputs.png_bomb(0, 10), "zero.png", errors.NOT_AN_IMAGE)


# ------------------------------------------------------------- normalisation


def test_stretch_maps_percentiles_to_full_range():
  image = _radiograph_like(200, 150).astype(np.uint16) + 300
  stretched = imaging.normalize_to_uint8(image)
  assert stretched.dtype == np.uint8
  assert np.mean(stretched == 0) >= 0.004 and np.mean(stretched == 255) >= 0.004
  # Monotone: a brighter input pixel is never darker after the stretch.
  order = np.argsort(image.ravel(), kind="stable")
  assert np.all(np.diff(stretched.ravel()[order].astype(int)) >= 0)


def test_stretch_ignores_a_few_hot_pixels():
  image = _radiograph_like(200, 150)
  hot = image.astype(np.uint16)
  hot[:2, :10] = 65535  # Burnt-in label: 20 pixels of 30,000.
  # A min/max stretch would squash the whole radiograph into ~1 grey level.
  difference = imaging.normalize_to_uint8(hot)[2:].astype(int) - imaging.normalize_to_uint8(image)[2:]
  assert np.abs(difference).max() <= 1


def test_stretch_is_the_same_for_8bit_16bit_inverted_signed_and_float():
  image = _radiograph_like(300, 200, seed=7)
  expected = imaging.normalize_to_uint8(image)
  variants = {
      "x257": image.astype(np.uint16) * 257,
      "inverted_flipped_back": 65535 - (65535 - image.astype(np.uint16) * 257),
      "signed_offset": image.astype(np.int32) * 3 - 1024,
      "float_scaled": image.astype(np.float32) * 0.37 + 12.5,
      "int64_wide": image.astype(np.int64) * 1_000_000,
  }
  for name, variant in variants.items():
    difference = np.abs(imaging.normalize_to_uint8(variant).astype(int) - expected)
    assert difference.max() <= 1, name


def test_stretch_of_constant_and_tiny_images():
  assert not imaging.normalize_to_uint8(np.full((5, 7), 42, np.uint8)).any()
  assert not imaging.normalize_to_uint8(np.full((5, 7), 42.0, np.float32)).any()
  two_levels = np.zeros((10, 10), np.uint16)
  two_levels[0, 0] = 9  # Fewer outliers than the percentile: falls back to min/max.
  out = imaging.normalize_to_uint8(two_levels)
  assert out[0, 0] == 255 and out.sum() == 255


def test_stretch_handles_nan_and_rejects_bad_shapes():
  image = _radiograph_like().astype(np.float64)
  image[0, 0] = np.nan
  out = imaging.normalize_to_uint8(image)
  assert out[0, 0] == 0 and out.max() == 255
  with pytest.raises(ValueError):
    imaging.normalize_to_uint8(np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError):
    imaging.normalize_to_uint8(np.zeros((0, 4), np.uint8))


def test_normalize_does_not_modify_its_input():
  image = _radiograph_like()
  before = image.copy()
  imaging.normalize_to_uint8(image)
  np.testing.assert_array_equal(image, before)


# --------------------------------------------------------------- real images


def test_all_real_rsna_images_decode(rsna_sample_dir):
  paths = sorted((rsna_sample_dir / "images").glob("*.png"))
  assert len(paths) == 65
  palette_count = 0
  for path in paths:
    data = path.read_bytes()
    radiograph = imaging.decode_radiograph(data, str(path))
    width_px, height_px = struct.unpack_from(">II", data, 16)
    assert radiograph.pixels.shape == (height_px, width_px), path.name
    assert radiograph.pixels.dtype == np.uint8
    assert radiograph.pixels.max() == 255 and radiograph.pixels.min() == 0, path.name
    if data[25] == 3:
      palette_count += 1
      # Palette radiographs use a grey palette: explicit expansion gives the grey levels.
      reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
      np.testing.assert_array_equal(radiograph.pixels, imaging.normalize_to_uint8(reference))
  assert palette_count == 3
