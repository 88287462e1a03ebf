"""DICOM in and out: pixels and patient facts from a header, and a test writer.

`decode_dicom` turns a single-frame grayscale (or RGB) DICOM into the values a
viewer would display before its final contrast stretch: stored values ->
Modality LUT (RescaleSlope/Intercept) -> VOI LUT or window -> MONOCHROME1
flipped so bone is bright. `bone_age.imaging.normalize_to_uint8` does the
stretch, the same one as for PNG and JPEG.

pydicom is imported inside the functions: importing this module stays cheap
for Beam workers that never see a DICOM.
"""

import datetime
import hashlib
import io
import warnings

import numpy as np

from bone_age import errors
from bone_age import imaging

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_VALID_SEXES = ("M", "F", "O")


def decode_dicom(data: bytes, source: str, *,
                 max_pixels: int) -> tuple[np.ndarray, imaging.PatientInfo, imaging.Acquisition]:
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
    return _decode_dataset(_read_dataset(data, source), source, max_pixels)


def _decode_dataset(dataset, source: str,
                    max_pixels: int) -> tuple[np.ndarray, imaging.PatientInfo, imaging.Acquisition]:
  try:
    _check_image_header(dataset, source, max_pixels)
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


def _read_dataset(data: bytes, source: str):
  import pydicom  # pylint: disable=g-import-not-at-top

  if data[:4] == b"DICM":  # Preamble stripped but prefix kept: put the preamble back.
    data = bytes(128) + data
  try:
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
  except Exception as error:  # pylint: disable=broad-except  (pydicom raises many types on garbage)
    raise errors.InputError(source, errors.NOT_AN_IMAGE,
                            f"not a readable DICOM file ({type(error).__name__}: {error})") from error
  _ensure_transfer_syntax(dataset)
  return dataset


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
  """Whether the header says pixel data should follow (so its absence is a cut)."""
  sop_class = str(dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", ""))
  return "Rows" in dataset or "Image" in _uid_name(sop_class)


def _uid_name(uid: str) -> str:
  import pydicom.uid  # pylint: disable=g-import-not-at-top

  try:
    return pydicom.uid.UID(uid).name
  except Exception:  # pylint: disable=broad-except
    return ""


def _check_image_header(dataset, source: str, max_pixels: int) -> None:
  if "PixelData" not in dataset:
    if _is_image_object(dataset):
      raise errors.InputError(source, errors.TRUNCATED,
                              "DICOM image has no complete pixel data element (the file is cut short)")
    raise errors.InputError(source, errors.NOT_AN_IMAGE, "DICOM file holds no pixel data (not an image object)")
  for keyword in ("Rows", "Columns", "BitsAllocated"):
    if dataset.get(keyword) is None:
      raise errors.InputError(source, errors.UNSUPPORTED_DICOM, f"DICOM image lacks the {keyword} attribute")
  rows, columns = int(dataset.Rows), int(dataset.Columns)
  imaging.check_pixel_count(source, rows, columns, max_pixels, "DICOM Rows/Columns")
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
    _check_decoder_available(transfer_syntax, source)
  else:
    _check_uncompressed_length(dataset, source)


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
  """Stored values, masked to BitsStored and sign-extended by pydicom."""
  try:
    pixels = dataset.pixel_array
  except Exception as error:  # pylint: disable=broad-except  (decoder plugins raise their own types)
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    reason = errors.TRUNCATED if _looks_truncated(error) else errors.UNSUPPORTED_DICOM
    raise errors.InputError(source, reason,
                            f"DICOM pixel data ({transfer_syntax.name}) cannot be decoded: "
                            f"{type(error).__name__}: {error}") from error
  if pixels.ndim == 3:  # (H, W, 3): pydicom has converted YBR to RGB.
    pixels = _luminance(pixels)
  return pixels


def _looks_truncated(error: Exception) -> bool:
  text = str(error).lower()
  return isinstance(error, EOFError) or any(
      word in text for word in ("truncat", "end of", "ended", "not enough", "less than", "insufficient"))


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


def patient_info(dataset) -> imaging.PatientInfo:
  """Sex, birth date and study date from a header; unusable values -> None."""
  sex = str(dataset.get("PatientSex", "") or "").strip().upper()
  return imaging.PatientInfo(
      sex=sex if sex in ("M", "F") else None,
      birth_date=_parse_date(dataset.get("PatientBirthDate")),
      study_date=_parse_date(dataset.get("StudyDate")),
  )


def acquisition_info(dataset) -> imaging.Acquisition:
  """Modality, body part, view and laterality from a header; absent -> None."""
  def text(keyword):
    value = str(dataset.get(keyword, "") or "").strip().upper()
    return value or None
  return imaging.Acquisition(
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


# ------------------------------------------------------------------ writing


def encode_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                 sex: str | None = None, birth_date: datetime.date | None = None,
                 study_date: datetime.date | None = None, patient_name: str | None = None,
                 window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                 preamble: bool = True) -> bytes:
  """Writes a Secondary-Capture DICOM (uncompressed, explicit VR little endian).

  The pixels are written as the stored values, exactly as given: with
  photometric="MONOCHROME1" pass the inverted image (a viewer displays
  max - value), as a MONOCHROME1 detector would store it. UIDs are derived
  from the content, so the same arguments give the same bytes.

  Args:
    pixels: (H, W) uint8 (8 bits allocated), uint16 or int16 (16 allocated).
    photometric: "MONOCHROME2" (high = bright) or "MONOCHROME1" (high = dark).
    bits_stored: Significant bits; default all allocated bits. Values must fit.
    sex: PatientSex "M", "F", "O" or None (written empty).
    birth_date: PatientBirthDate.
    study_date: StudyDate.
    patient_name: PatientName (readers must never copy it into outputs).
    window: (WindowCenter, WindowWidth) in rescaled units.
    rescale: (RescaleSlope, RescaleIntercept).
    preamble: False writes neither the 128-byte preamble nor 'DICM' (the file
      meta group still comes first), as some older tools do.

  Returns:
    The file's bytes.
  """
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom import uid as dicom_uid  # pylint: disable=g-import-not-at-top
  import pydicom  # pylint: disable=g-import-not-at-top

  pixels = np.asarray(pixels)
  bits_allocated, bits_stored = _validate_encode_args(pixels, photometric, bits_stored, sex)
  content_hash = hashlib.sha256(pixels.tobytes())
  content_hash.update(repr((pixels.shape, photometric, bits_stored, sex, birth_date, study_date, patient_name,
                            window, rescale)).encode())
  study_uid, series_uid, instance_uid = (
      dicom_uid.generate_uid(entropy_srcs=[content_hash.hexdigest(), part]) for part in ("study", "series", "sop"))

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = dicom_uid.SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = instance_uid
  meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
  dataset = Dataset()
  dataset.file_meta = meta
  dataset.SpecificCharacterSet = "ISO_IR 100"
  dataset.ImageType = ["DERIVED", "SECONDARY"]
  dataset.SOPClassUID = meta.MediaStorageSOPClassUID
  dataset.SOPInstanceUID = instance_uid
  dataset.StudyDate = study_date.strftime("%Y%m%d") if study_date else ""
  dataset.Modality = "OT"
  dataset.ConversionType = "WSD"
  dataset.BodyPartExamined = "HAND"
  dataset.PatientName = patient_name or ""
  dataset.PatientID = ""
  dataset.PatientBirthDate = birth_date.strftime("%Y%m%d") if birth_date else ""
  dataset.PatientSex = sex or ""
  dataset.StudyInstanceUID = study_uid
  dataset.SeriesInstanceUID = series_uid
  dataset.StudyID = ""
  dataset.SeriesNumber = 1
  dataset.InstanceNumber = 1
  dataset.SamplesPerPixel = 1
  dataset.PhotometricInterpretation = photometric
  dataset.Rows, dataset.Columns = pixels.shape
  dataset.BitsAllocated = bits_allocated
  dataset.BitsStored = bits_stored
  dataset.HighBit = bits_stored - 1
  dataset.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
  if window is not None:
    dataset.WindowCenter, dataset.WindowWidth = (_decimal_string(value) for value in window)
  if rescale is not None:
    dataset.RescaleSlope, dataset.RescaleIntercept = (_decimal_string(value) for value in rescale)
  dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()

  buffer = io.BytesIO()
  if preamble:
    dataset.preamble = b"\x00" * 128
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
  else:
    dataset.preamble = None
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=False)
  return buffer.getvalue()


def _decimal_string(value: float) -> str:
  """A DS value (at most 16 characters)."""
  text = f"{float(value):.10g}"
  return text if len(text) <= 16 else f"{float(value):.8e}"


def _validate_encode_args(pixels: np.ndarray, photometric: str, bits_stored: int | None,
                          sex: str | None) -> tuple[int, int]:
  if pixels.ndim != 2 or pixels.size == 0:
    raise ValueError(f"pixels must be a non-empty (H, W) array, got shape {pixels.shape}")
  if pixels.dtype == np.uint8:
    bits_allocated = 8
  elif pixels.dtype in (np.uint16, np.int16):
    bits_allocated = 16
  else:
    raise ValueError(f"pixels must be uint8, uint16 or int16, got {pixels.dtype}")
  if photometric not in _MONOCHROME:
    raise ValueError(f"photometric must be one of {_MONOCHROME}, got {photometric!r}")
  if sex is not None and sex not in _VALID_SEXES:
    raise ValueError(f"sex must be one of {_VALID_SEXES} or None, got {sex!r}")
  bits_stored = bits_allocated if bits_stored is None else int(bits_stored)
  if not 1 <= bits_stored <= bits_allocated:
    raise ValueError(f"bits_stored must be in [1, {bits_allocated}] for {pixels.dtype}, got {bits_stored}")
  if pixels.dtype == np.int16:
    low, high = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
  else:
    low, high = 0, (1 << bits_stored) - 1
  if pixels.min() < low or pixels.max() > high:
    raise ValueError(f"pixel values [{pixels.min()}, {pixels.max()}] do not fit {bits_stored} stored bits")
  return bits_allocated, bits_stored
