"""A DICOM writer for tests and phantoms: Secondary Capture, uncompressed.

Kept apart from the reader (`bone_age.dicom`): production code only reads
DICOM; phantoms and tests write it to exercise the reader.
"""

import datetime
import hashlib
import io

import numpy as np

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_VALID_SEXES = ("M", "F", "O")


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
