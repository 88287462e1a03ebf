"""DICOM outputs of a scored DICOM: a TID 1500 Structured Report and a Secondary Capture of its overlay.

A PACS shows results where the radiograph is: both objects are placed in the
source study (its patient and study modules copied, the source image
referenced), the SR as a measurement report whose observer is the model, the
Secondary Capture as the Grad-CAM overlay image (batch_inference.overlays).

UIDs are derived from the source SOP Instance UID, the model id and the
row's sex (two rows under --unknown_sex=both are two reports), so scoring the
same image with the same model again gives the same objects: a PACS stores
them once (batch_inference.dicomweb sends them with STOW-RS).

The source header is re-read here from the input (pixels skipped), so
nothing of the header has to travel through the scoring graph. Codes: bone
age and chronological age are LOINC; the quantities without a standard code
(BA - CA, SD score, its reading, the interval bounds) use the private scheme
`99BONEAGE`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import posixpath
import tarfile
import zipfile

import apache_beam as beam
import numpy as np

from bone_age import reference
from batch_inference import dicomweb
from batch_inference import overlays
from batch_inference import sources

DICOM_DIR = "dicom"
MANUFACTURER = "bone-age research software (research use only, not a medical device)"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
PRIVATE_SCHEME = "99BONEAGE"
_HEAD_BYTES = 132

# Row keys this step adds.
STATUS_KEY = "dicom_status"  # written | not_dicom | failed: <reason>
SR_PATH_KEY = "dicom_sr_path"
SC_PATH_KEY = "dicom_sc_path"
DICOMWEB_KEY = "dicomweb_status"  # stored | failed: <reason>; only with --dicomweb_url

STATUS_WRITTEN = "written"
STATUS_NOT_DICOM = "not_dicom"


class NotDicomError(ValueError):
  """The input is an image format other than DICOM (no DICOM outputs for it)."""


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
  """The model as the SR's algorithm and observer device."""
  model_id: str  # short hash of the export
  name: str
  version: str  # software version

  @property
  def device_uid(self) -> str:
    return _uid("bone-age model", self.model_id)


def model_identity(export_dir: str, export_metadata: dict, run_provenance: dict) -> ModelIdentity:
  """The model's identity: the id (sha256 of the export's weights file) and software version of the run's
  provenance (bone_age.provenance.run_provenance of this export)."""
  del export_dir  # the provenance already hashed it
  backbone = export_metadata.get("backbone") or export_metadata.get("config", {}).get("backbone", "")
  name = f"bone-age {backbone} regression".replace("  ", " ").strip()
  return ModelIdentity(model_id=str(run_provenance["model_id"]), name=name,
                       version=str(run_provenance["software_version"]))


def _split_archive_source(source: str, exists) -> tuple[str, str] | None:
  """'archive!member' -> (archive path, member name) where the archive exists; None if no such split."""
  for i, char in enumerate(source):
    if char == "!" and exists(source[:i]):
      return source[:i], source[i + 1:]
  return None


@contextlib.contextmanager
def _open_source(source: str):
  """A seekable binary file of the input: the file itself, or a member of a zip or tar archive ('archive!member').

  Only the member is read from an archive (zip members by offset), never the whole archive.
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  if FileSystems.exists(source):
    with FileSystems.open(source, compression_type="uncompressed") as f:
      yield f
    return
  split = _split_archive_source(source, FileSystems.exists)
  if split is None:
    raise FileNotFoundError(f"{source} is no longer readable")
  archive, member = split
  with FileSystems.open(archive, compression_type="uncompressed") as f:
    is_zip = f.read(4) == b"PK\x03\x04"
    f.seek(0)
    if is_zip:
      with zipfile.ZipFile(f) as zf:
        data = zf.read(member)
    else:
      with tarfile.open(fileobj=f, mode="r:*") as tf:
        extracted = tf.extractfile(member)
        if extracted is None:
          raise FileNotFoundError(f"{source}: not a regular archive member")
        data = extracted.read()
  yield io.BytesIO(data)


def read_source_header(source: str):
  """The source's DICOM header (pixels skipped) as a pydicom Dataset.

  Raises:
    NotDicomError: for a PNG, JPEG or anything else without a DICOM header.
    ValueError: for a DICOM lacking the UIDs that place outputs in its study.
  """
  import pydicom  # pylint: disable=g-import-not-at-top

  with _open_source(source) as f:
    head = f.read(_HEAD_BYTES)
    f.seek(0)
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff":
      raise NotDicomError(f"{source} is not DICOM")
    try:
      header = pydicom.dcmread(f, stop_before_pixels=True, force=head[128:132] != b"DICM")
    except Exception as e:  # pylint: disable=broad-except  (pydicom raises many kinds on non-DICOM bytes)
      raise NotDicomError(f"{source} is not DICOM ({type(e).__name__})") from e
  missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
             if not header.get(k)]
  if "SOPClassUID" in missing and "StudyInstanceUID" in missing:
    raise NotDicomError(f"{source} is not DICOM")
  if missing:
    raise ValueError(f"the source header lacks {', '.join(missing)}")
  return header


# Type 2 attributes of the patient and study modules that the outputs copy
# from the source: present (possibly empty) in every valid object, yet some
# sources omit them.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2(header):
  """A copy of the header with every copied Type 2 attribute present (empty where the source lacks it)."""
  import copy  # pylint: disable=g-import-not-at-top

  header = copy.deepcopy(header)
  for keyword in _TYPE2_COPIED:
    if keyword not in header:
      setattr(header, keyword, "")
  return header


def _uid(*parts: str) -> str:
  """A '2.25.<128-bit integer>' UID derived from the parts: the same parts, the same UID.

  (pydicom's generate_uid ignores its entropy sources when asked for a 2.25
  UID and draws a random one.)
  """
  digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
  return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def output_uids(header, model: ModelIdentity, sex: str) -> dict:
  """Deterministic series and instance UIDs of the SR and the SC of one source image and model."""
  study, sop = str(header.StudyInstanceUID), str(header.SOPInstanceUID)
  return {"sr_series": _uid(study, model.model_id, "sr-series"), "sr_sop": _uid(sop, model.model_id, sex, "sr"),
          "sc_series": _uid(study, model.model_id, "sc-series"), "sc_sop": _uid(sop, model.model_id, sex, "sc")}


def _private(value: str, meaning: str):
  from pydicom.sr.coding import Code  # pylint: disable=g-import-not-at-top
  return Code(value, PRIVATE_SCHEME, meaning)


def _months_unit():
  from pydicom.sr.coding import Code  # pylint: disable=g-import-not-at-top
  return Code("mo", "UCUM", "month")


def _measurements(row: dict, algorithm, referenced) -> list:
  """The SR's measurements: BA, CA, BA - CA, SDS and the interval, each when the row has it."""
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  from pydicom.sr.coding import Code  # pylint: disable=g-import-not-at-top

  def measurement(name, value, unit=None, by_model=True):
    return hd.sr.Measurement(name=name, value=float(value), unit=unit or _months_unit(),
                             algorithm_id=algorithm if by_model else None,
                             referenced_images=referenced if by_model else None)

  items = [measurement(Code("85151-9", "LN", "Bone age"), row["boneage_months"])]
  if row.get("interval_low_months") is not None and row.get("interval_high_months") is not None:
    items.append(measurement(_private("BA-LOW", "Bone age prediction interval lower bound"),
                             row["interval_low_months"]))
    items.append(measurement(_private("BA-HIGH", "Bone age prediction interval upper bound"),
                             row["interval_high_months"]))
  if row.get("chronological_age_months") is not None:
    items.append(measurement(Code("30525-0", "LN", "Age"), row["chronological_age_months"], by_model=False))
    items.append(measurement(_private("BA-CA", "Bone age minus chronological age"), row["ba_minus_ca_months"]))
  if row.get("sds") is not None:
    items.append(measurement(_private("BA-SDS", "Bone age SD score (Greulich-Pyle, Brush Foundation)"), row["sds"],
                             unit=Code("{SD}", "UCUM", "standard deviation")))
  return items


def _reading_evaluation(row: dict):
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  reading = row.get("sds_reading")
  value = _private(f"READ-{reading.upper()}", f"Bone age {reading}") if reading else _private(
      "READ-NONE", f"No SD score: {(row.get('sds_missing_reason') or 'unknown').replace('_', ' ')}")
  return hd.sr.QualitativeEvaluation(name=_private("BA-READ", "Bone age reading at |SDS| > 2"), value=value)


def provenance_text(row: dict) -> str:
  """The row's provenance in one line (the SC's Image Comments; the SR holds it as algorithm parameters)."""
  from bone_age import provenance  # pylint: disable=g-import-not-at-top
  fields = ", ".join(f"{key}={row.get(key)}" for key in ("input_sha256", *provenance.ROW_FIELDS))
  return f"{provenance.RESEARCH_USE_NOTICE} {fields}"


def build_sr(header, row: dict, model: ModelIdentity):
  """A TID 1500 measurement report of one row, in the source study, the model as its algorithm."""
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  from pydicom.sr.codedict import codes  # pylint: disable=g-import-not-at-top
  from pydicom.sr.coding import Code  # pylint: disable=g-import-not-at-top

  header = _with_type2(header)
  uids = output_uids(header, model, row["sex"])
  parameters = [f"model_id={model.model_id}", f"sex_used={row['sex']} ({row['sex_source']})",
                f"sds_reference={reference.TABLE_NAME}"]
  for key in ("experiment", "checkpoint_step", "checkpoint_reason", "dataset", "dataset_version", "input_sha256",
              "interval_level", "boneage_tta_sd_months", "software_version", "run_started_utc"):
    if row.get(key) is not None:
      parameters.append(f"{key}={row[key]}")
  algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=f"{model.version} model {model.model_id}",
                                            parameters=parameters, manufacturer=MANUFACTURER[:64])
  referenced = [hd.sr.SourceImageForMeasurement(str(header.SOPClassUID), str(header.SOPInstanceUID))]
  observer = hd.sr.ObserverContext(
      observer_type=codes.DCM.Device,
      observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
          uid=model.device_uid, name=f"bone-age model {model.model_id}"[:64], manufacturer_name=MANUFACTURER[:64],
          model_name=model.model_id))
  group = hd.sr.MeasurementsAndQualitativeEvaluations(
      tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(uids["sr_sop"], "tracking"), identifier="Bone age"),
      algorithm_id=algorithm,
      source_images=[hd.sr.SourceImageForMeasurementGroup(str(header.SOPClassUID), str(header.SOPInstanceUID))],
      measurements=_measurements(row, algorithm, referenced),
      qualitative_evaluations=[_reading_evaluation(row)])
  report = hd.sr.MeasurementReport(
      observation_context=hd.sr.ObservationContext(observer_device_context=observer),
      procedure_reported=Code("363680008", "SCT", "Radiographic imaging procedure"),
      imaging_measurements=[group])
  sr = hd.sr.ComprehensiveSR(
      evidence=[header], content=report[0], series_instance_uid=uids["sr_series"], series_number=SR_SERIES_NUMBER,
      sop_instance_uid=uids["sr_sop"], instance_number=1, manufacturer=MANUFACTURER[:64], is_complete=True)
  sr.SeriesDescription = "Bone age (research use only)"
  return sr


def build_sc(header, overlay_rgb: np.ndarray, row: dict, model: ModelIdentity):
  """The overlay (RGB) as a Secondary Capture in the source study, referencing the source image."""
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import Dataset  # pylint: disable=g-import-not-at-top

  header = _with_type2(header)
  uids = output_uids(header, model, row["sex"])
  sc = hd.sc.SCImage.from_ref_dataset(
      ref_dataset=header, pixel_array=np.ascontiguousarray(overlay_rgb, dtype=np.uint8),
      photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
      patient_orientation=("L", "F"), series_instance_uid=uids["sc_series"], series_number=SC_SERIES_NUMBER,
      sop_instance_uid=uids["sc_sop"], instance_number=1, manufacturer=MANUFACTURER[:64],
      transfer_syntax_uid="1.2.840.10008.1.2.1")
  sc.SeriesDescription = "Bone age Grad-CAM overlay (research use only)"
  sc.ImageType = ["DERIVED", "SECONDARY"]
  sc.BurnedInAnnotation = "YES"
  # Type 2C for a paired body part (a hand): the source's laterality, empty when it does not say.
  sc.Laterality = header.get("Laterality") or header.get("ImageLaterality") or ""
  sc.DerivationDescription = f"Grad-CAM overlay and results of bone-age model {model.model_id}"
  sc.ImageComments = provenance_text(row)
  source_ref = Dataset()
  source_ref.ReferencedSOPClassUID = header.SOPClassUID
  source_ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
  sc.SourceImageSequence = [source_ref]
  return sc


def dataset_bytes(dataset) -> bytes:
  out = io.BytesIO()
  dataset.save_as(out, enforce_file_format=True)
  return out.getvalue()


def _write(path: str, data: bytes) -> None:
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  with FileSystems.create(path, mime_type="application/dicom") as f:
    f.write(data)


def _read_png_rgb(path: str) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  with FileSystems.open(path, compression_type="uncompressed") as f:
    encoded = np.frombuffer(f.read(), dtype=np.uint8)
  bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
  if bgr is None:
    raise ValueError(f"overlay {path} cannot be decoded")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class WriteDicomOutputsFn(beam.DoFn):
  """Row -> the same row with its DICOM outputs written (and sent), their paths and status added.

  Runs after duplicate ids are settled, so only kept rows get outputs. A
  non-DICOM input gets `dicom_status=not_dicom`; a DICOM whose outputs cannot
  be made or sent keeps its row (the bone age is still valid) and says why in
  `dicom_status` / `dicomweb_status`.
  """

  def __init__(self, run_dir: str, model: ModelIdentity, dicomweb_url: str | None = None):
    super().__init__()
    self._run_dir = run_dir
    self._model = model
    self._dicomweb_url = dicomweb_url
    self._written = beam.metrics.Metrics.counter("boneage", "dicom_outputs_written")
    self._failed = beam.metrics.Metrics.counter("boneage", "dicom_outputs_failed")

  def setup(self):
    self._sender = dicomweb.StowSender(self._dicomweb_url) if self._dicomweb_url else None

  def process(self, row: dict):
    row = dict(row)
    try:
      header = read_source_header(sources.input_path(row["id"], row["file"]))
    except NotDicomError:
      row[STATUS_KEY] = STATUS_NOT_DICOM
      yield row
      return
    except Exception as e:  # pylint: disable=broad-except  (one unreadable header must not stop the job)
      row[STATUS_KEY] = f"failed: source header unreadable: {type(e).__name__}: {e}"[:500]
      self._failed.inc()
      yield row
      return
    stem = overlays.overlay_file_name(row["id"], sources.input_path(row["id"], row["file"]),
                                      f"-{row['sex']}")[:-len(".png")]
    datasets = []
    try:
      datasets.append(build_sr(header, row, self._model))
      row[SR_PATH_KEY] = f"{DICOM_DIR}/{stem}-sr.dcm"
      if row.get("overlay_path"):
        overlay = _read_png_rgb(posixpath.join(self._run_dir, row["overlay_path"]))
        datasets.append(build_sc(header, overlay, row, self._model))
        row[SC_PATH_KEY] = f"{DICOM_DIR}/{stem}-sc.dcm"
      for dataset, key in zip(datasets, (SR_PATH_KEY, SC_PATH_KEY)):
        _write(posixpath.join(self._run_dir, row[key]), dataset_bytes(dataset))
      row[STATUS_KEY] = STATUS_WRITTEN
      self._written.inc()
    except Exception as e:  # pylint: disable=broad-except  (the row's bone age stands without its DICOM outputs)
      row[STATUS_KEY] = f"failed: {type(e).__name__}: {e}"[:500]
      row.pop(SR_PATH_KEY, None)
      row.pop(SC_PATH_KEY, None)
      self._failed.inc()
      yield row
      return
    if self._sender is not None:
      row[DICOMWEB_KEY] = self._sender.send(datasets)
    yield row
