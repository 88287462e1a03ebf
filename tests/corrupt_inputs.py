"""Hostile inputs built in code, shared by every test that needs them.

Decompression bombs (headers that claim gigapixels, and real streams that
decode to them from a small file), bit-rot in PNG and JPEG files, and DICOMs
whose compressed frame disagrees with their header. Test modules import this
file by name: tests/conftest.py puts this folder on sys.path.
"""

import io
import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FLAT_GREY = 128  # Level-shifted to 0: every 8x8 block codes as DC diff 0 + EOB.
_JPEG_SOF0 = b"\xff\xc0"
_JPEG_SOS = b"\xff\xda"


def png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
  """One PNG chunk with its length and a correct CRC."""
  return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", zlib.crc32(chunk_type + payload))


def png_bomb(width_px: int = 60_000, height_px: int = 60_000) -> bytes:
  """A small, well-formed PNG whose IHDR claims width x height 8-bit grey pixels."""
  header = struct.pack(">IIBBBBB", width_px, height_px, 8, 0, 0, 0, 0)
  return (PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
          + png_chunk(b"IEND", b""))


def jpeg_header_bomb(width_px: int = 65_000, height_px: int = 65_000) -> bytes:
  """A JPEG of headers only whose frame header claims width x height pixels."""
  sof = _JPEG_SOF0 + struct.pack(">HBHHB", 11, 8, height_px, width_px, 1) + b"\x01\x11\x00"
  return b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


def _flat_jpeg_parts(blocks: int) -> tuple[bytes, bytes]:
  """(everything up to the scan data, scan data) of a cv2 JPEG of `blocks` flat 8x8 blocks."""
  encoded = cv2.imencode(".jpg", np.full((8, 8 * blocks), _FLAT_GREY, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
  data = encoded.tobytes()
  sos = data.index(_JPEG_SOS)
  scan_start = sos + 2 + struct.unpack_from(">H", data, sos + 2)[0]
  assert data.endswith(b"\xff\xd9")
  return data[:scan_start], data[scan_start:-2]


def flat_jpeg(width_px: int, height_px: int) -> bytes:
  """A real baseline JPEG of width x height flat grey pixels, about 0.75 byte per 8x8 block.

  Every block of a flat mid-grey image codes to the same 6 bits, so four
  blocks are 3 whole bytes: the scan is those bytes repeated, then the coded
  remainder. A 15000 x 15000 image (225 megapixels) is about 2.6 MB, and
  libjpeg decodes it in full, without a warning.
  """
  if width_px % 8 or height_px % 8:
    raise ValueError("width and height must be multiples of 8")
  header, four_blocks = _flat_jpeg_parts(4)
  assert len(four_blocks) == 3, "cv2's flat-block coding changed; this builder assumes 6 bits per block"
  repeats, remainder = divmod(width_px // 8 * (height_px // 8), 4)
  tail = _flat_jpeg_parts(remainder)[1] if remainder else b""
  sof = header.index(_JPEG_SOF0)
  header = header[:sof + 5] + struct.pack(">HH", height_px, width_px) + header[sof + 9:]
  return header + four_blocks * repeats + tail + b"\xff\xd9"


def jpeg_with_bit_rot(image: np.ndarray, quality: int = 90) -> bytes:
  """A JPEG of `image` with bytes flipped in the middle of its entropy-coded data.

  The marker structure (frame, scan, end-of-image) stays intact, so only a
  decoder that reports libjpeg's "Corrupt JPEG data" warnings can tell.
  """
  data = bytearray(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
  scan_start = data.index(_JPEG_SOS)
  middle = (scan_start + len(data)) // 2
  for offset in range(middle, middle + 200, 7):
    data[offset] ^= 0x5A
  return bytes(data)


def _idat_payload_offset(data: bytes) -> tuple[int, int]:
  """(offset, length) of the first IDAT chunk's payload."""
  idat = data.index(b"IDAT")
  return idat + 4, struct.unpack_from(">I", data, idat - 4)[0]


def png_with_bad_crc(png: bytes) -> bytes:
  """The PNG with bytes flipped inside its first IDAT chunk: that chunk's CRC no longer matches."""
  data = bytearray(png)
  start, length = _idat_payload_offset(png)
  for offset in range(start + length // 2, min(start + length, start + length // 2 + 30)):
    data[offset] ^= 0xA5
  return bytes(data)


def png_with_damaged_stream(png: bytes) -> bytes:
  """As `png_with_bad_crc`, with the CRC recomputed: only the compressed pixel stream is damaged."""
  data = bytearray(png_with_bad_crc(png))
  start, length = _idat_payload_offset(png)
  data[start + length:start + length + 4] = struct.pack(">I", zlib.crc32(bytes(data[start - 4:start + length])))
  return bytes(data)


def dicom_with_frame(frame: bytes, transfer_syntax_uid: str, rows: int = 64, columns: int = 64,
                     bits_allocated: int = 8) -> bytes:
  """A DICOM whose header says rows x columns and whose one encapsulated frame is `frame`."""
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom.encaps import encapsulate  # pylint: disable=g-import-not-at-top

  from bone_age import dicom_writer  # pylint: disable=g-import-not-at-top

  dtype = np.uint8 if bits_allocated == 8 else np.uint16
  dataset = pydicom.dcmread(io.BytesIO(dicom_writer.encode_dicom(np.zeros((rows, columns), dtype))))
  dataset.file_meta.TransferSyntaxUID = transfer_syntax_uid
  dataset.PixelData = encapsulate([frame])
  dataset["PixelData"].VR = "OB"
  buffer = io.BytesIO()
  dataset.save_as(buffer, enforce_file_format=True)
  return buffer.getvalue()
