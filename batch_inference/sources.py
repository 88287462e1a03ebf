"""Input files and archives -> (id, source, bytes), streamed and checked.

Everything the user points `--inputs` at is read through Beam's filesystems
(local paths, gs://, ...). Archives (.zip, .tar, .tar.gz) are read as streams:
one member's bytes in memory at a time, nothing extracted to disk, and member
names are only ever used as ids (never as paths). Members that could hurt the
job or the machine (links, special files, nested archives, oversized members)
are refused with a reason instead of being read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator

import apache_beam as beam

from bone_age import errors
from beam_pipelines import rejects

TALLY_TAG = "read_tally"  # per input file: how many inputs (images + refusals) it gave
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a 16-bit 4k x 4k DICOM is ~32 MB; far above any radiograph
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_ZIP_SUFFIXES = (".zip",)
# Anything that looks like an archive inside an archive is refused, not recursed into.
_NESTED_SUFFIXES = _TAR_SUFFIXES + _ZIP_SUFFIXES + (".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".tbz2", ".txz")
_HEAD_BYTES = 512


@dataclasses.dataclass(frozen=True)
class Refusal:
  """An input refused while reading, with the id it would have had."""
  error: errors.InputError
  example_id: str | None


def strip_image_suffix(name: str) -> str:
  """The file stem when the suffix is an image suffix, else the whole name.

  DICOM files are often named by UID ('1.2.840.113619.2.55'): cutting at the
  last dot would make different files share an id.
  """
  base = posixpath.basename(name.replace("\\", "/"))
  lower = base.lower()
  for suffix in IMAGE_SUFFIXES:
    if lower.endswith(suffix) and len(base) > len(suffix):
      return base[:-len(suffix)]
  return base


def _archive_kind_from_magic(head: bytes) -> str | None:
  if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
    return "zip"
  if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
    return "tar"
  return None


def _looks_like_archive(name: str, head: bytes) -> bool:
  lower = name.lower()
  if lower.endswith(_NESTED_SUFFIXES):
    return True
  return _archive_kind_from_magic(head) is not None or head.startswith(
      (b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\x28\xb5\x2f\xfd"))


def archive_kind(path: str, head: bytes) -> str | None:
  """'zip', 'tar' (plain or gzipped) or None for a top-level input file.

  The suffix decides first; a file without a known suffix is sniffed, so an
  extensionless DICOM goes to the decoder and an extensionless zip is opened.
  """
  lower = path.lower()
  if lower.endswith(IMAGE_SUFFIXES):
    return None
  if lower.endswith(_ZIP_SUFFIXES):
    return "zip"
  if lower.endswith(_TAR_SUFFIXES):
    return "tar"
  return _archive_kind_from_magic(head)


def member_id(archive_path: str, member_name: str) -> str:
  """Stable id of an archive member: archive file name + '!' + member name."""
  return f"{posixpath.basename(archive_path)}!{member_name}"


def _refuse(source: str, reason: str, detail: str, example_id: str | None) -> Refusal:
  return Refusal(errors.InputError(source, reason, detail), example_id)


def _read_limited(stream, limit_bytes: int) -> bytes | None:
  """At most limit_bytes from stream; None if it holds more (sizes in headers can lie)."""
  data = stream.read(limit_bytes + 1)
  return None if len(data) > limit_bytes else data


def _member_problem(name: str, size_bytes: int, max_member_bytes: int, source: str, example_id: str) -> Refusal | None:
  if name.lower().endswith(_NESTED_SUFFIXES):
    return _refuse(source, errors.NESTED_ARCHIVE, "archives inside archives are not opened", example_id)
  if size_bytes > max_member_bytes:
    return _refuse(source, errors.MEMBER_TOO_LARGE,
                   f"{size_bytes} bytes is over --max_member_bytes={max_member_bytes}", example_id)
  return None


def _checked_member(name: str, data: bytes | None, max_member_bytes: int, source: str, example_id: str):
  if data is None:
    return _refuse(source, errors.MEMBER_TOO_LARGE,
                   f"holds more than --max_member_bytes={max_member_bytes} bytes", example_id)
  if _looks_like_archive(name, data[:_HEAD_BYTES]):
    return _refuse(source, errors.NESTED_ARCHIVE, "archives inside archives are not opened", example_id)
  return (example_id, source, data)


def iter_tar(fileobj, archive_path: str, max_member_bytes: int) -> Iterator[tuple[str, str, bytes] | Refusal]:
  """Streams a (gzipped) tar: one member in memory at a time.

  Stream mode ('r|*') reads forward only, so a tar on GCS is never seeked or
  downloaded whole; the TarFile's list of seen headers is cleared after each
  member so memory stays flat however many members the archive holds.
  """
  seen = set()
  count = 0
  try:
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
      for member in tar:
        tar.members = []  # stream mode keeps every header otherwise
        name = member.name
        example_id = member_id(archive_path, name)
        source = f"{archive_path}!{name}"
        count += 1
        if member.isdir():
          count -= 1  # directories are structure, not inputs
          continue
        if name in seen:
          yield _refuse(source, errors.DUPLICATE_ID, "the archive holds this member name twice", example_id)
          continue
        seen.add(name)
        if member.issym() or member.islnk():
          kind = "symbolic" if member.issym() else "hard"
          yield _refuse(source, errors.UNSAFE_ARCHIVE_MEMBER, f"{kind} link to {member.linkname!r} is not followed",
                        example_id)
          continue
        if not member.isfile():
          yield _refuse(source, errors.UNSAFE_ARCHIVE_MEMBER, "not a regular file (device, fifo or other special member)",
                        example_id)
          continue
        problem = _member_problem(name, member.size, max_member_bytes, source, example_id)
        if problem is not None:
          yield problem
          continue
        stream = tar.extractfile(member)
        yield _checked_member(name, _read_limited(stream, max_member_bytes), max_member_bytes, source, example_id)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    detail = f"cannot read the archive after {count} member(s): {type(e).__name__}: {e}"
    yield _refuse(archive_path, errors.UNREADABLE_ARCHIVE, detail, posixpath.basename(archive_path))


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
  return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def iter_zip(fileobj, archive_path: str, max_member_bytes: int) -> Iterator[tuple[str, str, bytes] | Refusal]:
  """Reads a zip member by member (the central directory, then one member's bytes)."""
  try:
    archive = zipfile.ZipFile(fileobj)
    infos = archive.infolist()
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
    yield _refuse(archive_path, errors.UNREADABLE_ARCHIVE, f"not a readable zip: {type(e).__name__}: {e}",
                  posixpath.basename(archive_path))
    return
  seen = set()
  with archive:
    for info in infos:
      if info.is_dir():
        continue
      name = info.filename
      example_id = member_id(archive_path, name)
      source = f"{archive_path}!{name}"
      if name in seen:
        yield _refuse(source, errors.DUPLICATE_ID, "the archive holds this member name twice", example_id)
        continue
      seen.add(name)
      if _is_zip_symlink(info):
        yield _refuse(source, errors.UNSAFE_ARCHIVE_MEMBER, "symbolic link is not followed", example_id)
        continue
      if info.flag_bits & 0x1:
        yield _refuse(source, errors.UNREADABLE_ARCHIVE, "encrypted member", example_id)
        continue
      problem = _member_problem(name, info.file_size, max_member_bytes, source, example_id)
      if problem is not None:
        yield problem
        continue
      try:
        with archive.open(info) as stream:
          data = _read_limited(stream, max_member_bytes)
      except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        yield _refuse(source, errors.UNREADABLE_ARCHIVE, f"cannot read the member: {type(e).__name__}: {e}", example_id)
        continue
      yield _checked_member(name, data, max_member_bytes, source, example_id)


def iter_file_inputs(path: str, size_bytes: int, open_fn, max_member_bytes: int):
  """All inputs of one matched file: itself, or each member when it is an archive.

  Args:
    path: The file's full path (local or gs://); it becomes the source.
    size_bytes: Its size from the listing.
    open_fn: () -> a binary, seekable file object (uncompressed view).
    max_member_bytes: Size limit of one image (plain file or member).

  Yields:
    (id, source, bytes) for each candidate image, or a Refusal.
  """
  with open_fn() as f:
    head = f.read(_HEAD_BYTES)
    kind = archive_kind(path, head)
    if kind is None:
      example_id = strip_image_suffix(path)
      if size_bytes > max_member_bytes:
        yield _refuse(path, errors.MEMBER_TOO_LARGE,
                      f"{size_bytes} bytes is over --max_member_bytes={max_member_bytes}", example_id)
        return
      rest = _read_limited(f, max_member_bytes - len(head)) if len(head) <= max_member_bytes else None
      data = None if rest is None else head + rest
      if data is None:
        yield _refuse(path, errors.MEMBER_TOO_LARGE, f"holds more than --max_member_bytes={max_member_bytes} bytes",
                      example_id)
      else:
        yield (example_id, path, data)
      return
    f.seek(0)
    reader = iter_zip if kind == "zip" else iter_tar
    yield from reader(f, path, max_member_bytes)


class ExpandInputsFn(beam.DoFn):
  """ReadableFile -> (id, source, bytes) per image; refusals to the rejects output.

  Also emits, on TALLY_TAG, how many inputs each file gave, so the job can
  check read = scored + rejected without trusting its own outcome counts.
  """

  def __init__(self, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
    super().__init__()
    self._max_member_bytes = int(max_member_bytes)

  def process(self, readable_file):
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top

    path = readable_file.metadata.path
    size_bytes = readable_file.metadata.size_in_bytes
    count = 0
    try:
      items = iter_file_inputs(path, size_bytes,
                               lambda: readable_file.open(compression_type=CompressionTypes.UNCOMPRESSED),
                               self._max_member_bytes)
      for item in items:
        count += 1
        if isinstance(item, Refusal):
          yield rejects.reject(item.error, item.example_id)
        else:
          yield item
    except (OSError, IOError) as e:
      # The file vanished or cannot be opened: one refusal for the file itself.
      logging.warning("Cannot read %s: %r", path, e)
      count += 1
      yield rejects.reject(errors.InputError(path, errors.MISSING_FILE, f"cannot read the file: {e}"),
                           strip_image_suffix(path))
    yield beam.pvalue.TaggedOutput(TALLY_TAG, count)


def _is_directory(path: str) -> bool:
  return path.endswith(("/", "\\")) or ("://" not in path and os.path.isdir(path))


class MatchPatternsFn(beam.DoFn):
  """Pattern -> FileMetadata per matched file; a pattern matching nothing is a reject.

  fileio.MatchAll would fail the whole job on a literal path that does not
  exist; here it becomes one `missing_file` reject that counts as one input.
  """

  def process(self, pattern: str):
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

    try:
      metadata_list = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # pylint: disable=broad-except  (BeamIOError, bad scheme, permissions)
      metadata_list = []
      logging.warning("Cannot list %s: %r", pattern, e)
    files = [m for m in metadata_list if not _is_directory(m.path)]
    if not files:
      yield rejects.reject(errors.InputError(pattern, errors.MISSING_FILE, "the pattern matches no file"), None)
      yield beam.pvalue.TaggedOutput(TALLY_TAG, 1)
      return
    yield from sorted(files, key=lambda m: m.path)
