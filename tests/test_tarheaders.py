"""blobfs.format.tarheaders against Python's tarfile (the SDK's reference) on real tars."""
from __future__ import annotations

import bz2
import gzip
import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from blobfs.errors import BlobfsError, TarFormatError
from blobfs.format.tarheaders import iter_members, regular_members
from blobfs.format.tarindex import index_tar
from tar_helpers import (
    BLOCK, CAFE_NFC, CAFE_NFD, NAME_OVER_100, NAME_OVER_255_PATH, base256, fix_checksum,
    gnu_tar, gnu_tar_works, header_block, make_tree, members_tar, our_view, pad, pax_block,
    python_tar, set_field, tarfile_view,
)

needs_gnu_tar = pytest.mark.skipif(not gnu_tar_works(), reason="GNU tar not installed")
PY_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT,
              "ustar": tarfile.USTAR_FORMAT}


def assert_like_tarfile(path: Path) -> list[tuple]:
    """Our member list equals tarfile's, field by field; regular_members likewise."""
    ours = our_view(path)
    assert ours == tarfile_view(path)
    with tarfile.open(path) as tf:
        regular = [(m.name, m.offset_data, m.size) for m in tf if m.isreg()]
    assert [(m.name, m.offset_data, m.size) for m in regular_members(path)] == regular
    return ours


def assert_data(path: Path, files: dict[str, bytes], prefix: str = "") -> None:
    """Every file is a member; each regular one's byte range is exactly the content."""
    blob = path.read_bytes()
    by_name = {m.name: m for m in iter_members(path)}
    checked = 0
    for rel, data in files.items():
        m = by_name[prefix + rel]
        if m.isreg():                 # else a hard link to an earlier member
            assert blob[m.offset_data:m.offset_data + m.size] == data
            checked += 1
    assert checked >= len(files) - 1


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("tree")
    return root, make_tree(root)


# -- well-formed archives ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_python_tarfile_formats(tree, tmp_path, fmt):
    root, files = tree
    path = python_tar(tmp_path / f"{fmt}.tar", root, PY_FORMATS[fmt])
    members = assert_like_tarfile(path)
    names = {m[0] for m in members}
    assert {NAME_OVER_100, NAME_OVER_255_PATH, CAFE_NFC, CAFE_NFD, "empty_dir"} <= names
    types = {m[0]: m[4] for m in members}
    assert types["empty_dir"] == b"5" and types["link_to_plain"] == b"2"
    # the second of two hard-linked files (sorted walk: "plain.png") is a hard link
    assert types["hardlink_to_plain.png"] == b"0" and types["plain.png"] == b"1"
    assert dict((m[0], m[7]) for m in members)["link_long_target"] == "/" + "t" * 150
    assert_data(path, files)


def test_python_ustar_format(tmp_path):
    # ustar has no long-name extension: names up to 255 bytes via the prefix field.
    members = [("a" * 150 + "/" + "b" * 99, b"1" * 10), ("x/y z.png", b""),
               (CAFE_NFD, b"cafe")]
    path = members_tar(tmp_path / "u.tar", members, tarfile.USTAR_FORMAT)
    ours = assert_like_tarfile(path)
    assert [m[0] for m in ours] == [n for n, _ in members]
    assert_data(path, dict(members))


@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar", "v7"])
def test_gnu_tar_formats(tree, tmp_path, fmt):
    root, files = tree
    src = root
    if fmt in ("ustar", "v7"):   # no long names there: archive only what fits
        src = tmp_path / "short"
        src.mkdir()
        for rel in ("plain.png", "with space/name with spaces.jpg", "empty.txt", CAFE_NFC):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(files[rel])
        (src / "dir").mkdir()
        os.symlink("plain.png", src / "sym")
        os.link(src / "plain.png", src / "hard.png")
        files = {rel: files[rel] for rel in
                 ("plain.png", "with space/name with spaces.jpg", "empty.txt", CAFE_NFC)}
    path = gnu_tar(tmp_path / f"{fmt}.tar", src, fmt)
    members = assert_like_tarfile(path)
    assert any(m[4] == b"5" for m in members)          # v7: "dir/" regular -> directory
    assert_data(path, files, prefix="./")


def test_fixture_tars_index_like_the_sdk_offsets(blob_project):
    """index_tar reproduces save_blob_offsets_pkl's entries for the SDK-made fixtures."""
    for ds, stem in (("ds1", "small_images"), ("ds2", "more_images")):
        tar = blob_project / "blob" / f"{stem}.tar"
        entries = _load_sdk_offsets(blob_project / ds / f"{stem}_offsets.pkl")
        assert index_tar(tar) == entries
        assert_like_tarfile(tar)


def test_index_tar_basename_and_filters(tmp_path):
    members = [("top.png", b"a"), ("batch2/img.png", b"bb"), ("batch2/readme.txt", b"c"),
               ("other/img.png", b"dd")]
    path = members_tar(tmp_path / "f.tar", members, tarfile.PAX_FORMAT)
    full = index_tar(path)
    assert [e[0] for e in full] == ["top.png", "img.png", "readme.txt", "img.png"]
    data = path.read_bytes()
    assert [data[s:e] for _, s, e in full] == [d for _, d in members]
    assert [e[0] for e in index_tar(path, include=["*.png"])] == ["top.png", "img.png",
                                                                  "img.png"]
    assert index_tar(path, include=["batch2/*"]) == full[1:3]         # full name
    assert index_tar(path, include=["readme.*"]) == [full[2]]          # basename
    assert index_tar(path, exclude=["other/*", "*.txt"]) == full[:2]
    assert index_tar(path, include=["*.png"], exclude=["batch2/*"]) == [full[0], full[3]]


def test_pax_mtime_fraction_and_global_headers(tmp_path):
    g = pax_block({"comment": "made by hand", "mtime": "1600000000.125"}, b"g")
    x = pax_block({"mtime": "1700000000.5", "path": "renamed/" + "p" * 120 + ".png"})
    a = header_block("a.png", 3)
    b = header_block("short.png", 5)
    path = tmp_path / "g.tar"
    path.write_bytes(g + bytes(a) + pad(b"aaa") + x + bytes(b) + pad(b"bbbbb") + bytes(1024))
    ours = assert_like_tarfile(path)
    assert [(m[0], m[6]) for m in ours] == [("a.png", 1600000000.125),
                                            ("renamed/" + "p" * 120 + ".png", 1700000000.5)]
    assert ours[0][1] == len(g)                  # a "g" header is not part of the member
    assert ours[1][1] == len(g) + 1024           # an "x" header is


def test_pax_size_record_overrides_header(tmp_path):
    x = pax_block({"size": "700"})
    h = header_block("big.bin", 0)
    path = tmp_path / "s.tar"
    path.write_bytes(x + bytes(h) + pad(b"q" * 700) + bytes(h) + bytes(1024))
    ours = assert_like_tarfile(path)
    assert [(m[0], m[3]) for m in ours] == [("big.bin", 700), ("big.bin", 0)]


def _gnu_long(kind: bytes, value: str) -> bytes:
    data = value.encode() + b"\0"
    return bytes(header_block("././@LongLink", len(data), kind)) + pad(data)


def test_crafted_header_combinations(tmp_path):
    """Orders and oddities GNU tar or tarfile do not write, read exactly as tarfile does."""
    signed = header_block("\u00e9t\u00e9.bin", 0)            # high-bit bytes in the name
    signed[148:156] = b" " * 8
    signed[148:156] = b"%06o\0 " % (256 + sum(b - 256 if b > 127 else b
                                              for i, b in enumerate(signed)
                                              if not 148 <= i < 156))
    prefixed_dir = set_field(header_block("", 0, b"5", tarfile.USTAR_FORMAT), 345, b"pre/fix")
    parts = [
        _gnu_long(b"L", "L-then-x/" + "a" * 150), pax_block({"mtime": "5.5"}),
        bytes(header_block("short1", 2)), pad(b"aa"),
        pax_block({"path": "x-then-L-wins/" + "b" * 150}), _gnu_long(b"L", "L-loses"),
        bytes(header_block("short2", 0)),
        _gnu_long(b"K", "/target/" + "c" * 200), bytes(header_block("sym", 0, b"2")),
        _gnu_long(b"L", "longdir/" + "d" * 120 + "/"), bytes(header_block("dir/", 0, b"5")),
        bytes(header_block("v7file", 3, b"\0")), pad(b"vvv"),
        bytes(header_block("v7dir/", 0, b"\0")),
        bytes(header_block("unknown-type", 600, b"V")), pad(b"u" * 600),
        bytes(header_block("hardlink-with-size", 5, b"1")),     # no data blocks follow
        bytes(signed), bytes(prefixed_dir),
        pax_block({"size": "1000"}), bytes(header_block("dir-with-pax-size", 0, b"5")),
        pax_block({"path": "renamed-by-global"}, b"g"), bytes(header_block("g1", 1)), pad(b"1"),
        bytes(header_block("g2", 0)), bytes(1024),
    ]
    path = tmp_path / "combo.tar"
    path.write_bytes(b"".join(parts))
    names = [m[0] for m in assert_like_tarfile(path)]
    assert names[:3] == ["L-then-x/" + "a" * 150, "x-then-L-wins/" + "b" * 150, "sym"]
    assert "pre/fix" in names and names[-2:] == ["renamed-by-global"] * 2


def test_base256_size_field(tmp_path):
    h = set_field(header_block("b256.bin"), 124, base256(1000))
    path = tmp_path / "b.tar"
    path.write_bytes(bytes(h) + pad(b"r" * 1000) + bytes(1024))
    assert [(m[0], m[3]) for m in assert_like_tarfile(path)] == [("b256.bin", 1000)]
    huge = set_field(header_block("huge.bin"), 124, base256(2 ** 80))
    path.write_bytes(bytes(huge) + pad(b"r" * 1000))
    with pytest.raises(TarFormatError, match=r"truncated: member 'huge.bin' needs "
                                             r"1208925819614629174706176 bytes"):
        list(iter_members(path))
    neg = set_field(header_block("neg.bin"), 124, base256(-1024))
    path.write_bytes(bytes(neg) + bytes(2048))
    with pytest.raises(TarFormatError, match="negative size -1024"):
        list(iter_members(path))


def test_end_of_archive_variants(tmp_path):
    path = members_tar(tmp_path / "e.tar", [("a", b"1" * 600), ("b", b"")],
                       tarfile.PAX_FORMAT)
    full = our_view(path)
    data = path.read_bytes()
    end = full[-1][2]                           # "b" is empty: its data offset is the end
    for variant in (data[:end], data[:end + BLOCK], data[:end] + b"\0" * BLOCK + b"junk"):
        path.write_bytes(variant)               # no marker, one zero block, junk after it
        assert assert_like_tarfile(path) == full
    path.write_bytes(b"")
    assert list(iter_members(path)) == []       # no members (a bare tar this empty is refused)
    path.write_bytes(bytes(10240))
    assert assert_like_tarfile(path) == []


def test_concatenated_tars_stop_at_first_end_marker(tmp_path):
    one = members_tar(tmp_path / "1.tar", [("a", b"1")], tarfile.GNU_FORMAT).read_bytes()
    two = members_tar(tmp_path / "2.tar", [("b", b"2")], tarfile.GNU_FORMAT).read_bytes()
    path = tmp_path / "cat.tar"
    path.write_bytes(one + two)
    assert [m[0] for m in assert_like_tarfile(path)] == ["a"]


# -- broken archives ---------------------------------------------------------------------
@pytest.fixture()
def small_tar(tmp_path) -> Path:
    return members_tar(tmp_path / "small.tar", [("a.png", b"A" * 700), ("b.png", b"B" * 10)],
                       tarfile.GNU_FORMAT)


def test_bad_checksum(small_tar):
    data = bytearray(small_tar.read_bytes())
    second = our_view(small_tar)[1][1]
    data[second + 10] ^= 0x01
    small_tar.write_bytes(data)
    with pytest.raises(TarFormatError, match=rf"small.tar: bad header checksum at offset "
                                             rf"{second}$"):
        list(iter_members(small_tar))
    data[10] ^= 0x01
    small_tar.write_bytes(data)
    with pytest.raises(TarFormatError, match=r"not a tar file \(bad header checksum"):
        list(iter_members(small_tar))


def test_truncated_header_and_data(small_tar):
    data = small_tar.read_bytes()
    second = our_view(small_tar)[1][1]
    small_tar.write_bytes(data[:second + 100])
    with pytest.raises(TarFormatError, match=rf"truncated header at offset {second}"):
        list(iter_members(small_tar))
    small_tar.write_bytes(data[:BLOCK + 300])
    with pytest.raises(TarFormatError, match=r"truncated: member 'a.png' needs 700 bytes"):
        list(iter_members(small_tar))
    small_tar.write_bytes(data[:100])
    with pytest.raises(TarFormatError, match=r"not a tar file \(100 bytes"):
        list(iter_members(small_tar))


def test_truncated_extension_headers(tmp_path):
    path = members_tar(tmp_path / "l.tar", [("n" * 300, b"x")], tarfile.GNU_FORMAT)
    data = path.read_bytes()
    for cut in (BLOCK + 10, 2 * BLOCK):          # inside the long name / before its member
        path.write_bytes(data[:cut])
        with pytest.raises(TarFormatError, match="extension header at offset 0"):
            list(iter_members(path))
    path.write_bytes(data[:BLOCK * 2] + bytes(BLOCK * 2))    # long name then end marker
    with pytest.raises(TarFormatError, match="followed by an end-of-archive block"):
        list(iter_members(path))


@pytest.mark.parametrize("compress, kind", [(gzip.compress, "gzip"), (bz2.compress, "bzip2")])
def test_compressed_tar_is_refused(small_tar, compress, kind):
    small_tar.write_bytes(compress(small_tar.read_bytes()))
    with pytest.raises(TarFormatError, match=f"{kind}-compressed data: compressed tar is not "
                                             "supported"):
        list(iter_members(small_tar))


def test_not_a_tar(tmp_path):
    path = tmp_path / "notes.tar"
    path.write_bytes(b"hello world\n" * 100)
    with pytest.raises(TarFormatError, match=r"notes.tar: not a tar file"):
        index_tar(path)
    with pytest.raises(TarFormatError, match="cannot open"):
        index_tar(tmp_path / "missing.tar")


@needs_gnu_tar
@pytest.mark.parametrize("fmt, extra", [("gnu", ()), ("posix", ()),
                                        ("posix", ("--sparse-version=0.1",)),
                                        ("posix", ("--sparse-version=0.0",))])
def test_sparse_members_are_refused(tmp_path, fmt, extra):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes.bin", "wb") as f:
        f.truncate(1 << 20)
        f.seek(500_000)
        f.write(b"data")
    path = gnu_tar(tmp_path / "sparse.tar", src, fmt, "--sparse", *extra)
    with pytest.raises(TarFormatError, match=r"member '[^']*holes.bin' at offset \d+ is "
                                             r"sparse: its data is not stored contiguously"):
        index_tar(path)


def test_crafted_sparse_pax_record(tmp_path):
    path = tmp_path / "p.tar"
    path.write_bytes(pax_block({"GNU.sparse.map": "0,10"}) + bytes(header_block("s", 10))
                     + pad(b"s" * 10) + bytes(1024))
    with pytest.raises(TarFormatError, match="is sparse"):
        index_tar(path)


def test_too_many_extension_headers(tmp_path):
    path = tmp_path / "deep.tar"
    path.write_bytes(pax_block({"comment": "c"}) * 100 + bytes(header_block("a")))
    with pytest.raises(TarFormatError, match="consecutive extension headers"):
        index_tar(path)


# -- properties --------------------------------------------------------------------------
def _parse_or_error(data: bytes) -> list[tuple] | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.tar"
        path.write_bytes(data)
        try:
            ours = our_view(path)
        except TarFormatError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return None
        # Whatever we accept, tarfile reads identically (it refuses an empty file).
        assert ours == (tarfile_view(path) if data else [])
        return ours


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3 * BLOCK))
def test_arbitrary_bytes_only_raise_tarformaterror(data):
    _parse_or_error(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(PY_FORMATS.values())),
       edits=st.lists(st.tuples(st.integers(0, 8 * BLOCK), st.integers(0, 255)), min_size=1,
                      max_size=4),
       cut=st.none() | st.integers(0, 8 * BLOCK))
def test_mutated_tars_only_raise_tarformaterror(fmt, edits, cut):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tf:
        for name, size in (("dir/" + "n" * 120 if fmt != tarfile.USTAR_FORMAT else "a", 700),
                           ("b", 0), ("c", 1)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = size, 1_700_000_000.5
            tf.addfile(ti, io.BytesIO(b"d" * size))
    data = bytearray(raw.getvalue())
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        del data[cut:]
    # Also with the edited header's checksum repaired, so the edit reaches the field parsers.
    block = edits[0][0] // BLOCK * BLOCK
    if block + BLOCK <= len(data) and any(data[block:block + BLOCK]):
        fixed = data[:]
        fixed[block:block + BLOCK] = fix_checksum(bytearray(data[block:block + BLOCK]))
        _parse_or_error(bytes(fixed))
    _parse_or_error(bytes(data))


_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(sorted(PY_FORMATS.values())),
       members=st.lists(st.tuples(_names, st.integers(0, 5000)), max_size=8))
def test_roundtrip_through_tarfile(fmt, members):
    contents = [(name, bytes([i % 251]) * size) for i, (name, size) in enumerate(members)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.tar"
        try:
            members_tar(path, contents, fmt)
        except ValueError:            # ustar cannot store this name
            assume(False)
        ours = assert_like_tarfile(path)
        blob = path.read_bytes()
        assert len(ours) == len(contents)          # one member per written entry
        for m, (_, data) in zip(ours, contents):
            assert m[4] == b"0" and blob[m[2]:m[2] + m[3]] == data


def test_errors_are_blobfs_errors():
    assert issubclass(TarFormatError, BlobfsError)


# -- the SDK's offsets pickles, read in the test only ------------------------------------
class _BlobImageInfo:
    """Stand-in for supervisely.api.image_api.BlobImageInfo (NEWOBJ + BUILD state)."""


class _OffsetsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("supervisely.api.image_api", "BlobImageInfo"):
            return _BlobImageInfo
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _load_sdk_offsets(path: Path) -> list[tuple[str, int, int]]:
    out = []
    with open(path, "rb") as f:
        while f.peek(1):
            for obj in _OffsetsUnpickler(f).load():
                out.append((obj.name, obj.offset_start, obj.offset_end))
    return out
