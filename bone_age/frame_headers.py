"""Image size from a compressed stream's own header, before any decoding.

A decoder allocates what the stream's header says (the JPEG frame header, the
JPEG 2000 SIZ segment), whatever a container such as DICOM claims around it.
These readers walk only the header bytes, so a small file that would inflate
to gigapixels is measured and refused (see `bone_age.pixel_budget`) before a
decoder runs. Each raises `errors.InputError` naming the input: TRUNCATED when
the stream ends early, NOT_AN_IMAGE when its structure is wrong.
"""

import struct

from bone_age import errors
from bone_age import pixel_budget

# Start-of-frame markers: baseline, extended, progressive, lossless, in the
# Huffman and arithmetic flavours (C4 = DHT, C8 = JPG, CC = DAC are not frames),
# and F7 = SOF55, the JPEG-LS frame header (same layout).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_JPEG_SOS = 0xDA
_JPEG_EOI = 0xD9
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_RLE_HEADER_BYTES = 64
_RLE_MAX_SEGMENTS = 15


def read_jpeg_frame(data: bytes, source: str, max_pixels: int, what: str = "JPEG") -> tuple[int, int]:
  """Walks JPEG (or JPEG-LS) marker segments to the first scan.

  Checks the frame header's size against the budget and that the
  end-of-image marker follows the scan: a truncated JPEG decodes (libjpeg
  fills the rest grey and only warns). Inside entropy-coded data 0xFF is
  always stuffed, so FF D9 after the scan can only be the real EOI; segments
  before the scan (EXIF thumbnails) are skipped by their lengths.

  Args:
    data: The stream, starting at its SOI marker.
    source: The input's name, for errors.
    max_pixels: The pixel budget.
    what: How the message names the stream ("JPEG", "DICOM JPEG frame").

  Returns:
    (height_px, width_px) from the frame header.
  """
  size = len(data)
  position = 2
  frame_size = None
  while True:
    if position + 2 > size:
      raise errors.InputError(source, errors.TRUNCATED, f"{what} stream ends inside its header ({size} bytes)")
    if data[position] != 0xFF:
      raise errors.InputError(source, errors.NOT_AN_IMAGE, f"{what} marker structure is corrupt at byte {position}")
    marker = data[position + 1]
    if marker == 0xFF:  # Fill byte before a marker.
      position += 1
      continue
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # Markers without a length.
      position += 2
      continue
    if marker == _JPEG_EOI:
      raise errors.InputError(source, errors.NOT_AN_IMAGE, f"{what} stream ends before any image scan")
    if position + 4 > size:
      raise errors.InputError(source, errors.TRUNCATED, f"{what} stream ends inside its header ({size} bytes)")
    (length,) = struct.unpack_from(">H", data, position + 2)
    segment_end = position + 2 + length
    if length < 2 or segment_end > size:
      raise errors.InputError(source, errors.TRUNCATED, f"{what} stream ends inside a marker segment ({size} bytes)")
    if marker in _JPEG_SOF_MARKERS:
      if length < 8:
        raise errors.InputError(source, errors.NOT_AN_IMAGE, f"{what} frame header is too short")
      height_px, width_px = struct.unpack_from(">HH", data, position + 5)
      pixel_budget.check_pixel_count(source, height_px, width_px, max_pixels, f"{what} frame header")
      frame_size = (height_px, width_px)
    elif marker == _JPEG_SOS:
      if frame_size is None:
        raise errors.InputError(source, errors.NOT_AN_IMAGE, f"{what} scan starts before any frame header")
      if data.rfind(b"\xff\xd9", segment_end) < 0:
        raise errors.InputError(source, errors.TRUNCATED,
                                f"{what} stream ends without its end-of-image marker ({size} bytes)")
      return frame_size
    position = segment_end


def read_j2k_frame(data: bytes, source: str, max_pixels: int, what: str = "JPEG 2000") -> tuple[int, int]:
  """Image size from the JPEG 2000 SIZ segment (bare codestream or JP2 file).

  The codestream starts with SOC immediately followed by SIZ; in a JP2 file
  it sits inside the 'jp2c' box, so the SOC+SIZ pair is searched for.

  Returns:
    (height_px, width_px): the reference grid minus its offset.
  """
  start = data.find(_J2K_SOC_SIZ)
  if start < 0:
    raise errors.InputError(source, errors.NOT_AN_IMAGE, f"{what} stream has no SOC+SIZ header")
  siz = start + len(_J2K_SOC_SIZ)
  if siz + 2 + 2 + 16 > len(data):
    raise errors.InputError(source, errors.TRUNCATED, f"{what} stream ends inside its SIZ header ({len(data)} bytes)")
  # Lsiz (2), Rsiz (2), then Xsiz, Ysiz, XOsiz, YOsiz (4 bytes each).
  x_size, y_size, x_offset, y_offset = struct.unpack_from(">IIII", data, siz + 4)
  height_px, width_px = y_size - y_offset, x_size - x_offset
  pixel_budget.check_pixel_count(source, height_px, width_px, max_pixels, f"{what} SIZ header")
  return height_px, width_px


def check_rle_frame(data: bytes, source: str, expected_segments: int) -> None:
  """Checks a DICOM RLE frame's header: segment count and offsets.

  The RLE header (64 bytes: a segment count and 15 offsets) does not state
  the image size: each segment decodes into exactly Rows x Columns bytes,
  so the count must be one segment per sample per byte, and every offset
  must lie inside the frame (otherwise the frame was cut short).
  """
  if len(data) < _RLE_HEADER_BYTES:
    raise errors.InputError(source, errors.TRUNCATED,
                            f"DICOM RLE frame ends inside its 64-byte header ({len(data)} bytes)")
  count, *offsets = struct.unpack_from("<16I", data)
  if count != expected_segments or count > _RLE_MAX_SEGMENTS:
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM RLE frame has {count} segments; the image pixel attributes need {expected_segments}")
  for offset in offsets[:count]:
    if offset < _RLE_HEADER_BYTES or offset >= len(data):
      raise errors.InputError(source, errors.TRUNCATED,
                              f"DICOM RLE segment starts at byte {offset}, outside the {len(data)}-byte frame")
