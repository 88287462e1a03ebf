"""Archive and file reading: streaming, ids, and every refusal with its reason."""

import io
import tarfile
import zipfile

import pytest

from bone_age import errors
from batch_inference import sources

MAX_BYTES = 10_000


def _tar_bytes(members, mode="w") -> bytes:
  """members: list of (name, bytes) or TarInfo-building callables."""
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode=mode) as tar:
    for member in members:
      if callable(member):
        member(tar)
      else:
        name, data = member
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return out.getvalue()


def _link(name, target, kind):
  def add(tar):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)
  return add


def _fifo(name):
  def add(tar):
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    tar.addfile(info)
  return add


def _expand(path: str, data: bytes, max_bytes: int = MAX_BYTES):
  return list(sources.iter_file_inputs(path, len(data), lambda: io.BytesIO(data), max_bytes))


def _outcomes(items):
  """id -> 'ok' or the refusal reason."""
  result = {}
  for item in items:
    if isinstance(item, sources.Refusal):
      result[item.example_id] = item.error.reason
    else:
      result[item[0]] = "ok"
  return result


def test_plain_files_get_their_stem_as_id_and_uid_names_stay_whole():
  assert _expand("/d/1377.png", b"x") == [("1377", "/d/1377.png", b"x")]
  assert _outcomes(_expand("gs://b/1.2.840.113619.2.55", b"DICMish")) == {"1.2.840.113619.2.55": "ok"}
  assert sources.strip_image_suffix("a/b/IMG.JPEG") == "IMG"


def test_plain_file_over_the_size_limit_is_refused_without_reading():
  assert _outcomes(_expand("/d/big.png", b"x" * (MAX_BYTES + 1))) == {"big": errors.MEMBER_TOO_LARGE}


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:gz", "")])
def test_tar_members_stream_with_safety_refusals(mode, suffix):
  data = _tar_bytes([
      ("img/1.png", b"png-bytes"),
      ("../../escape.png", b"a"),
      ("/abs/x.png", b"b"),
      _link("sym.png", "/etc/passwd", tarfile.SYMTYPE),
      _link("hard.png", "img/1.png", tarfile.LNKTYPE),
      _fifo("pipe.png"),
      ("inner.zip", b"PK\x03\x04rest"),
      ("sneaky.png", b"\x1f\x8b\x08gzip-inside"),
      ("huge.png", b"z" * (MAX_BYTES + 1)),
      ("img/1.png", b"again"),
  ], mode=mode)
  path = "/data/batch" + suffix
  name = "batch" + suffix
  outcomes = _outcomes(_expand(path, data))
  assert outcomes == {
      f"{name}!img/1.png": errors.DUPLICATE_ID,  # the second copy; the first was yielded under the same id
      f"{name}!../../escape.png": "ok",
      f"{name}!/abs/x.png": "ok",
      f"{name}!sym.png": errors.UNSAFE_ARCHIVE_MEMBER,
      f"{name}!hard.png": errors.UNSAFE_ARCHIVE_MEMBER,
      f"{name}!pipe.png": errors.UNSAFE_ARCHIVE_MEMBER,
      f"{name}!inner.zip": errors.NESTED_ARCHIVE,
      f"{name}!sneaky.png": errors.NESTED_ARCHIVE,
      f"{name}!huge.png": errors.MEMBER_TOO_LARGE,
  }
  items = _expand(path, data)
  assert len(items) == 10
  assert items[0] == (f"{name}!img/1.png", f"{path}!img/1.png", b"png-bytes")


def test_truncated_tar_gz_keeps_earlier_members_and_rejects_the_rest():
  data = _tar_bytes([("a.png", b"a" * 3000), ("b.png", bytes(range(256)) * 30)], mode="w:gz")
  outcomes = _outcomes(_expand("/d/cut.tar.gz", data[: len(data) // 2]))
  assert outcomes.pop("cut.tar.gz") == errors.UNREADABLE_ARCHIVE
  assert set(outcomes.values()) <= {"ok"}


def test_garbage_named_tar_is_an_unreadable_archive():
  assert _outcomes(_expand("/d/x.tar", b"not a tar at all" * 100)) == {"x.tar": errors.UNREADABLE_ARCHIVE}


def _zip_bytes(build) -> bytes:
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as archive:
    build(archive)
  return out.getvalue()


def test_zip_members_with_links_nesting_and_size_limits():
  def build(archive):
    archive.writestr("scans/7.png", b"seven")
    archive.writestr("../up.png", b"up")
    link = zipfile.ZipInfo("link.png")
    link.create_system = 3
    link.external_attr = (0o120777 << 16)
    archive.writestr(link, "/etc/passwd")
    archive.writestr("nested.tar.gz", b"\x1f\x8b rest")
    archive.writestr("big.dcm", b"d" * (MAX_BYTES + 1))
    archive.writestr("folder/", b"")
  outcomes = _outcomes(_expand("gs://bucket/in/set.zip", _zip_bytes(build)))
  assert outcomes == {
      "set.zip!scans/7.png": "ok",
      "set.zip!../up.png": "ok",
      "set.zip!link.png": errors.UNSAFE_ARCHIVE_MEMBER,
      "set.zip!nested.tar.gz": errors.NESTED_ARCHIVE,
      "set.zip!big.dcm": errors.MEMBER_TOO_LARGE,
  }


def test_zip_member_larger_than_its_header_says_is_refused():
  # A zip header declaring a small size cannot smuggle in a large member:
  # reading stops at the limit.
  def build(archive):
    archive.writestr("liar.png", b"q" * (MAX_BYTES * 3))
  data = bytearray(_zip_bytes(build))
  outcomes = _outcomes(_expand("/d/l.zip", bytes(data), max_bytes=MAX_BYTES * 2))
  assert outcomes == {"l.zip!liar.png": errors.MEMBER_TOO_LARGE}


def test_corrupt_zip_is_an_unreadable_archive():
  assert _outcomes(_expand("/d/bad.zip", b"PK\x03\x04" + b"\x00" * 50)) == {"bad.zip": errors.UNREADABLE_ARCHIVE}


def test_extensionless_archives_are_recognised_by_magic():
  assert sources.archive_kind("/d/blob", _zip_bytes(lambda a: a.writestr("x.png", b"x"))[:512]) == "zip"
  assert sources.archive_kind("/d/blob", _tar_bytes([("x.png", b"x")])[:512]) == "tar"
  assert sources.archive_kind("/d/blob", b"\x00" * 128 + b"DICM") is None
