"""Input files and archives -> small member references -> bytes, read on any worker.

Everything the user points `--inputs` at is read through Beam's filesystems
(local paths, gs://, ...) in two steps, so one archive can be scored by many
workers:

1. Listing (`ListMembersFn`, one file per call): a plain image is one
   reference; a zip gives one reference per member from its central
   directory; an uncompressed tar is walked header by header (data is seeked
   over, not read) recording each member's data offset and size. A
   compressed tar cannot seek, so it is streamed one member at a time and its
   references carry the member's bytes. Each reference also names its read
   chunk (`chunk`): consecutive members of one archive share a chunk.
2. Reading (`ReadMembersFn`, after the references have been shuffled and
   grouped by chunk): each chunk opens its archive once (a zip's central
   directory is read once per archive per bundle) and reads its members by
   byte range, one member's bytes in memory at a time.

Member names are only ever used as ids, never as paths. Members that could
hurt the job or the machine (links, special files, nested archives,
oversized members) are refused with a reason at listing time; the read step
checks again what only the bytes can show (nested archives by magic, members
larger than their header says). Names that are not valid UTF-8 (a local file
or tar member named with raw bytes) are scored under an escaped id and
source: each undecodable byte becomes `\\xNN` (`display_name`).
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

TALLY_TAG = "read_tally"  # per input file or pattern: how many inputs (images + refusals) it gave
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a 16-bit 4k x 4k DICOM is ~32 MB; far above any radiograph
DEFAULT_MEMBERS_PER_READ = 32  # archive members per read chunk: amortises the open, keeps chunks spreadable
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_ZIP_SUFFIXES = (".zip",)
# Anything that looks like an archive inside an archive is refused, not recursed into.
_NESTED_SUFFIXES = _TAR_SUFFIXES + _ZIP_SUFFIXES + (".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".tbz2", ".txz")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_HEAD_BYTES = 512
_OPEN_ARCHIVES_PER_BUNDLE = 4

# How a reference is read.
KIND_FILE = "file"  # a whole plain file
KIND_ZIP = "zip"  # a zip member, by its index in the central directory
KIND_TAR = "tar"  # an uncompressed tar member, by data offset and size
KIND_STREAMED = "streamed"  # a compressed tar member whose bytes travel with the reference


@dataclasses.dataclass(frozen=True)
class FileRef:
  """One matched file. `path` is the raw name (it may hold surrogates of non-UTF-8 bytes)."""
  path: str
  size_bytes: int


@dataclasses.dataclass(frozen=True)
class MemberRef:
  """Where one input image lies, small enough to shuffle.

  Attributes:
    path: The raw path of the file holding it (used only to open the file).
    kind: One of the KIND_* constants.
    example_id: Its id (escaped, valid UTF-8).
    source: The input as the user knows it (escaped): path, or path!member.
    chunk: Read chunk within its file; references of one chunk are read together.
    index: Zip: index in the central directory; otherwise its order in the file.
    offset: Tar: byte offset of the member's data.
    size_bytes: Size from the listing or the member header.
    data: The bytes, only for KIND_STREAMED.
  """
  path: str
  kind: str
  example_id: str
  source: str
  chunk: int = 0
  index: int = 0
  offset: int = 0
  size_bytes: int = 0
  data: bytes | None = None

  @property
  def chunk_key(self) -> tuple[str, int]:
    return (display_name(self.path), self.chunk)


@dataclasses.dataclass(frozen=True)
class Refusal:
  """An input refused while listing or reading, with the id it would have had."""
  error: errors.InputError
  example_id: str | None


def display_name(name: str) -> str:
  """`name` as valid UTF-8 text: each byte that was not UTF-8 becomes `\\xNN`.

  `os.fsdecode` and tarfile turn undecodable bytes into lone surrogates,
  which Beam's string encoder refuses; ids and sources must be printable.
  """
  try:
    raw = name.encode("utf-8", "surrogateescape")
  except UnicodeEncodeError:  # surrogates that are not escaped bytes
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
  return raw.decode("utf-8", "backslashreplace")


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


def file_id(path: str) -> str:
  """Id of a plain file: its stem, escaped (the stem is cut first: escapes hold backslashes)."""
  return display_name(strip_image_suffix(path))


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
  """'zip', 'tar' (plain or compressed) or None for a top-level input file.

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
  """Stable id of an archive member: archive file name + '!' + member name (both escaped)."""
  return f"{posixpath.basename(display_name(archive_path))}!{display_name(member_name)}"


def member_source(archive_path: str, member_name: str) -> str:
  return f"{display_name(archive_path)}!{display_name(member_name)}"


def _archive_name_in_id(member_id_: str) -> str:
  """The archive's name at the head of a member id: up to the first '!' after an archive suffix, else the first '!'.

  Only a name without '/' can be the archive's (a member path may hold both '/' and '!').
  """
  heads = [member_id_[:i] for i, char in enumerate(member_id_) if char == "!" and "/" not in member_id_[:i]]
  for head in heads:
    if head.lower().endswith(_NESTED_SUFFIXES):
      return head
  return heads[0]


def source_file(example_id: str | None, source: str) -> str:
  """The `file` column of a row or reject: the path of the file that was read.

  For a plain file that is its source path (the id is its stem); for an
  archive member, the archive's path, since the id (`<archive name>!<member>`)
  already names the member. `input_path` turns (id, file) back into the exact
  source.
  """
  if not example_id or "!" not in example_id:
    return source
  if source != example_id and not source.endswith("/" + example_id):
    return source  # not a member id of this source (a label or listing reject)
  folder = source[:len(source) - len(example_id)]
  return folder + _archive_name_in_id(example_id)


def input_path(example_id: str | None, file: str) -> str:
  """The exact input of a row (id, file): `file` itself, or `<archive path>!<member>` for an archive member."""
  name = posixpath.basename(file)
  if example_id and example_id.startswith(name + "!"):
    return file + example_id[len(name):]
  return file


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


def _checked_bytes(name: str, data: bytes | None, max_member_bytes: int, source: str,
                   example_id: str) -> bytes | Refusal:
  if data is None:
    return _refuse(source, errors.MEMBER_TOO_LARGE,
                   f"holds more than --max_member_bytes={max_member_bytes} bytes", example_id)
  if _looks_like_archive(name, data[:_HEAD_BYTES]):
    return _refuse(source, errors.NESTED_ARCHIVE, "archives inside archives are not opened", example_id)
  return data


def _empty_archive(archive_path: str) -> Refusal:
  return _refuse(display_name(archive_path), errors.EMPTY_ARCHIVE,
                 "the archive holds no file (only folders, or nothing)", posixpath.basename(display_name(archive_path)))


class _Chunker:
  """Numbers the references of one file and assigns consecutive ones to chunks."""

  def __init__(self, members_per_read: int):
    self._members_per_read = max(1, int(members_per_read))
    self.count = 0

  def next_chunk(self) -> int:
    chunk = self.count // self._members_per_read
    self.count += 1
    return chunk


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
  return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def list_zip(fileobj, archive_path: str, max_member_bytes: int,
             members_per_read: int) -> Iterator[MemberRef | Refusal]:
  """References to a zip's members, from its central directory only."""
  try:
    archive = zipfile.ZipFile(fileobj)
    infos = archive.infolist()
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
    yield _refuse(display_name(archive_path), errors.UNREADABLE_ARCHIVE, f"not a readable zip: {type(e).__name__}: {e}",
                  posixpath.basename(display_name(archive_path)))
    return
  chunker = _Chunker(members_per_read)
  yielded = 0
  for index, info in enumerate(infos):
    if info.is_dir():
      continue
    name = info.filename
    example_id, source = member_id(archive_path, name), member_source(archive_path, name)
    yielded += 1
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
    yield MemberRef(archive_path, KIND_ZIP, example_id, source, chunker.next_chunk(), index=index,
                    size_bytes=info.file_size)
  if not yielded:
    yield _empty_archive(archive_path)


def _tar_member_refusal(member: tarfile.TarInfo, max_member_bytes: int, source: str,
                        example_id: str) -> Refusal | None:
  if member.issym() or member.islnk():
    kind = "symbolic" if member.issym() else "hard"
    return _refuse(source, errors.UNSAFE_ARCHIVE_MEMBER,
                   f"{kind} link to {display_name(member.linkname)!r} is not followed", example_id)
  if not member.isfile():
    return _refuse(source, errors.UNSAFE_ARCHIVE_MEMBER, "not a regular file (device, fifo or other special member)",
                   example_id)
  if member.issparse():
    return _refuse(source, errors.UNREADABLE_ARCHIVE, "sparse tar members are not read", example_id)
  return _member_problem(member.name, member.size, max_member_bytes, source, example_id)


def list_tar(fileobj, archive_path: str, max_member_bytes: int, members_per_read: int,
             streamed: bool) -> Iterator[MemberRef | Refusal]:
  """References to a tar's members.

  An uncompressed tar (`streamed=False`) is walked header by header: tarfile
  seeks over each member's data, so only headers are read. A compressed tar
  cannot seek (`streamed=True`): it is read forward once in stream mode and
  each reference carries its member's bytes, one member in memory at a time.
  The TarFile's list of seen headers is cleared after each member so memory
  stays flat however many members the archive holds.
  """
  chunker = _Chunker(members_per_read)
  yielded = 0
  try:
    with tarfile.open(fileobj=fileobj, mode="r|*" if streamed else "r:", encoding="utf-8",
                      errors="surrogateescape") as tar:
      for member in tar:
        tar.members = []  # tarfile keeps every header otherwise
        if member.isdir():
          continue  # directories are structure, not inputs
        yielded += 1
        example_id, source = member_id(archive_path, member.name), member_source(archive_path, member.name)
        refusal = _tar_member_refusal(member, max_member_bytes, source, example_id)
        if refusal is not None:
          yield refusal
          continue
        data = None
        if streamed:
          checked = _checked_bytes(member.name, _read_limited(tar.extractfile(member), max_member_bytes),
                                   max_member_bytes, source, example_id)
          if isinstance(checked, Refusal):
            yield checked
            continue
          data = checked
        yield MemberRef(archive_path, KIND_STREAMED if streamed else KIND_TAR, example_id, source,
                        chunker.next_chunk(), index=yielded, offset=member.offset_data, size_bytes=member.size,
                        data=data)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    detail = f"cannot read the archive after {yielded} member(s): {type(e).__name__}: {e}"
    yield _refuse(display_name(archive_path), errors.UNREADABLE_ARCHIVE, detail,
                  posixpath.basename(display_name(archive_path)))
    return
  if not yielded:
    yield _empty_archive(archive_path)


def list_file_inputs(path: str, size_bytes: int, open_fn, max_member_bytes: int,
                     members_per_read: int = DEFAULT_MEMBERS_PER_READ) -> Iterator[MemberRef | Refusal]:
  """The inputs of one matched file: itself, or a reference per archive member.

  Args:
    path: The file's full raw path (local or gs://).
    size_bytes: Its size from the listing.
    open_fn: () -> a binary, seekable file object (uncompressed view).
    max_member_bytes: Size limit of one image (plain file or member).
    members_per_read: Archive members per read chunk.

  Yields:
    A MemberRef per candidate image, or a Refusal.
  """
  if path.lower().endswith(IMAGE_SUFFIXES):  # no need to open it to know it is not an archive
    kind, head = None, b""
  else:
    with open_fn() as f:
      head = f.read(_HEAD_BYTES)
    kind = archive_kind(path, head)
  if kind is None:
    if size_bytes > max_member_bytes:
      yield _refuse(display_name(path), errors.MEMBER_TOO_LARGE,
                    f"{size_bytes} bytes is over --max_member_bytes={max_member_bytes}", file_id(path))
    else:
      yield MemberRef(path, KIND_FILE, file_id(path), display_name(path), size_bytes=size_bytes)
    return
  with open_fn() as f:
    if kind == "zip":
      yield from list_zip(f, path, max_member_bytes, members_per_read)
    else:
      yield from list_tar(f, path, max_member_bytes, members_per_read, streamed=head.startswith(_COMPRESSED_MAGIC))


def _open_uncompressed(path: str):
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class ListMembersFn(beam.DoFn):
  """FileRef -> MemberRef per candidate image; refusals to the rejects output.

  Also emits, on TALLY_TAG, how many inputs each file gave, so the job can
  check read = scored + rejected without trusting its own outcome counts.
  """

  def __init__(self, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
               members_per_read: int = DEFAULT_MEMBERS_PER_READ):
    super().__init__()
    self._max_member_bytes = int(max_member_bytes)
    self._members_per_read = int(members_per_read)

  def process(self, file_ref: FileRef):
    path = file_ref.path
    count = 0
    try:
      for item in list_file_inputs(path, file_ref.size_bytes, lambda: _open_uncompressed(path), self._max_member_bytes,
                                   self._members_per_read):
        count += 1
        yield rejects.reject(item.error, item.example_id) if isinstance(item, Refusal) else item
    except (OSError, IOError) as e:
      # The file vanished or cannot be opened: one refusal for the file itself.
      logging.warning("Cannot read %s: %r", display_name(path), e)
      count += 1
      yield rejects.reject(errors.InputError(display_name(path), errors.MISSING_FILE, f"cannot read the file: {e}"),
                           file_id(path))
    yield beam.pvalue.TaggedOutput(TALLY_TAG, count)


def read_member(ref: MemberRef, opened, max_member_bytes: int) -> bytes | Refusal:
  """The bytes of one reference, or why they cannot be used.

  Args:
    ref: The reference.
    opened: (file object, zipfile.ZipFile or None) of ref.path, or None for KIND_FILE / KIND_STREAMED.
    max_member_bytes: Size limit of one image.
  """
  if ref.kind == KIND_STREAMED:
    return ref.data
  if ref.kind == KIND_FILE:
    try:
      with _open_uncompressed(ref.path) as f:
        data = _read_limited(f, max_member_bytes)
    except (OSError, IOError) as e:
      return _refuse(ref.source, errors.MISSING_FILE, f"cannot read the file: {e}", ref.example_id)
    if data is None:
      return _refuse(ref.source, errors.MEMBER_TOO_LARGE,
                     f"holds more than --max_member_bytes={max_member_bytes} bytes", ref.example_id)
    return data
  fileobj, archive = opened
  try:
    if ref.kind == KIND_ZIP:
      info = archive.infolist()[ref.index]
      with archive.open(info) as stream:
        data = _read_limited(stream, max_member_bytes)
      name = info.filename
    else:
      fileobj.seek(ref.offset)
      data = fileobj.read(ref.size_bytes)
      if len(data) < ref.size_bytes:
        return _refuse(ref.source, errors.UNREADABLE_ARCHIVE,
                       f"the archive ends inside this member ({len(data)} of {ref.size_bytes} bytes)", ref.example_id)
      name = ref.source
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError, IndexError) as e:
    return _refuse(ref.source, errors.UNREADABLE_ARCHIVE, f"cannot read the member: {type(e).__name__}: {e}",
                   ref.example_id)
  return _checked_bytes(name, data, max_member_bytes, ref.source, ref.example_id)


class ReadMembersFn(beam.DoFn):
  """(chunk key, [(MemberRef, extra)]) -> ((id, source, bytes), extra) per member; refusals to rejects.

  `extra` travels untouched beside each member (the scorer's metadata row).
  Archives stay open for the bundle, so a zip's central directory is read
  once per archive per bundle, not once per member; members are read in
  offset order, one member's bytes at a time.
  """

  def __init__(self, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
    super().__init__()
    self._max_member_bytes = int(max_member_bytes)
    self._read = beam.metrics.Metrics.counter(rejects.COUNTER_NAMESPACE, "members_read")
    self._open: dict = {}

  def start_bundle(self):
    self._open = {}

  def _opened(self, ref: MemberRef):
    if ref.kind not in (KIND_ZIP, KIND_TAR):
      return None
    if ref.path not in self._open:
      if len(self._open) >= _OPEN_ARCHIVES_PER_BUNDLE:
        self._close(next(iter(self._open)))
      fileobj = _open_uncompressed(ref.path)
      try:
        archive = zipfile.ZipFile(fileobj) if ref.kind == KIND_ZIP else None
      except BaseException:
        fileobj.close()
        raise
      self._open[ref.path] = (fileobj, archive)
    return self._open[ref.path]

  def _close(self, path: str):
    fileobj, archive = self._open.pop(path)
    if archive is not None:
      archive.close()
    fileobj.close()

  def finish_bundle(self):
    for path in list(self._open):
      self._close(path)

  def teardown(self):
    self.finish_bundle()

  def process(self, element):
    _, items = element
    for ref, extra in sorted(items, key=lambda item: (item[0].path, item[0].offset, item[0].index)):
      try:
        opened = self._opened(ref)
      except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        # The archive changed or vanished since it was listed.
        result = _refuse(ref.source, errors.UNREADABLE_ARCHIVE, f"cannot reopen the archive: {type(e).__name__}: {e}",
                         ref.example_id)
      else:
        result = read_member(ref, opened, self._max_member_bytes)
      if isinstance(result, Refusal):
        yield rejects.reject(result.error, result.example_id)
        continue
      self._read.inc()
      yield (ref.example_id, ref.source, result), extra


def _is_directory(path: str) -> bool:
  return path.endswith(("/", "\\")) or ("://" not in path and os.path.isdir(path))


def _matches_nothing(pattern: str) -> bool:
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  try:
    return not FileSystems.match([pattern], limits=[1])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except  (the job records it as listing_failed)
    logging.warning("Cannot probe %s: %r", display_name(pattern), e)
    return False


def patterns_matching_nothing(patterns: list[str] | tuple[str, ...]) -> list[str]:
  """The patterns whose listing works and finds nothing (probed in parallel, one match each).

  A probe that raises (no network, no credentials, no permission) is not
  counted here: the job lists the pattern again and records the cause as a
  `listing_failed` reject.
  """
  if not patterns:
    return []
  from concurrent import futures  # pylint: disable=g-import-not-at-top

  with futures.ThreadPoolExecutor(max_workers=min(16, len(patterns))) as pool:
    empty = list(pool.map(_matches_nothing, patterns))
  return [p for p, is_empty in zip(patterns, empty) if is_empty]


def pattern_from_manifest_line(line: bytes) -> str | None:
  """A pattern from one `--inputs_manifest` line (raw bytes), or None for a blank or # comment line."""
  text = os.fsdecode(line).strip()
  return text if text and not text.startswith("#") else None


class MatchPatternsFn(beam.DoFn):
  """Pattern -> FileRef per matched file; a pattern that matches nothing or cannot be listed is a reject.

  fileio.MatchAll would fail the whole job on a literal path that does not
  exist or a listing that raises; here each becomes one reject that counts as
  one input: `missing_file` when the listing worked and found no file,
  `listing_failed` (with the cause) when the listing itself failed.
  """

  def process(self, pattern: str):
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

    try:
      metadata_list = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # pylint: disable=broad-except  (BeamIOError: permissions, network, credentials, scheme)
      logging.warning("Cannot list %s: %r", display_name(pattern), e)
      yield rejects.reject(errors.InputError(display_name(pattern), errors.LISTING_FAILED,
                                             f"cannot list the pattern: {type(e).__name__}: {e}"), None)
      yield beam.pvalue.TaggedOutput(TALLY_TAG, 1)
      return
    files = [m for m in metadata_list if not _is_directory(m.path)]
    if not files:
      yield rejects.reject(errors.InputError(display_name(pattern), errors.MISSING_FILE,
                                             "the pattern matches no file"), None)
      yield beam.pvalue.TaggedOutput(TALLY_TAG, 1)
      return
    for m in sorted(files, key=lambda m: m.path):
      yield FileRef(m.path, m.size_in_bytes)
