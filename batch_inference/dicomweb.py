"""Sends DICOM outputs to a PACS with STOW-RS (DICOMweb), through dicomweb-client.

`--dicomweb_url` is the DICOMweb root of the PACS (Orthanc:
http://host:8042/dicom-web). Each row's SR and Secondary Capture go in one
STOW-RS request to their study. Their UIDs are deterministic
(batch_inference.dicom_outputs), so sending the same results again stores
nothing new. A PACS that refuses or cannot be reached does not stop the job:
the row says why in `dicomweb_status`.

Retries are bounded (a few attempts with a short exponential back-off) and a
PACS that cannot be connected to at all is not tried again by the same
worker: every later row fails at once, naming the first error. Without that,
each row of a large archive would wait out the whole back-off against a PACS
that is down; a rerun sends what failed (the UIDs make it idempotent).
"""

from __future__ import annotations

STORED = "stored"
DEFAULT_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3  # per request; dicomweb-client backs off exponentially between them
BACKOFF_MULTIPLIER_MS = 250  # waits 0.5 s, then 1 s


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
    self._client.set_http_retry_params(max_attempts=MAX_ATTEMPTS, wait_exponential_multiplier=BACKOFF_MULTIPLIER_MS)
    self._unreachable: str | None = None  # the first connection error, once the PACS could not be reached

  def send(self, datasets: list) -> str:
    """Stores the datasets (one study) with STOW-RS: 'stored' or 'failed: <why>'."""
    if not datasets:
      return STORED
    if self._unreachable:
      return f"failed: not sent, the PACS was unreachable earlier in this worker ({self._unreachable})"[:500]
    import requests  # pylint: disable=g-import-not-at-top  (dicomweb-client's own transport)
    try:
      response = self._client.store_instances(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))
    except requests.ConnectionError as e:
      self._unreachable = f"{type(e).__name__}: {e}"[:300]
      return f"failed: {self._unreachable}"[:500]
    except Exception as e:  # pylint: disable=broad-except  (HTTP and timeout errors alike)
      return f"failed: {type(e).__name__}: {e}"[:500]
    failed = failed_sops(response)
    return f"failed: refused {', '.join(failed)}"[:500] if failed else STORED
