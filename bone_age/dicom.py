"""DICOM in: pixels, patient and acquisition facts from a header.

`decode_dicom` turns a single-frame grayscale (or RGB) DICOM into the values a
viewer would display before its final contrast stretch: stored values ->
Modality LUT (RescaleSlope/Intercept) -> VOI LUT or window -> MONOCHROME1
flipped so bone is bright. `bone_age.imaging.normalize_to_uint8` does the
stretch, the same one as for PNG and JPEG.

Nothing is decoded before its size is known to fit the pixel budget
(`bone_age.pixel_budget`): Rows/Columns, the compressed frame's own header
(which is what a decoder allocates) and, for the deflated transfer syntax,
the inflated size of the dataset.

pydicom is imported inside the functions: importing this module stays cheap
for Beam workers that never see a DICOM. The writer for tests and phantoms is
`bone_age.dicom_writer`.
"""

import datetime
import io
import warnings
import zlib

import numpy as np

from bone_age import errors
from bone_age import frame_headers
from bone_age import pixel_budget
from bone_age.radiograph import Acquisition, PatientInfo

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Bytes a dataset may inflate to per budgeted pixel: up to 4 bytes of pixel
# data per pixel (RGB at 8 bits, or 32-bit grey) plus room for the header.
_INFLATED_BYTES_PER_PIXEL = 4
_INFLATED_HEADER_BYTES = 1 << 20
# The pydicom plugin whose JPEG decoder raises on damaged entropy-coded data.
_STRICT_JPEG_PLUGIN = "pylibjpeg"


def decode_dicom(data: bytes, source: str, *,
                 max_pixels: int) -> tuple[np.ndarray, PatientInfo, Acquisition]:
  """Decodes DICOM bytes into display-ready grayscale values and patient facts.

  Args:
    data: The file's bytes (with or without the 128-byte preamble, with or
      without a file meta header).
    source: The input's name, named in every error.
    max_pixels: Refuse images whose Rows x Columns exceed this, before the
      pixel data is decoded.

  Returns:
    (pixels, patient, acquisition): pixels is (H, W), bone bright, not yet stretched to
    uint8: the stored integers when no LUT applies, uint16 after a modality /
    VOI LUT or MONOCHROME1 flip, float only for RGB or > 16-bit data.

  Raises:
    errors.InputError: TRUNCATED, NOT_AN_IMAGE, DECOMPRESSION_BOMB or
      UNSUPPORTED_DICOM (multi-frame, no decoder for the transfer syntax,
      unsupported photometric interpretation).
  """
  # pydicom warns about every out-of-spec value it meets; here each problem
  # becomes one InputError (or a None field), so the warnings are noise in job logs.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    dataset, cut_inside_element = _read_dataset(data, source, max_pixels)
    return _decode_dataset(dataset, cut_inside_element, source, max_pixels)


def _decode_dataset(dataset, cut_inside_element: bool, source: str,
                    max_pixels: int) -> tuple[np.ndarray, PatientInfo, Acquisition]:
  try:
    _check_image_header(dataset, cut_inside_element, source, max_pixels)
    pixels = _display_values(_decode_pixel_data(dataset, source), dataset)
    return pixels, patient_info(dataset), acquisition_info(dataset)
  except errors.InputError:
    raise
  except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as error:
    # Malformed attribute values (a window centre of "abc", a LUT of the
    # wrong length) surface as these from pydicom or numpy: a bad input, not
    # a crash of the job.
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM attributes cannot be interpreted ({type(error).__name__}: {error})") from error


def _read_dataset(data: bytes, source: str, max_pixels: int):
  """Parses the dataset; returns (dataset, whether the stream ends inside an element).

  pydicom stops quietly at a data element cut in half, so whether bytes are
  left after the last element it read tells a cut file from a complete one.
  """
  import pydicom  # pylint: disable=g-import-not-at-top

  if data[:4] == b"DICM":  # Preamble stripped but prefix kept: put the preamble back.
    data = bytes(128) + data
  try:
    deflated = _read_deflated(data, source, max_pixels)
    if deflated is not None:
      (dataset, stream), dataset_start = deflated, 0
    else:
      dataset, stream = pydicom.dcmread(io.BytesIO(data), force=True), data
      dataset_start = _dataset_start(dataset, stream)
  except errors.InputError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (pydicom raises many types on garbage)
    raise errors.InputError(source, errors.NOT_AN_IMAGE,
                            f"not a readable DICOM file ({type(error).__name__}: {error})") from error
  _ensure_transfer_syntax(dataset)
  return dataset, _ends_inside_an_element(dataset, stream, dataset_start)


def _read_deflated(data: bytes, source: str, max_pixels: int):
  """Reads a Deflated Explicit VR Little Endian file, inflating at most the budget.

  pydicom inflates the whole dataset in one call, so a small deflated file
  could allocate gigabytes before any pixel check. Here the inflation stops
  one byte past the budget.

  Returns:
    (dataset, inflated bytes), or None if the file is not deflated.
  """
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom import filereader  # pylint: disable=g-import-not-at-top

  stream = io.BytesIO(data)
  try:
    filereader.read_preamble(stream, True)
    # The meta group only: pydicom has no public reader for it from a buffer.
    meta = filereader._read_file_meta_info(stream)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except  (no readable meta group: dcmread decides what the file is)
    return None
  if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
    return None
  limit_bytes = max_pixels * _INFLATED_BYTES_PER_PIXEL + _INFLATED_HEADER_BYTES
  inflater = zlib.decompressobj(-zlib.MAX_WBITS)
  try:
    inflated = inflater.decompress(data[stream.tell():], limit_bytes + 1)
  except zlib.error as error:
    raise errors.InputError(source, errors.CORRUPT_IMAGE, f"deflated DICOM dataset is corrupt: {error}") from error
  if len(inflated) > limit_bytes or inflater.unconsumed_tail:
    raise errors.InputError(source, errors.DECOMPRESSION_BOMB,
                            f"deflated DICOM dataset inflates to more than {limit_bytes:,} bytes, the limit for "
                            f"{max_pixels:,} pixels (refused before decoding)")
  if not inflater.eof:
    raise errors.InputError(source, errors.TRUNCATED, "deflated DICOM dataset ends before its deflate stream does")
  dataset = filereader.read_dataset(pydicom.filebase.DicomBytesIO(inflated), is_implicit_VR=False,
                                    is_little_endian=True)
  dataset = pydicom.dataset.FileDataset(None, dataset, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
  meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # What the dataset now is.
  return dataset, inflated


def _ends_inside_an_element(dataset, stream: bytes, dataset_start: int | None) -> bool:
  """Whether bytes follow the last data element pydicom could read whole.

  With no dataset element at all (pydicom also drops everything it read
  when an undefined-length element runs into the end of the file), whether
  the stream holds anything beyond where the dataset starts, or ends before
  it. `dataset_start` is None when unknown (no meta group length).
  """
  from pydicom.dataelem import RawDataElement  # pylint: disable=g-import-not-at-top

  tags = list(dataset.keys())
  if not tags:
    return dataset_start is not None and len(stream) != dataset_start
  last = dataset.get_item(max(tags))
  if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
    return False
  return len(stream) != last.value_tell + last.length


def _dataset_start(dataset, stream: bytes) -> int | None:
  """Offset of the first dataset element: after the preamble and the meta group."""
  group_length = dataset.file_meta.get("FileMetaInformationGroupLength") if dataset.file_meta else None
  if group_length is None:
    return None
  meta_start = 132 if stream[128:132] == b"DICM" else 0
  return meta_start + 12 + int(group_length)  # 12: the group length element itself.


def _ensure_transfer_syntax(dataset) -> None:
  """Files without a file meta header say their encoding only implicitly."""
  import pydicom.uid  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import FileMetaDataset  # pylint: disable=g-import-not-at-top

  meta = getattr(dataset, "file_meta", None)
  if meta is not None and "TransferSyntaxUID" in meta:
    return
  if meta is None:
    dataset.file_meta = meta = FileMetaDataset()
  implicit_vr, little_endian = dataset.original_encoding
  if implicit_vr is not False:
    meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
  elif little_endian is False:
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
  else:
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def _is_image_object(dataset) -> bool:
  """Whether the header describes an image (Rows, or an image SOP class)."""
  sop_class = str(dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", ""))
  return "Rows" in dataset or "Image" in _uid_name(sop_class)


def _uid_name(uid: str) -> str:
  import pydicom.uid  # pylint: disable=g-import-not-at-top

  try:
    return pydicom.uid.UID(uid).name
  except Exception:  # pylint: disable=broad-except
    return ""


def _check_image_header(dataset, cut_inside_element: bool, source: str, max_pixels: int) -> None:
  if "PixelData" not in dataset:
    _raise_without_pixel_data(dataset, cut_inside_element, source)
  for keyword in ("Rows", "Columns", "BitsAllocated"):
    if dataset.get(keyword) is None:
      raise errors.InputError(source, errors.UNSUPPORTED_DICOM, f"DICOM image lacks the {keyword} attribute")
  rows, columns = int(dataset.Rows), int(dataset.Columns)
  pixel_budget.check_pixel_count(source, rows, columns, max_pixels, "DICOM Rows/Columns")
  frames = int(dataset.get("NumberOfFrames", 1) or 1)
  if frames != 1:
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM holds {frames} frames; a hand radiograph is a single frame")
  photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
  samples = int(dataset.get("SamplesPerPixel", 1) or 1)
  if not (photometric in _MONOCHROME or (samples == 3 and photometric)):
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM photometric interpretation {photometric or 'missing'!r} with {samples} samples "
                            "per pixel is not supported (expected MONOCHROME1/2 or RGB)")
  transfer_syntax = dataset.file_meta.TransferSyntaxUID
  if transfer_syntax.is_compressed:
    _check_compressed_frame(dataset, source, max_pixels)
  else:
    _check_uncompressed_length(dataset, source)


def _raise_without_pixel_data(dataset, cut_inside_element: bool, source: str):
  if cut_inside_element:
    raise errors.InputError(source, errors.TRUNCATED,
                            "DICOM file ends inside a data element, before any pixel data (the file is cut short)")
  if not list(dataset.keys()):
    raise errors.InputError(source, errors.NOT_AN_IMAGE, "DICOM file holds no data elements at all")
  if _is_image_object(dataset):
    raise errors.InputError(source, errors.NO_PIXEL_DATA,
                            "DICOM image object has no pixel data element: its last attribute is complete and "
                            "nothing follows (pixel data left out, or the file was cut exactly before it)")
  raise errors.InputError(source, errors.NO_PIXEL_DATA, "DICOM object holds no pixel data (not an image object)")


def _check_compressed_frame(dataset, source: str, max_pixels: int) -> None:
  """Reads the compressed frame's own header: its size is what a decoder allocates.

  Refused: a frame larger than the budget or not the size Rows/Columns say
  (DECOMPRESSION_BOMB, UNSUPPORTED_DICOM), a frame cut short (TRUNCATED), and
  a compression whose frame header cannot be read here (UNSUPPORTED_DICOM).
  """
  import pydicom.uid  # pylint: disable=g-import-not-at-top
  from pydicom.encaps import generate_frames  # pylint: disable=g-import-not-at-top

  transfer_syntax = dataset.file_meta.TransferSyntaxUID
  is_jpeg = transfer_syntax in pydicom.uid.JPEGTransferSyntaxes or transfer_syntax in pydicom.uid.JPEGLSTransferSyntaxes
  is_j2k = transfer_syntax in pydicom.uid.JPEG2000TransferSyntaxes
  is_rle = transfer_syntax in pydicom.uid.RLETransferSyntaxes
  if not (is_jpeg or is_j2k or is_rle):
    _check_decoder_available(transfer_syntax, source)
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM transfer syntax {transfer_syntax.name}: its frame size cannot be checked "
                            "before decoding")
  try:
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
  except Exception as error:  # pylint: disable=broad-except  (pydicom raises several types on a cut sequence)
    raise errors.InputError(source, errors.TRUNCATED,
                            f"DICOM encapsulated pixel data ends early or is malformed ({type(error).__name__}: "
                            f"{error})") from error
  what = f"DICOM {transfer_syntax.name} frame"
  if is_rle:
    bytes_per_sample = (int(dataset.BitsAllocated) + 7) // 8
    frame_headers.check_rle_frame(frame, source, int(dataset.get("SamplesPerPixel", 1) or 1) * bytes_per_sample)
  else:
    read_frame = frame_headers.read_jpeg_frame if is_jpeg else frame_headers.read_j2k_frame
    height_px, width_px = read_frame(frame, source, max_pixels, what)
    if (height_px, width_px) != (int(dataset.Rows), int(dataset.Columns)):
      raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                              f"{what} header declares {width_px}x{height_px}, but Rows/Columns say "
                              f"{dataset.Columns}x{dataset.Rows}")
  _check_decoder_available(transfer_syntax, source)


def _check_decoder_available(transfer_syntax, source: str) -> None:
  from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top

  try:
    decoder = get_decoder(transfer_syntax)
  except NotImplementedError as error:
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) has no decoder") from error
  if not decoder.is_available:
    needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM transfer syntax {transfer_syntax.name} needs a plugin that is not installed: {needs}")


def _check_uncompressed_length(dataset, source: str) -> None:
  from pydicom.pixels.utils import get_expected_length  # pylint: disable=g-import-not-at-top

  try:
    expected = get_expected_length(dataset, unit="bytes")
  except Exception as error:  # pylint: disable=broad-except  (inconsistent image pixel module)
    raise errors.InputError(source, errors.UNSUPPORTED_DICOM,
                            f"DICOM image pixel attributes are inconsistent ({error})") from error
  actual = len(dataset.PixelData)
  if actual < expected:
    raise errors.InputError(source, errors.TRUNCATED,
                            f"DICOM pixel data is {actual:,} bytes, {expected:,} expected for "
                            f"{dataset.Rows}x{dataset.Columns} at {dataset.BitsAllocated} bits")


def _decode_pixel_data(dataset, source: str) -> np.ndarray:
  """Stored values, masked to BitsStored and sign-extended by pydicom.

  Streams that end early were refused by the header checks, so a decoder's
  exception here means damaged data (CORRUPT_IMAGE, in libjpeg's words) or a
  coding the decoder refuses (DECODER_ERROR).
  """
  _prefer_strict_jpeg_plugin(dataset)
  try:
    pixels = dataset.pixel_array
  except Exception as error:  # pylint: disable=broad-except  (decoder plugins raise their own types)
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    raise errors.decoder_failure(source, f"DICOM pixel data ({transfer_syntax.name})", error) from error
  if pixels.ndim == 3:  # (H, W, 3): pydicom has converted YBR to RGB.
    pixels = _luminance(pixels)
  return pixels


def _prefer_strict_jpeg_plugin(dataset) -> None:
  """JPEG and JPEG-LS frames decode with pylibjpeg only.

  pydicom tries its plugins in turn: when pylibjpeg-libjpeg refuses damaged
  data, Pillow would decode the same frame and return an image, silently.
  """
  import pydicom.uid  # pylint: disable=g-import-not-at-top
  from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top

  transfer_syntax = dataset.file_meta.TransferSyntaxUID
  if transfer_syntax not in pydicom.uid.JPEGTransferSyntaxes and transfer_syntax not in pydicom.uid.JPEGLSTransferSyntaxes:
    return
  if _STRICT_JPEG_PLUGIN in get_decoder(transfer_syntax).available_plugins:
    dataset.pixel_array_options(decoding_plugin=_STRICT_JPEG_PLUGIN)


def _luminance(rgb: np.ndarray) -> np.ndarray:
  weights = np.array([0.299, 0.587, 0.114], np.float32)
  return rgb.astype(np.float32) @ weights


def _display_values(stored: np.ndarray, dataset) -> np.ndarray:
  """Stored values -> Modality LUT -> VOI -> MONOCHROME1 flip (bone bright).

  Stored values are integers of at most 16 bits, so the whole chain is
  evaluated once per grey level (a table of at most 65,536 entries) and
  applied with one gather, instead of several float64 passes over 3 MP.
  Float results are mapped onto uint16 by an increasing affine map: the
  stretch that follows ignores offset and scale, and 1/65,535 steps are far
  below one output grey level. Without any transform the stored array is
  returned as is.
  """
  flip = str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
  has_lut_chain = _has_modality_transform(dataset) or _has_voi(dataset)
  if not (has_lut_chain or flip):
    return stored
  if not np.issubdtype(stored.dtype, np.integer):  # Luminance of RGB data.
    return _flip(_apply_chain(stored, dataset)) if flip else _apply_chain(stored, dataset)
  low, high = (int(value) for value in (stored.min(), stored.max()))
  if high - low >= 1 << 16:  # Not a <= 16-bit image: transform the array itself.
    values = _apply_chain(stored, dataset)
    return _flip(values) if flip else values
  table = _apply_chain(np.arange(low, high + 1, dtype=np.int64), dataset)
  if flip:
    table = _flip(table)
  table = _as_uint16_table(table)
  if low == 0:
    return table[stored]
  if np.issubdtype(stored.dtype, np.unsignedinteger):
    return table[stored - stored.dtype.type(low)]  # No wrap-around: every value is >= low.
  return table[np.subtract(stored, low, dtype=np.int32)]


def _apply_chain(values: np.ndarray, dataset) -> np.ndarray:
  return _apply_voi(_apply_modality_lut(values, dataset), dataset)


def _has_modality_transform(dataset) -> bool:
  return "ModalityLUTSequence" in dataset or _rescale(dataset) != (1.0, 0.0)


def _has_voi(dataset) -> bool:
  return "VOILUTSequence" in dataset or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _rescale(dataset) -> tuple[float, float]:
  slope = dataset.get("RescaleSlope")
  intercept = dataset.get("RescaleIntercept")
  return (1.0 if slope in (None, "") else float(slope)), (0.0 if intercept in (None, "") else float(intercept))


def _apply_modality_lut(values: np.ndarray, dataset) -> np.ndarray:
  """Modality LUT Sequence, else RescaleSlope/Intercept."""
  if "ModalityLUTSequence" in dataset:
    from pydicom.pixels import apply_modality_lut  # pylint: disable=g-import-not-at-top

    return apply_modality_lut(values, dataset)
  slope, intercept = _rescale(dataset)
  if (slope, intercept) == (1.0, 0.0):
    return values
  if np.issubdtype(values.dtype, np.integer) and slope.is_integer() and intercept.is_integer():
    return values.astype(np.int64) * int(slope) + int(intercept)
  return values.astype(np.float64) * slope + intercept


def _apply_voi(values: np.ndarray, dataset) -> np.ndarray:
  """VOI LUT Sequence if present, else the first WindowCenter/Width."""
  if not _has_voi(dataset):
    return values
  from pydicom.pixels import apply_voi_lut  # pylint: disable=g-import-not-at-top

  return apply_voi_lut(values, dataset, prefer_lut=True)


def _flip(values: np.ndarray) -> np.ndarray:
  """MONOCHROME1 -> MONOCHROME2: (min + max) - x stays in range.

  Any decreasing affine map would do (the stretch that follows removes offset
  and scale); this one keeps integers integer and cannot overflow.
  """
  low, high = values.min(), values.max()
  if np.issubdtype(values.dtype, np.integer):
    return (high - values) + low
  return (float(low) + float(high)) - values


def _as_uint16_table(table: np.ndarray) -> np.ndarray:
  """Integer tables within [0, 65535] unchanged; others affinely onto it."""
  low, high = float(table.min()), float(table.max())
  if np.issubdtype(table.dtype, np.integer) and low >= 0 and high <= 65535:
    return table.astype(np.uint16)
  if high <= low:
    return np.zeros(table.shape, np.uint16)
  return np.rint((table.astype(np.float64) - low) * (65535.0 / (high - low))).astype(np.uint16)


def patient_info(dataset) -> PatientInfo:
  """Sex, birth date and study date from a header; unusable values -> None."""
  sex = str(dataset.get("PatientSex", "") or "").strip().upper()
  return PatientInfo(
      sex=sex if sex in ("M", "F") else None,
      birth_date=_parse_date(dataset.get("PatientBirthDate")),
      study_date=_parse_date(dataset.get("StudyDate")),
  )


def acquisition_info(dataset) -> Acquisition:
  """Modality, body part, view and laterality from a header; absent -> None."""
  def text(keyword):
    value = str(dataset.get(keyword, "") or "").strip().upper()
    return value or None
  return Acquisition(
      modality=text("Modality"),
      body_part=text("BodyPartExamined"),
      view_position=text("ViewPosition"),
      laterality=text("ImageLaterality") or text("Laterality"),
  )


def _parse_date(value) -> datetime.date | None:
  if value is None:
    return None
  if isinstance(value, datetime.date):
    return value
  text = str(value).strip().replace(".", "").replace("-", "")
  try:
    return datetime.datetime.strptime(text, "%Y%m%d").date()
  except ValueError:
    return None
