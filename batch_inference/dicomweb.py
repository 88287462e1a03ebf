"""Sends DICOM outputs to a PACS with STOW-RS (DICOMweb), through dicomweb-client.

`--dicomweb_url` is the DICOMweb root of the PACS (Orthanc:
http://host:8042/dicom-web). Each row's SR and Secondary Capture go in one
STOW-RS request to their study. Their UIDs are deterministic
(batch_inference.dicom_outputs), so sending the same results again stores
nothing new. A PACS that refuses or cannot be reached does not stop the job:
the row says why in `dicomweb_status`.
"""

from __future__ import annotations

STORED = "stored"
DEFAULT_TIMEOUT_S = 30.0


def failed_sops(response) -> list[str]:
  """SOP Instance UIDs the STOW-RS response lists as failed (FailedSOPSequence), with their reason."""
  if response is None or "FailedSOPSequence" not in response:
    return []
  return [f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
          for item in response.FailedSOPSequence]


class StowSender:
  """One DICOMweb client per worker; `send` never raises, it returns the row's dicomweb_status."""

  def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    from dicomweb_client.api import DICOMwebClient  # pylint: disable=g-import-not-at-top
    self._client = DICOMwebClient(url=url.rstrip("/"), timeout=timeout_s)

  def send(self, datasets: list) -> str:
    """Stores the datasets (one study) with STOW-RS: 'stored' or 'failed: <why>'."""
    if not datasets:
      return STORED
    try:
      response = self._client.store_instances(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))
    except Exception as e:  # pylint: disable=broad-except  (HTTP, connection and timeout errors alike)
      return f"failed: {type(e).__name__}: {e}"[:500]
    failed = failed_sops(response)
    return f"failed: refused {', '.join(failed)}"[:500] if failed else STORED
