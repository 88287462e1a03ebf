"""Decode any supported radiograph (PNG, JPEG, DICOM) into one grayscale form.

Every consumer (dataset build, scorer, demo) calls `decode_radiograph`, so the
model sees the same representation whatever the file format: a (H, W) uint8
image, bone bright (MONOCHROME2), contrast-stretched by `normalize_to_uint8`.

Bad input raises exactly one `InputError` whose reason says what is wrong:
EMPTY_FILE, TRUNCATED (the stream ends early: cv2 happily decodes a PNG cut in
half), CORRUPT_IMAGE (a complete file whose data the decoder finds damaged: a
PNG chunk failing its CRC, a JPEG whose entropy-coded data libjpeg calls
corrupt; decoders only warn about these and return an image), NOT_AN_IMAGE,
UNSUPPORTED_FORMAT (a real image format we do not read), DECOMPRESSION_BOMB
(checked from the header, before any pixel is decoded) and, for DICOM, the
reasons of `bone_age.dicom`.
"""

import struct
import zlib

import cv2
import numpy as np

from bone_age import errors
from bone_age import frame_headers
from bone_age import pixel_budget
# Re-exported: callers name these through this module.
from bone_age.pixel_budget import DEFAULT_MAX_PIXELS, check_pixel_count  # pylint: disable=unused-import
from bone_age.radiograph import Acquisition, PatientInfo, Radiograph  # pylint: disable=unused-import

# Order statistics of the contrast stretch, in percent of the pixel count.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

_FLOAT32_EXACT_COUNT = 2**24
# The stretch's order statistics are taken on every n-th row, n chosen so about
# this many pixels are counted: plenty for two percentiles, and it cuts the
# histogram cost ~6x on a 3 MP radiograph. The rows depend only on the
# image shape, so all formats of one picture still sample the same pixels.
_STRETCH_SAMPLE_PIXELS = 500_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_PALETTE = 3
_PNG_COLOR_TYPES_WITH_ALPHA = (4, 6)
_JPEG_SOI = b"\xff\xd8\xff"
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split())
# Image formats people may hand us that we recognise but do not decode.
_OTHER_IMAGE_MAGIC = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def sniff_format(data: bytes) -> str | None:
  """The format by magic bytes ("png", "jpeg", "dicom"), or None.

  DICOM is recognised by 'DICM' after the 128-byte preamble, by 'DICM' at the
  start (preamble stripped), or by a bare dataset whose first element is a
  group 0002/0008 tag (files written without any file meta header).
  """
  head = bytes(data[:132])
  if head.startswith(_PNG_SIGNATURE):
    return "png"
  if head.startswith(_JPEG_SOI):
    return "jpeg"
  if head[128:132] == b"DICM" or head.startswith(b"DICM") or _looks_like_bare_dicom(head[:8]):
    return "dicom"
  return None


def _looks_like_bare_dicom(head: bytes) -> bool:
  if len(head) < 8:
    return False
  group, element = struct.unpack_from("<HH", head)
  if group not in (0x0002, 0x0008) or element > 0x1200:
    return False
  if head[4:6] in _DICOM_VRS:
    return True  # Explicit VR.
  # Implicit VR: a 4-byte length follows; the file-meta/identifying elements
  # that start a dataset are short.
  (length,) = struct.unpack_from("<I", head, 4)
  return length < 1024


def decode_radiograph(data: bytes, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Radiograph:
  """Decodes PNG, JPEG or DICOM bytes into a normalised uint8 radiograph.

  Args:
    data: The file's bytes.
    source: The input's name as the user knows it (path, archive member); it
      is named in every error.
    max_pixels: Refuse images whose header declares more pixels than this.

  Returns:
    The Radiograph (pixels (H, W) uint8, bone bright).

  Raises:
    errors.InputError: For any input that cannot be used (see module doc).
  """
  if data is None or len(data) == 0:
    raise errors.InputError(source, errors.EMPTY_FILE, "file is empty (0 bytes)")
  if not isinstance(data, bytes):
    data = bytes(data)
  image_format = sniff_format(data)
  patient = acquisition = None
  if image_format == "png":
    raw = _decode_png(data, source, max_pixels)
  elif image_format == "jpeg":
    raw = _decode_jpeg(data, source, max_pixels)
  elif image_format == "dicom":
    from bone_age import dicom  # pylint: disable=g-import-not-at-top  (pydicom is imported lazily)
    raw, patient, acquisition = dicom.decode_dicom(data, source, max_pixels=max_pixels)
  else:
    raise _unrecognised_format_error(data, source)
  # The decoded buffer is ours: stretching it in place saves a fresh 3 MB
  # allocation (and its page faults) per radiograph.
  return Radiograph(pixels=_normalize(raw, overwrite_input=True), source_format=image_format, patient=patient,
                    acquisition=acquisition)


def _unrecognised_format_error(data: bytes, source: str) -> errors.InputError:
  if len(data) < len(_PNG_SIGNATURE) and _PNG_SIGNATURE.startswith(data):
    return errors.InputError(source, errors.TRUNCATED, f"file ends after {len(data)} bytes, inside the PNG signature")
  for magic, name in _OTHER_IMAGE_MAGIC:
    if data.startswith(magic):
      return errors.InputError(source, errors.UNSUPPORTED_FORMAT,
                               f"{name} images are not supported; convert to PNG or DICOM")
  return errors.InputError(source, errors.NOT_AN_IMAGE,
                           f"not a PNG, JPEG or DICOM image (first bytes {data[:8]!r}, {len(data)} bytes)")


# --------------------------------------------------------------------------- PNG


def _read_png_header(data: bytes, source: str, max_pixels: int) -> tuple[int, int, bool]:
  """Checks the PNG chunk structure and CRCs; returns (bit_depth, color_type, has_trns).

  cv2 decodes a PNG whose tail is cut off without complaint (missing rows come
  out black), so the chunk chain is walked to its IEND here; every chunk's
  CRC is checked on the way, so bit-rot is named (chunk and byte offset)
  rather than left to libpng, which reports to stderr only.
  """
  if len(data) < 33 or data[12:16] != b"IHDR":
    if len(data) < 33:
      raise errors.InputError(source, errors.TRUNCATED, f"PNG file ends after {len(data)} bytes, inside its header")
    raise errors.InputError(source, errors.NOT_AN_IMAGE, "PNG signature is not followed by an IHDR header")
  width_px, height_px, bit_depth, color_type = struct.unpack_from(">IIBB", data, 16)
  pixel_budget.check_pixel_count(source, height_px, width_px, max_pixels, "PNG header")
  size = len(data)
  view = memoryview(data)
  position = 8
  has_trns = False
  while position + 8 <= size:
    length, chunk_type = struct.unpack_from(">I4s", data, position)
    chunk_start = position
    position += 12 + length
    if position > size:
      raise errors.InputError(source, errors.TRUNCATED,
                              f"PNG file ends inside its {chunk_type.decode('latin-1')!r} chunk ({size} bytes)")
    (stored_crc,) = struct.unpack_from(">I", data, position - 4)
    if zlib.crc32(view[chunk_start + 4:position - 4]) != stored_crc:
      raise errors.InputError(source, errors.CORRUPT_IMAGE,
                              f"PNG {chunk_type.decode('latin-1')!r} chunk at byte {chunk_start} fails its CRC check "
                              "(the file is damaged)")
    if chunk_type == b"IEND":
      return bit_depth, color_type, has_trns
    has_trns = has_trns or chunk_type == b"tRNS"
  raise errors.InputError(source, errors.TRUNCATED, f"PNG file ends without its IEND chunk ({size} bytes)")


def _decode_png(data: bytes, source: str, max_pixels: int) -> np.ndarray:
  """PNG -> (H, W) uint8 or uint16 grayscale, before normalisation.

  Grayscale and RGB decode straight to gray (RGB through luminance). Palette
  images are expanded to colour and converted to luminance explicitly, which
  is exact for the grey palettes radiographs use. Images with an alpha channel
  (grey+alpha, RGBA, palette+tRNS) are composited over black: transparent
  regions carry no signal, like the black letterbox padding. A tRNS colour key
  on grey or RGB images is ignored (it marks one grey value, not a region).
  """
  bit_depth, color_type, has_trns = _read_png_header(data, source, max_pixels)
  depth_flag = cv2.IMREAD_ANYDEPTH if bit_depth == 16 else 0
  has_alpha = color_type in _PNG_COLOR_TYPES_WITH_ALPHA or (color_type == _PNG_COLOR_PALETTE and has_trns)
  if has_alpha:
    flags = cv2.IMREAD_UNCHANGED
  elif color_type == _PNG_COLOR_PALETTE:
    flags = cv2.IMREAD_COLOR
  else:
    flags = cv2.IMREAD_GRAYSCALE | depth_flag
  decoded = _imdecode(data, flags)
  if decoded is None:
    # Chunks and CRCs are intact, so the compressed pixel stream itself is
    # damaged (libpng: bad filter, incorrect data check, too little data).
    raise errors.InputError(source, errors.CORRUPT_IMAGE,
                            "PNG pixel data is corrupt: libpng cannot decode its compressed image stream")
  return _to_gray(decoded)


def _imdecode(data: bytes, flags: int) -> np.ndarray | None:
  try:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  except cv2.error:
    return None


def _to_gray(decoded: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 3) BGR or (H, W, 4) BGRA -> (H, W) gray, alpha over black."""
  if decoded.ndim == 2:
    return decoded
  channels = decoded.shape[2]
  if channels == 1:
    return decoded[:, :, 0]
  if channels == 3:
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2GRAY)
  gray = cv2.cvtColor(decoded, cv2.COLOR_BGRA2GRAY)
  alpha = np.ascontiguousarray(decoded[:, :, 3])
  full_scale = float(np.iinfo(decoded.dtype).max)
  return cv2.multiply(gray, alpha, scale=1.0 / full_scale)


# -------------------------------------------------------------------------- JPEG


def _decode_jpeg(data: bytes, source: str, max_pixels: int) -> np.ndarray:
  """JPEG -> (H, W) uint8 (colour JPEGs give their luma channel).

  libjpeg reports damaged entropy-coded data ("Corrupt JPEG data ...",
  "Premature end of data segment") as warnings and returns an image anyway;
  cv2 only prints them. simplejpeg (libjpeg-turbo, the same pixels as cv2)
  with strict=True raises them instead, at no extra cost. Without simplejpeg
  installed, pylibjpeg-libjpeg (a core dependency, but slower)
  checks the stream before cv2 decodes it.
  """
  frame_headers.read_jpeg_frame(data, source, max_pixels)
  try:
    import simplejpeg  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _decode_jpeg_checked_by_libjpeg(data, source)
  try:
    return simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)[:, :, 0]
  except ValueError as error:
    raise errors.decoder_failure(source, "JPEG", error) from error


def _decode_jpeg_checked_by_libjpeg(data: bytes, source: str) -> np.ndarray:
  from libjpeg import decode as libjpeg_decode  # pylint: disable=g-import-not-at-top

  try:
    libjpeg_decode(data)
  except (RuntimeError, ValueError) as error:
    raise errors.decoder_failure(source, "JPEG", error) from error
  decoded = _imdecode(data, cv2.IMREAD_GRAYSCALE)
  if decoded is None:
    raise errors.InputError(source, errors.DECODER_ERROR, "JPEG data uses a coding cv2 cannot decode")
  return decoded


# ------------------------------------------------------------- normalisation


def normalize_to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Robust contrast stretch of any grayscale array to uint8.

  The LOW_PERCENTILE and HIGH_PERCENTILE order statistics map to 0 and 255
  (clipped outside), so a few hot pixels or burnt-in labels cannot squash the
  contrast. The order statistics are exact (the k-th smallest and k-th
  largest pixel, k = floor(N * 0.5 %)): they move with any monotone map of the
  values, so an 8-bit image, the same image times 257 in 16 bits, and its
  MONOCHROME1 inversion flipped back all give the same uint8 image (within one
  grey level of rounding). Integer data uses a histogram (cv2.calcHist) and a
  lookup table rather than np.percentile, which is ~30x slower on 3 MP.

  Args:
    pixels: (H, W) array of any integer, bool or float dtype.

  Returns:
    (H, W) uint8. A constant image gives all zeros.
  """
  return _normalize(np.asarray(pixels), overwrite_input=False)


def _normalize(pixels: np.ndarray, overwrite_input: bool) -> np.ndarray:
  if pixels.ndim != 2:
    raise ValueError(f"expected a (H, W) grayscale array, got shape {pixels.shape}")
  if pixels.size == 0:
    raise ValueError("cannot normalise an empty image")
  if pixels.dtype == np.bool_:
    pixels = pixels.view(np.uint8)
  if pixels.dtype in (np.uint8, np.uint16):
    return _stretch_with_histogram(pixels, overwrite_input)
  if np.issubdtype(pixels.dtype, np.integer):
    low, high = int(pixels.min()), int(pixels.max())
    if high - low <= np.iinfo(np.uint16).max:
      wide = pixels.astype(np.int64) if pixels.dtype.itemsize >= 4 else pixels.astype(np.int32)
      return _stretch_with_histogram((wide - low).astype(np.uint16), overwrite_input=True)
    return _stretch_float(pixels.astype(np.float64))
  if np.issubdtype(pixels.dtype, np.floating):
    return _stretch_float(pixels)
  raise ValueError(f"cannot normalise pixels of dtype {pixels.dtype}")


def _order_statistic_ranks(count: int) -> tuple[int, int]:
  k = int(count * LOW_PERCENTILE / 100.0)
  k_high = int(count * (100.0 - HIGH_PERCENTILE) / 100.0)
  return k, count - 1 - k_high


def _stretch_lut(num_levels: int, low: float, high: float) -> np.ndarray:
  """uint8 lookup table mapping level v to round(255 (v - low) / (high - low))."""
  levels = np.arange(num_levels, dtype=np.float64)
  # Divide before scaling: (257 a) / (257 b) rounds exactly like a / b, which
  # keeps 8-bit and x257 16-bit inputs bit-identical.
  scaled = (levels - low) / (high - low) * 255.0
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _sample_rows(pixels: np.ndarray) -> np.ndarray:
  """Every n-th row (a view: cv2 reads strided rows without copying)."""
  row_step = max(1, pixels.size // _STRETCH_SAMPLE_PIXELS)
  return pixels[::min(row_step, pixels.shape[0])]


def _stretch_with_histogram(pixels: np.ndarray, overwrite_input: bool) -> np.ndarray:
  num_levels = 256 if pixels.dtype == np.uint8 else 65536
  pixels = np.ascontiguousarray(pixels)
  sample = _sample_rows(pixels)
  if sample.size < _FLOAT32_EXACT_COUNT:
    histogram = cv2.calcHist([sample], [0], None, [num_levels], [0, num_levels]).ravel()
  else:  # calcHist counts in float32, which stops being exact at 2**24.
    histogram = np.bincount(sample.ravel(), minlength=num_levels)
  cumulative = np.cumsum(histogram, dtype=np.int64)
  rank_low, rank_high = _order_statistic_ranks(sample.size)
  low, high = np.searchsorted(cumulative, [rank_low + 1, rank_high + 1])
  if high <= low:  # Nearly constant image: fall back to the full range.
    nonzero = np.flatnonzero(histogram)
    low, high = nonzero[0], nonzero[-1]
    if high <= low:
      return np.zeros(pixels.shape, np.uint8)
  lut = _stretch_lut(num_levels, float(low), float(high))
  if num_levels == 256:
    return cv2.LUT(pixels, lut, dst=pixels if overwrite_input and pixels.flags.writeable else None)
  return np.take(lut, pixels)  # ~1.4x faster than lut[pixels] for uint16 indices.


def _stretch_float(pixels: np.ndarray) -> np.ndarray:
  finite = np.isfinite(pixels)
  all_finite = bool(finite.all())
  sample = _sample_rows(pixels)
  values = sample.ravel() if all_finite else sample[np.isfinite(sample)]
  if values.size == 0:
    return np.zeros(pixels.shape, np.uint8)
  rank_low, rank_high = _order_statistic_ranks(values.size)
  partitioned = np.partition(values, (rank_low, rank_high))
  low, high = float(partitioned[rank_low]), float(partitioned[rank_high])
  if high <= low:
    low, high = float(values.min()), float(values.max())
    if high <= low:
      return np.zeros(pixels.shape, np.uint8)
  scaled = (pixels.astype(np.float64) - low) / (high - low) * 255.0
  if not all_finite:
    scaled[~finite] = 0.0
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
