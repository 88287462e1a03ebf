"""Archive and file listing and reading: member references, ids, and every refusal with its reason."""

import dataclasses
import io
import os
import tarfile
import zipfile

import apache_beam as beam
import pytest

from bone_age import errors
from batch_inference import patients
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


def _expand(tmp_path, name: str, data: bytes, max_bytes: int = MAX_BYTES, members_per_read: int = 3):
  """Writes `data` as tmp_path/name, lists it, then reads every reference as the scorer does.

  Returns the inputs in listing order: (id, source, bytes) or a Refusal.
  """
  local = tmp_path / name
  local.write_bytes(data)
  listed = list(sources.list_file_inputs(str(local), len(data), lambda: open(local, "rb"), max_bytes,
                                         members_per_read))
  reader = sources.ReadMembersFn(max_bytes)
  reader.start_bundle()
  items = []
  for item in listed:
    if isinstance(item, sources.MemberRef):
      [item] = list(reader.process((item.chunk_key, [(item, None)])))
      if isinstance(item, beam.pvalue.TaggedOutput):
        record = item.value
        item = sources.Refusal(errors.InputError(record["source"], record["reason"], record["detail"]), record["id"])
      else:
        item = item[0]
    items.append(item)
  reader.finish_bundle()
  return items


def _outcomes(items):
  """id -> 'ok' or the refusal reason."""
  result = {}
  for item in items:
    if isinstance(item, sources.Refusal):
      result[item.example_id] = item.error.reason
    else:
      result[item[0]] = "ok"
  return result


def test_plain_files_get_their_stem_as_id_and_uid_names_stay_whole(tmp_path):
  assert _expand(tmp_path, "1377.png", b"x") == [("1377", str(tmp_path / "1377.png"), b"x")]
  assert _outcomes(_expand(tmp_path, "1.2.840.113619.2.55", b"DICMish")) == {"1.2.840.113619.2.55": "ok"}
  assert sources.strip_image_suffix("a/b/IMG.JPEG") == "IMG"


def test_plain_file_over_the_size_limit_is_refused_without_reading(tmp_path):
  assert _outcomes(_expand(tmp_path, "big.png", b"x" * (MAX_BYTES + 1))) == {"big": errors.MEMBER_TOO_LARGE}


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:gz", "")])
def test_tar_members_are_listed_and_read_with_safety_refusals(mode, suffix, tmp_path):
  data = _tar_bytes([
      ("img/1.png", b"png-bytes"),
      ("../../escape.png", b"a"),
      ("/abs/x.png", b"b"),
      _link("sym.png", "/etc/passwd", tarfile.SYMTYPE),
      _link("hard.png", "img/1.png", tarfile.LNKTYPE),
      _fifo("pipe.png"),
      ("inner.zip", b"PK\x03\x04rest"),
      ("sneaky.png", b"\x1f\x8bgzip-inside"),
      ("huge.png", b"z" * (MAX_BYTES + 1)),
  ], mode=mode)
  name = "batch" + suffix
  items = _expand(tmp_path, name, data)
  assert _outcomes(items) == {
      f"{name}!img/1.png": "ok",
      f"{name}!../../escape.png": "ok",
      f"{name}!/abs/x.png": "ok",
      f"{name}!sym.png": errors.UNSAFE_ARCHIVE_MEMBER,
      f"{name}!hard.png": errors.UNSAFE_ARCHIVE_MEMBER,
      f"{name}!pipe.png": errors.UNSAFE_ARCHIVE_MEMBER,
      f"{name}!inner.zip": errors.NESTED_ARCHIVE,
      f"{name}!sneaky.png": errors.NESTED_ARCHIVE,
      f"{name}!huge.png": errors.MEMBER_TOO_LARGE,
  }
  assert len(items) == 9
  assert items[0] == (f"{name}!img/1.png", f"{tmp_path / name}!img/1.png", b"png-bytes")
  assert items[1][2] == b"a" and items[2][2] == b"b"


@pytest.mark.parametrize("mode,kind", [("w", sources.KIND_TAR), ("w:gz", sources.KIND_STREAMED)])
def test_tar_listing_records_offsets_or_streams_and_numbers_chunks(mode, kind, tmp_path):
  members = [(f"{i}.png", bytes([i]) * (100 + i)) for i in range(7)]
  (tmp_path / "t.tar").write_bytes(_tar_bytes(members, mode=mode))
  with open(tmp_path / "t.tar", "rb") as f:
    refs = list(sources.list_tar(f, str(tmp_path / "t.tar"), MAX_BYTES, members_per_read=3,
                                 streamed=mode != "w"))
  assert [r.kind for r in refs] == [kind] * 7
  assert [r.chunk for r in refs] == [0, 0, 0, 1, 1, 1, 2]
  if kind == sources.KIND_TAR:  # only the offset travels; the bytes stay in the archive
    assert all(r.data is None for r in refs)
    raw = (tmp_path / "t.tar").read_bytes()
    assert [raw[r.offset:r.offset + r.size_bytes] for r in refs] == [d for _, d in members]
  else:  # a compressed tar cannot seek: its bytes travel with the reference
    assert [r.data for r in refs] == [d for _, d in members]


def test_a_member_listed_twice_in_one_archive_is_read_once():
  first = sources.MemberRef("/d/a.tar", sources.KIND_TAR, "a.tar!x.png", "/d/a.tar!x.png", index=1)
  second = dataclasses.replace(first, index=5)
  other = sources.MemberRef("/e/a.tar", sources.KIND_TAR, "a.tar!x.png", "/e/a.tar!x.png", index=1)
  out = list(patients.MatchRowsFn(None, by_stem=False).process(("a.tar!x.png", {"refs": [second, other, first]})))
  assert [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)] == [(first, None), (other, None)]
  [dup] = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
  assert (dup["reason"], dup["source"]) == (errors.DUPLICATE_ID, "/d/a.tar!x.png")


def test_truncated_tar_gz_keeps_earlier_members_and_rejects_the_rest(tmp_path):
  data = _tar_bytes([("a.png", b"a" * 3000), ("b.png", bytes(range(256)) * 30)], mode="w:gz")
  outcomes = _outcomes(_expand(tmp_path, "cut.tar.gz", data[: len(data) // 2]))
  assert outcomes.pop("cut.tar.gz") == errors.UNREADABLE_ARCHIVE
  assert set(outcomes.values()) <= {"ok"}


def test_garbage_named_tar_is_an_unreadable_archive(tmp_path):
  assert _outcomes(_expand(tmp_path, "x.tar", b"not a tar at all" * 100)) == {"x.tar": errors.UNREADABLE_ARCHIVE}


def _zip_bytes(build) -> bytes:
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as archive:
    build(archive)
  return out.getvalue()


def test_zip_members_with_links_nesting_and_size_limits(tmp_path):
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
  outcomes = _outcomes(_expand(tmp_path, "set.zip", _zip_bytes(build)))
  assert outcomes == {
      "set.zip!scans/7.png": "ok",
      "set.zip!../up.png": "ok",
      "set.zip!link.png": errors.UNSAFE_ARCHIVE_MEMBER,
      "set.zip!nested.tar.gz": errors.NESTED_ARCHIVE,
      "set.zip!big.dcm": errors.MEMBER_TOO_LARGE,
  }


def test_zip_member_larger_than_its_header_says_is_refused(tmp_path):
  # A zip header declaring a small size cannot smuggle in a large member:
  # reading stops at the limit.
  def build(archive):
    archive.writestr("liar.png", b"q" * (MAX_BYTES * 3))
  data = bytearray(_zip_bytes(build))
  outcomes = _outcomes(_expand(tmp_path, "l.zip", bytes(data), max_bytes=MAX_BYTES * 2))
  assert outcomes == {"l.zip!liar.png": errors.MEMBER_TOO_LARGE}


def test_corrupt_zip_is_an_unreadable_archive(tmp_path):
  assert _outcomes(_expand(tmp_path, "bad.zip", b"PK\x03\x04" + b"\x00" * 50)) == {"bad.zip": errors.UNREADABLE_ARCHIVE}


def test_extensionless_archives_are_recognised_by_magic():
  assert sources.archive_kind("/d/blob", _zip_bytes(lambda a: a.writestr("x.png", b"x"))[:512]) == "zip"
  assert sources.archive_kind("/d/blob", _tar_bytes([("x.png", b"x")])[:512]) == "tar"
  assert sources.archive_kind("/d/blob", b"\x00" * 128 + b"DICM") is None


@pytest.mark.parametrize("name,build", [
    ("empty.zip", lambda: _zip_bytes(lambda a: None)),
    ("folders.zip", lambda: _zip_bytes(lambda a: (a.writestr("a/", b""), a.writestr("a/b/", b"")))),
    ("empty.tar", lambda: _tar_bytes([])),
    ("empty.tar.gz", lambda: _tar_bytes([], mode="w:gz")),
])
def test_an_archive_without_files_is_one_empty_archive_reject(name, build, tmp_path):
  items = _expand(tmp_path, name, build())
  assert [(i.example_id, i.error.reason) for i in items] == [(name, errors.EMPTY_ARCHIVE)]


def test_tar_member_with_a_non_utf8_name_is_read_under_an_escaped_id(tmp_path):
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                    errors="surrogateescape") as tar:
    info = tarfile.TarInfo(os.fsdecode(b"scans/\xff\xfe.png"))
    info.size = 3
    tar.addfile(info, io.BytesIO(b"abc"))
  [item] = _expand(tmp_path, "raw.tar", out.getvalue())
  assert item == ("raw.tar!scans/\\xff\\xfe.png", f"{tmp_path}/raw.tar!scans/\\xff\\xfe.png", b"abc")
  item[0].encode("utf-8")  # what Beam's string encoder does; surrogates would raise here


def test_display_name_escapes_only_what_is_not_utf8():
  assert sources.display_name("plain/ü.png") == "plain/ü.png"
  assert sources.display_name(os.fsdecode(b"a\xffb.png")) == "a\\xffb.png"
  assert sources.file_id(os.fsdecode(b"/d/\xff.png")) == "\\xff"


@pytest.mark.parametrize("example_id, source, file", [
    ("7", "/d/7.png", "/d/7.png"),
    ("batch.zip!hands/1377.png", "gs://b/in/batch.zip!hands/1377.png", "gs://b/in/batch.zip"),
    ("a!b.tar.gz!x/c!d.dcm", "/d/a!b.tar.gz!x/c!d.dcm", "/d/a!b.tar.gz"),  # '!' in the archive and member names
    ("export!x.dcm", "/d/export!x.dcm", "/d/export"),  # an extensionless archive, sniffed
    ("raw.tar!caf\\xe9.png", "raw.tar!caf\\xe9.png", "raw.tar"),  # no folder
    (None, "/gone/*.png", "/gone/*.png"),  # a pattern that matched nothing
    ("b!x", "labels.csv:3", "labels.csv:3"),  # not a member of this source
])
def test_rows_name_the_file_and_id_and_path_give_back_the_exact_input(example_id, source, file):
  assert sources.source_file(example_id, source) == file
  assert sources.input_path(example_id, file) == source
