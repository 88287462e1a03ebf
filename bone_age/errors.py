"""The one error type for inputs a user can get wrong.

Every job (dataset build, scoring) turns an `InputError` into a row of its
rejects file, so the `reason` is a short stable code (for counters and
grouping) and the message names the input and says what is wrong in words.
"""

# Stable reason codes. Jobs count rejects by these strings.
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
TRUNCATED = "truncated"  # the byte stream ends before its structure says it should
CORRUPT_IMAGE = "corrupt_image"  # complete, but the decoder found damaged data (CRC, entropy coding)
NO_PIXEL_DATA = "no_pixel_data"  # a complete DICOM object without a pixel data element
DECODER_ERROR = "decoder_error"  # a decoder refused a complete, well-formed stream
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


# Words in libjpeg's (and libjpeg-turbo's) messages for damaged entropy-coded data.
_DAMAGED_DATA_WORDS = ("corrupt", "premature end", "huffman", "out of sync")


def decoder_failure(source: str, what: str, error: Exception) -> InputError:
  """A decoder's exception as CORRUPT_IMAGE (damaged data) or DECODER_ERROR.

  Args:
    source: The input's name.
    what: The stream that failed, for the message ("JPEG", "DICOM pixel data").
    error: The decoder's exception; its message is kept in the detail.
  """
  message = f"{type(error).__name__}: {str(error).strip()}"
  if isinstance(error, EOFError):
    return InputError(source, TRUNCATED, f"{what} ends early: {message}")
  damaged = any(word in message.lower() for word in _DAMAGED_DATA_WORDS)
  return InputError(source, CORRUPT_IMAGE if damaged else DECODER_ERROR, f"{what} cannot be decoded: {message}")
