"""The one error type for inputs a user can get wrong.

Every job (dataset build, scoring) turns an `InputError` into a row of its
rejects file, so the `reason` is a short stable code (for counters and
grouping) and the message names the input and says what is wrong in words.
"""

# Stable reason codes. Jobs count rejects by these strings.
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
TRUNCATED = "truncated"
NOT_AN_IMAGE = "not_an_image"
DECOMPRESSION_BOMB = "decompression_bomb"
UNSUPPORTED_DICOM = "unsupported_dicom"
INVALID_LABEL = "invalid_label"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_SEX = "unknown_sex"
UNSAFE_ARCHIVE_MEMBER = "unsafe_archive_member"
UNREADABLE_ARCHIVE = "unreadable_archive"
MEMBER_TOO_LARGE = "member_too_large"
NESTED_ARCHIVE = "nested_archive"
UNSUPPORTED_FORMAT = "unsupported_format"
LISTING_FAILED = "listing_failed"  # listing a pattern raised (permissions, network, credentials)
EMPTY_ARCHIVE = "empty_archive"  # a zip or tar holding no file at all


class InputError(ValueError):
  """An input that cannot be used, with the input's name and the reason.

  Attributes:
    source: The input as the user would recognise it (path, archive member,
      label-table row).
    reason: One of the reason codes above.
    detail: A human sentence saying what is wrong.
  """

  def __init__(self, source: str, reason: str, detail: str):
    super().__init__(f"{source}: {detail} [{reason}]")
    self.source = source
    self.reason = reason
    self.detail = detail

  def __reduce__(self):
    # Beam pickles exceptions between workers; keep all three fields.
    return (InputError, (self.source, self.reason, self.detail))

  def to_record(self, example_id: str | None = None) -> dict:
    """The JSON-lines rejects record: id, source, reason and detail."""
    return {
        "id": example_id,
        "source": self.source,
        "reason": self.reason,
        "detail": self.detail,
    }
