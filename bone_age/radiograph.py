"""The decoded radiograph and what its header says, shared by every reader.

These dataclasses sit apart from the decoders so that the DICOM reader and
the PNG/JPEG dispatcher (`bone_age.imaging`) can both build them without
importing each other.
"""

import dataclasses
import datetime

import numpy as np


@dataclasses.dataclass(frozen=True)
class PatientInfo:
  """What a DICOM header says about the patient: never names or identifiers."""
  sex: str | None  # "M", "F", or None when unknown / other.
  birth_date: datetime.date | None
  study_date: datetime.date | None


@dataclasses.dataclass(frozen=True)
class Acquisition:
  """What a DICOM header says about the image: what was radiographed, and how.

  Each field is the header's value, stripped and upper-cased, or None when
  the header lacks it; the quality gate decides what the values mean.
  """
  modality: str | None  # (0008,0060), e.g. "CR", "DX".
  body_part: str | None  # BodyPartExamined (0018,0015), e.g. "HAND".
  view_position: str | None  # (0018,5101), e.g. "PA".
  laterality: str | None  # ImageLaterality (0020,0062), else Laterality (0020,0060): "L", "R", "B", "U".


@dataclasses.dataclass(frozen=True, eq=False)
class Radiograph:
  """A decoded radiograph in the one representation every consumer uses.

  Attributes:
    pixels: (H, W) uint8, bone bright, stretched by
      `bone_age.imaging.normalize_to_uint8`.
    source_format: "png", "jpeg" or "dicom".
    patient: PatientInfo from the DICOM header; None for PNG and JPEG.
    acquisition: Acquisition from the DICOM header; None for PNG and JPEG.
  """
  pixels: np.ndarray
  source_format: str
  patient: PatientInfo | None
  acquisition: Acquisition | None = None
