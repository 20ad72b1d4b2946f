"""Hostile and broken input through the CLI and real mounts (issue #5).

Every case runs the real ``blobfs`` command in a subprocess and checks the contract: one line on
stderr naming the file, a non-zero exit when the command cannot go on, never a traceback, and
for mounts: refused before the mount point changes (foreground and background alike), or
mounted with the bad part skipped and reported. The reader-level tests (every opcode, bombs,
hypothesis) are in test_offsets_hostile.py and test_tarheaders.py; this file checks that the
commands built on them keep the contract.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from blobfs.format.offsets_write import dumps_offsets
from blobfs.format.tarheaders import regular_members
from mount_helpers import (BLOBFS, cleanup_mountpoint, is_mounted, libfuse_params, mount_cmd, mounted,
                           requires_fuse)
from tar_helpers import base256, gnu_tar_works, header_block, members_tar, pad, set_field

PRLIMIT = shutil.which("prlimit")
AS_LIMIT = "--as=2000000000"


# -- helpers -----------------------------------------------------------------------------------
def run(*args: str, prefix: tuple[str, ...] = (), timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *BLOBFS, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def copy_project(blob_project: Path, dst: Path) -> Path:
    shutil.copytree(blob_project, dst)
    for p in [dst, *dst.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)
    return dst


def info_json(src: Path) -> tuple[int, dict]:
    r = run("info", "--json", str(src))
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(kind: str, marker: Path) -> bytes:
    cmd = f"touch {marker}"
    if kind == "os.system":
        return pickle.dumps([_Reduce(os.system, (cmd,))], protocol=4)
    if kind == "eval":
        return pickle.dumps(_Reduce(eval, (f"open({str(marker)!r}, 'w')",)), protocol=2)
    if kind == "getattr_chain":
        return (b"\x80\x04cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
                + cmd.encode() + b"\ntR.")
    if kind == "in_entry_state":
        evil = pickle.dumps(_Reduce(os.system, (cmd,)), protocol=4)[2:-1]
        return (b"\x80\x04](csupervisely.api.image_api\nBlobImageInfo\n)\x81}(X\x04\x00\x00\x00name"
                b"X\x05\x00\x00\x00x.pngX\x0c\x00\x00\x00offset_startK\x00X\x0a\x00\x00\x00offset_end"
                + evil + b"ube.")
    raise ValueError(kind)


# -- pickles that try to run code: refused before anything runs, before the mount -------------
@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
@pytest.mark.parametrize("mode", ["foreground", "background"])
@pytest.mark.parametrize("kind", ["os.system", "eval", "getattr_chain", "in_entry_state"])
def test_code_running_pickle_in_second_dump_refuses_the_mount(blob_project, tmp_path, kind, mode, libfuse):
    proj = copy_project(blob_project, tmp_path / "proj")
    marker = tmp_path / "pwned"
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    good = pkl.read_bytes()
    pkl.write_bytes(good + _payload(kind, marker) + good)  # hidden in the 2nd of 3 dumps
    mp = tmp_path / "mp"
    mp.mkdir()
    args = ["-f"] if mode == "foreground" else []
    with cleanup_mountpoint(mp):
        r = run(*mount_cmd(proj, mp, *args, libfuse=libfuse)[len(BLOBFS):], timeout=30)
        line = one_line(r)
        assert r.returncode == 2
        assert str(pkl) in line and "refused" in line and "forbidden global" in line
        assert not is_mounted(mp) and os.listdir(mp) == []
    assert not marker.exists()
    # the inspection commands report the same refusal and go on with the rest
    code, rep = info_json(proj)
    assert code == 1 and any(str(pkl) in p and "refused" in p for p in rep["problems"])
    assert [d["items"] for d in rep["datasets"]] == [62, 0]
    r = run("ls", str(proj), "ds2/img")
    assert r.returncode == 2 and str(pkl) in one_line(r)
    assert not marker.exists()


# -- memory/CPU bombs: refused within bounded memory, through the CLI under prlimit -------------
BOMBS = {
    "huge_unicode8": b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"x" * 64,
    "huge_binunicode": b"\x80\x04X" + struct.pack("<I", 2**32 - 1) + b"x" * 64,
    "huge_bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x" * 64,
    "bytearray8_growth": b"\x80\x05\x96" + struct.pack("<Q", 2**63 - 1) + b"x" * 64,
    "deep_nesting_100k": b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b".",
    "deep_marks_100k": b"\x80\x04" + b"(" * 100_000 + b".",
    "out_of_band_buffer": b"\x80\x05\x97\x98.",
    "huge_long4": b"\x80\x04\x8b" + struct.pack("<I", 2**31) + b"x",
    "huge_frame": b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"].",
}


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) not installed")
@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_bombs_under_prlimit_info_reports_and_ls_refuses(blob_project, tmp_path, bomb):
    proj = copy_project(blob_project, tmp_path / "proj")
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    pkl.write_bytes(pkl.read_bytes() + BOMBS[bomb])
    r = run("info", str(proj), prefix=(PRLIMIT, AS_LIMIT))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith(f"{pkl}:")]
    assert len(lines) == 1, r.stdout
    ls = run("ls", str(proj), "ds2/img", prefix=(PRLIMIT, AS_LIMIT))
    if ": refused: " in lines[0]:
        # a bomb anywhere refuses the whole file: info goes on without it, ls/mount stop
        assert "0 items (0 in blobs" in r.stdout
        assert ls.returncode == 2 and str(pkl) in one_line(ls)
    else:
        # a dump that cannot be parsed (no bomb executed) keeps the dumps before it, as the SDK
        assert "unreadable after byte" in lines[0] and "kept 12 entries" in lines[0]
        assert ls.returncode == 0 and len(ls.stdout.splitlines()) == 12


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) not installed")
@pytest.mark.parametrize("bomb", ["huge_unicode8", "bytearray8_growth", "deep_nesting_100k",
                                  "out_of_band_buffer"])
def test_bomb_as_first_dump_refuses_mount_under_prlimit(blob_project, tmp_path, bomb):
    proj = copy_project(blob_project, tmp_path / "proj")
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    pkl.write_bytes(BOMBS[bomb] + pkl.read_bytes())
    mp = tmp_path / "mp"
    mp.mkdir()
    with cleanup_mountpoint(mp):
        r = run("mount", str(proj), str(mp), prefix=(PRLIMIT, AS_LIMIT), timeout=60)
        assert r.returncode == 2 and str(pkl) in one_line(r)
        assert not is_mounted(mp) and os.listdir(mp) == []
    r = run("info", str(proj), prefix=(PRLIMIT, AS_LIMIT))
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(pkl) in r.stdout


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) not installed")
def test_million_reference_amplification_under_prlimit(blob_project, tmp_path):
    """One list referenced 1,000,000 times: built in O(refs), never traversed; entries of the
    other dumps are kept and the non-entry is one problem line."""
    proj = copy_project(blob_project, tmp_path / "proj")
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    amp = b"\x80\x04]\x94(" + b"h\x00" * 1_000_000 + b"e" + b"h\x00" * 10 + b"\x85."
    pkl.write_bytes(amp + pkl.read_bytes())
    r = run("info", "--json", str(proj), prefix=(PRLIMIT, AS_LIMIT))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rep = json.loads(r.stdout)
    assert rep["datasets"][1]["items"] == 12
    assert any("is not an entry" in p and str(pkl) in p for p in rep["problems"])


# -- ranges ---------------------------------------------------------------------------------------
def _ranges_project(blob_project: Path, dst: Path) -> tuple[Path, dict]:
    """ds2's offsets replaced by one entry per range case; returns (project, case -> range)."""
    proj = copy_project(blob_project, dst)
    tar = proj / "blob" / "more_images.tar"
    size = tar.stat().st_size
    m = regular_members(tar)
    data = lambda k: (m[k].offset_data, m[k].offset_data + m[k].size)  # noqa: E731
    cases = {
        "negative.png": (-5, 10),
        "reversed.png": (data(1)[0], data(0)[0]),
        "past_end.png": (size - 10, size + 10),
        "start_2p63.png": (2**63 + 5, 2**63 + 10),
        "end_2p64.png": (0, 2**64),
        "end_2p63m1.png": (0, 2**63 - 1),
        "covers_headers.png": (m[0].header_offset, data(1)[1]),  # 2 members + the headers between
        "alias_a.png": data(2),
        "alias_b.png": data(2),
        "zero_length.png": (100, 100),
        "whole_tar.png": (0, size),
    }
    (proj / "ds2" / "more_images_offsets.pkl").write_bytes(dumps_offsets([(n, s, e) for n, (s, e) in cases.items()]))
    return proj, cases


SKIPPED_RANGES = {"negative.png": "is negative", "reversed.png": "> offset_end",
                  "past_end.png": "past the end of the tar", "start_2p63.png": "does not fit in 64 bits",
                  "end_2p64.png": "does not fit in 64 bits", "end_2p63m1.png": "past the end of the tar"}
SERVED_RANGES = ("covers_headers.png", "alias_a.png", "alias_b.png", "zero_length.png", "whole_tar.png")


def test_ranges_skipped_or_served_and_reported(blob_project, tmp_path):
    proj, cases = _ranges_project(blob_project, tmp_path / "proj")
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    code, rep = info_json(proj)
    assert code == 1
    for name, why in SKIPPED_RANGES.items():
        lines = [p for p in rep["problems"] if repr(name) in p]
        assert len(lines) == 1 and str(pkl) in lines[0] and why in lines[0] and "(skipped)" in lines[0], name
    assert rep["datasets"][1]["items"] == len(SERVED_RANGES)
    r = run("verify", str(proj))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    not_member = {n for n in SERVED_RANGES if f"ds2/img/{n} range" in r.stdout}
    # served as given, but verify names every range that is not exactly one member's data
    assert not_member == {"covers_headers.png", "zero_length.png", "whole_tar.png"}
    tar = (proj / "blob" / "more_images.tar").read_bytes()
    for name in SERVED_RANGES:
        r = subprocess.run([*BLOBFS, "cat", str(proj), f"ds2/img/{name}"], capture_output=True, timeout=30)
        start, end = cases[name]
        assert r.returncode == 0 and r.stdout == tar[start:end], name


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_ranges_through_a_mount_never_leave_the_range(blob_project, tmp_path, libfuse):
    proj, cases = _ranges_project(blob_project, tmp_path / "proj")
    tar = (proj / "blob" / "more_images.tar").read_bytes()
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(proj, mp, libfuse=libfuse) as m:
        assert sorted(os.listdir(m.path("ds2/img"))) == sorted(SERVED_RANGES)
        for name in SERVED_RANGES:
            start, end = cases[name]
            p = m.path(f"ds2/img/{name}")
            assert p.stat().st_size == end - start
            assert p.read_bytes() == tar[start:end], name
            with open(p, "rb") as f:  # reads past the end of the item stop at its end
                f.seek(end - start - 3 if end - start > 3 else 0)
                assert f.read(1 << 20) == tar[max(start, end - 3):end]
                assert os.pread(f.fileno(), 4096, end - start + 100) == b""
        assert m.path("ds2/img/alias_a.png").read_bytes() == m.path("ds2/img/alias_b.png").read_bytes()
        for name in SKIPPED_RANGES:
            assert not m.path(f"ds2/img/{name}").exists()


# -- tars -----------------------------------------------------------------------------------------
def _broken_tar_project(blob_project: Path, dst: Path, case: str) -> tuple[Path, Path]:
    proj = copy_project(blob_project, dst)
    tar = proj / "blob" / "more_images.tar"
    m = regular_members(tar)
    if case == "missing":
        tar.unlink()
    elif case == "empty":
        tar.write_bytes(b"")
    elif case == "truncated_mid_member":
        os.truncate(tar, m[4].offset_data + m[4].size // 2)
    elif case == "truncated_mid_header":
        os.truncate(tar, m[2].header_offset + 100)
    elif case == "gzip_named_tar":
        tar.write_bytes(gzip.compress(tar.read_bytes()))
    elif case == "directory_named_tar":
        tar.unlink()
        tar.mkdir()
    elif case == "fifo_named_tar":  # open(2) would block forever waiting for a writer
        tar.unlink()
        os.mkfifo(tar)
    return proj, tar


@pytest.mark.parametrize("case,kept", [("empty", 0), ("truncated_mid_member", 4), ("truncated_mid_header", 2)])
def test_short_tar_in_a_project_skips_what_is_missing(blob_project, tmp_path, case, kept):
    proj, tar = _broken_tar_project(blob_project, tmp_path / "proj", case)
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    code, rep = info_json(proj)
    assert code == 1 and rep["datasets"][1]["items"] == kept
    assert sum("past the end of the tar" in p and str(pkl) in p for p in rep["problems"]) == 12 - kept
    r = run("ls", str(proj), "ds2/img")  # strict commands go on: the entries are skipped, not fatal
    assert r.returncode == 0 and len(r.stdout.split("\n")) - 1 == kept


@pytest.mark.parametrize("case,words", [("missing", "tar not found"), ("gzip_named_tar", "gzip-compressed"),
                                        ("directory_named_tar", "not a regular file"), ("fifo_named_tar", "not a regular file")])
def test_unusable_tar_in_a_project_stops_strict_commands(blob_project, tmp_path, case, words):
    proj, tar = _broken_tar_project(blob_project, tmp_path / "proj", case)
    code, rep = info_json(proj)
    assert code == 1 and any(str(tar) in p and words in p for p in rep["problems"])
    assert [d["items"] for d in rep["datasets"]] == [62, 0]  # the rest is still reported
    for args in (["ls", str(proj)], ["cat", str(proj), "meta.json"]):
        r = run(*args)
        assert r.returncode == 2 and str(tar) in one_line(r) and words in one_line(r)


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
@pytest.mark.parametrize("case", ["missing", "gzip_named_tar", "empty", "truncated_mid_member"])
def test_broken_tar_and_mount(blob_project, fixtures_dir, tmp_path, case, libfuse):
    """A tar that cannot be used refuses the mount in one line; a short one mounts without the
    entries past its end (reads of the kept ones are right)."""
    proj, tar = _broken_tar_project(blob_project, tmp_path / "proj", case)
    mp = tmp_path / "mp"
    mp.mkdir()
    if case in ("missing", "gzip_named_tar"):
        with cleanup_mountpoint(mp):
            r = run(*mount_cmd(proj, mp, libfuse=libfuse)[len(BLOBFS):])
            assert r.returncode == 2 and str(tar) in one_line(r)
            assert not is_mounted(mp) and os.listdir(mp) == []
        return
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    with mounted(proj, mp, libfuse=libfuse) as m:
        shown = sorted(os.listdir(m.path("ds2/img")))
        assert len(shown) == (0 if case == "empty" else 4)
        for name in shown:
            assert sha(m.path(f"ds2/img/{name}").read_bytes()) == expected[f"ds2/img/{name}"]["sha256"]
        assert len(os.listdir(m.path("ds1/img"))) == 62  # the rest is untouched


def test_bad_header_checksum_is_served_and_reported_by_verify(blob_project, tmp_path):
    """Offsets locate the bytes; headers are never needed to serve. verify parses them and says
    where the archive is damaged."""
    proj = copy_project(blob_project, tmp_path / "proj")
    tar = proj / "blob" / "more_images.tar"
    m = regular_members(tar)
    data = bytearray(tar.read_bytes())
    data[m[3].header_offset + 110] ^= 0x01  # inside the uid field of member 3's ustar header
    tar.write_bytes(data)
    code, rep = info_json(proj)
    assert code == 0 and rep["datasets"][1]["items"] == 12
    r = run("verify", str(proj))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{tar}: bad header checksum at offset {m[3].header_offset}" in r.stdout
    r = subprocess.run([*BLOBFS, "cat", str(proj), "ds2/img/scan 05.png"], capture_output=True, timeout=30)
    assert r.stdout == bytes(data[m[5].offset_data:m[5].offset_data + m[5].size])
    # a bare tar has no offsets: its headers are all there is, so the damage is fatal there
    bare = tmp_path / "bare.tar"
    shutil.copy(tar, bare)
    r = run("ls", str(bare))
    assert r.returncode == 2 and "bad header checksum" in one_line(r) and str(bare) in one_line(r)


def _special_members_tar(path: Path) -> dict[str, bytes]:
    """A tar with a regular file, a symlink, a hard link, a char device, a FIFO and a folder."""
    files = {"a.png": b"A" * 700, "b.png": b"B" * 30}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, __import__("io").BytesIO(data))
        for name, kind, extra in [("sym.png", tarfile.SYMTYPE, {"linkname": "/etc/passwd"}),
                                  ("hard.png", tarfile.LNKTYPE, {"linkname": "a.png"}),
                                  ("null.png", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
                                  ("fifo.png", tarfile.FIFOTYPE, {}), ("dir", tarfile.DIRTYPE, {})]:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            for k, v in extra.items():
                setattr(ti, k, v)
            tf.addfile(ti)
    return files


def test_links_and_devices_in_a_tar_are_never_items(tmp_path):
    bare = tmp_path / "special.tar"
    files = _special_members_tar(bare)
    r = run("ls", str(bare), "special/img")
    assert r.returncode == 0 and r.stdout.split() == sorted(files)
    r = run("index", str(bare))
    assert r.returncode == 0 and "2 entries" in r.stdout
    for name, data in files.items():
        r = subprocess.run([*BLOBFS, "cat", str(bare), f"special/img/{name}"], capture_output=True, timeout=30)
        assert r.stdout == data


@pytest.mark.skipif(not gnu_tar_works(), reason="GNU tar not installed")
def test_sparse_member_refuses_a_bare_tar(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes.png", "wb") as f:
        f.truncate(1 << 20)
        f.seek(500_000)
        f.write(b"data")
    bare = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--format=gnu", "--sparse", "-cf", str(bare), "-C", str(src), "."], check=True)
    r = run("ls", str(bare))
    line = one_line(r)
    assert r.returncode == 2 and str(bare) in line and "holes.png" in line and "sparse" in line
    for cmd in ("info", "verify"):  # nothing of the source is readable: unreadable input
        r = run(cmd, str(bare))
        assert r.returncode == 2 and "sparse" in one_line(r), cmd


def test_concatenated_tars(tmp_path):
    """Like tarfile and GNU tar (without -i), the first end-of-archive marker ends the archive:
    a bare tar shows the first part only; offsets pointing into the second part are served as
    given (they are inside the file) and verify says they are no member's data."""
    one = members_tar(tmp_path / "1.tar", [("a.png", b"1" * 600)], tarfile.GNU_FORMAT).read_bytes()
    two = members_tar(tmp_path / "2.tar", [("b.png", b"2" * 70)], tarfile.GNU_FORMAT).read_bytes()
    bare = tmp_path / "cat.tar"
    bare.write_bytes(one + two)
    r = run("ls", str(bare), "cat/img")
    assert r.returncode == 0 and r.stdout.split() == ["a.png"]
    start = len(one) + 512
    (tmp_path / "cat_offsets.pkl").write_bytes(dumps_offsets([("a.png", 512, 1112), ("b.png", start, start + 70)]))
    r = subprocess.run([*BLOBFS, "cat", str(bare), "cat/img/b.png"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"2" * 70
    r = run("verify", str(bare))
    assert r.returncode == 1 and "cat/img/b.png range" in r.stdout and "a.png range" not in r.stdout


def test_base256_size_member(tmp_path):
    bare = tmp_path / "b256.tar"
    h = set_field(header_block("big.png"), 124, base256(1000))
    bare.write_bytes(bytes(h) + pad(b"r" * 1000) + bytes(1024))
    r = subprocess.run([*BLOBFS, "cat", str(bare), "b256/img/big.png"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"r" * 1000
    huge = set_field(header_block("huge.png"), 124, base256(2**80))
    bare.write_bytes(bytes(huge) + pad(b"r" * 1000))
    r = run("ls", str(bare))
    assert r.returncode == 2 and "huge.png" in one_line(r) and str(bare) in one_line(r)


def test_bare_tar_truncated_mid_header_or_member(blob_project, tmp_path):
    bare = tmp_path / "cut.tar"
    src = blob_project / "blob" / "more_images.tar"
    m = regular_members(src)
    for cut, words in ((m[2].header_offset + 100, "truncated header"),
                       (m[4].offset_data + 10, "truncated")):
        bare.write_bytes(src.read_bytes()[:cut])
        r = run("ls", str(bare))
        assert r.returncode == 2 and words in one_line(r) and str(bare) in one_line(r)


# -- annotations and meta.json -------------------------------------------------------------------
def _bad_ann_project(blob_project: Path, dst: Path, outside: Path) -> Path:
    proj = copy_project(blob_project, dst)
    ann = proj / "ds2" / "ann"
    (ann / "scan 00.jpg.json").write_text("{not json")
    (ann / "scan 01.png.json").unlink()
    (ann / "scan 01.png.json").mkdir()
    (ann / "scan 02.jpg.json").unlink()
    outside.write_text('{"secret": 1}')
    (ann / "scan 02.jpg.json").symlink_to(outside)
    (ann / "scan 03.png.json").unlink()
    os.mkfifo(ann / "scan 03.png.json")
    (ann / "scan 04.jpg.json").chmod(0)
    (proj / "meta.json").write_text("garbage{")
    return proj


def test_verify_reports_what_the_mount_hides_in_ann_also_when_no_item_owns_it(blob_project, tmp_path):
    # unpack leaves these out and says so (exit 1); verify must not call the source clean
    proj = copy_project(blob_project, tmp_path / "proj")
    ann = proj / "ds2" / "ann"
    os.mkfifo(ann / "stray.json")
    (ann / "out.json").symlink_to("/etc/hostname")
    (ann / "scan 03.png.json").unlink()
    os.mkfifo(ann / "scan 03.png.json")  # an item's annotation: reported once, as before
    r = run("verify", str(proj), timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith(f"{ann / 'stray.json'}:")] == [
        f"{ann / 'stray.json'}: not a regular file (FIFO); the mount hides it"]
    assert [ln for ln in lines if ln.startswith(f"{ann / 'out.json'}:")] == [
        f"{ann / 'out.json'}: symlink leads outside the project; the mount hides it"]
    assert len([ln for ln in lines if ln.startswith(f"{ann / 'scan 03.png.json'}:")]) == 1
    assert "3 problem(s)" in r.stdout


def test_bad_annotations_and_meta_are_reported_by_verify(blob_project, tmp_path):
    proj = _bad_ann_project(blob_project, tmp_path / "proj", tmp_path / "outside.json")
    ann = proj / "ds2" / "ann"
    r = run("verify", str(proj), timeout=30)  # never hangs on the FIFO
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()

    def line_of(name: str) -> str:
        got = [ln for ln in lines if ln.startswith(f"{ann / name}:")]
        assert len(got) == 1, (name, lines)
        return got[0]

    assert "not valid JSON" in line_of("scan 00.jpg.json")
    assert "missing" in line_of("scan 01.png.json")  # a folder is no annotation
    assert "outside the project" in line_of("scan 02.jpg.json")  # what the mount hides
    assert "missing" in line_of("scan 03.png.json")  # a FIFO is no annotation, never opened
    assert any(ln.startswith(f"{proj / 'meta.json'}:") and "not valid JSON" in ln for ln in lines)


def test_unreadable_annotation_as_non_root(blob_project, tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to another user")
    base = tmp_path_factory.mktemp("nonroot")
    for p in (base, *base.parents):
        if p != Path("/") and not p.stat().st_mode & 0o001:
            p.chmod(p.stat().st_mode | 0o011)  # let uid 65534 traverse to the project
    proj = copy_project(blob_project, base / "proj")
    for p in [proj, *proj.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o055 if p.is_dir() else 0o044))
    bad = proj / "ds2" / "ann" / "scan 04.jpg.json"
    bad.chmod(0)
    nobody = (shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups")
    r = run("verify", str(proj), prefix=nobody)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"{bad}:"))
    assert "cannot read" in line and "Permission denied" in line
    r = run("info", str(proj), prefix=nobody)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    r = subprocess.run([*nobody, *BLOBFS, "cat", str(proj), "ds2/ann/scan 04.jpg.json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "Permission denied" in one_line(r)


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_bad_annotations_never_block_the_mount(blob_project, fixtures_dir, tmp_path_factory, libfuse):
    base = tmp_path_factory.mktemp("ann")
    base.chmod(0o755)
    for p in base.parents:
        if p != Path("/") and not p.stat().st_mode & 0o001:
            p.chmod(p.stat().st_mode | 0o011)
    proj = _bad_ann_project(blob_project, base / "proj", base / "outside.json")
    for p in [proj, *proj.rglob("*")]:
        if not p.is_symlink() and p.name != "scan 04.jpg.json":
            p.chmod(p.stat().st_mode | (0o055 if p.is_dir() else 0o044))
    mp = base / "mp"
    mp.mkdir(mode=0o755)
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    with mounted(proj, mp, libfuse=libfuse, args=("-o", "allow_other")) as m:
        ann = m.path("ds2/ann")
        names = os.listdir(ann)
        assert "scan 02.jpg.json" not in names and "scan 03.png.json" not in names  # link out, FIFO
        assert m.path("ds2/ann/scan 00.jpg.json").read_text() == "{not json"
        assert m.path("ds2/ann/scan 01.png.json").is_dir()
        for n in ("scan 02.jpg.json", "scan 03.png.json"):
            assert not m.path(f"ds2/ann/{n}").exists()
        assert m.path("meta.json").read_text() == "garbage{"
        for rel, want in expected.items():  # every image and every good file is there
            if rel.startswith("ds1/") or rel.startswith("ds2/img/"):
                assert sha(m.path(rel).read_bytes()) == want["sha256"], rel
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        if os.geteuid() == 0 and shutil.which("setpriv"):
            r = subprocess.run([*nobody, "cat", str(m.path("ds2/ann/scan 04.jpg.json"))],
                               capture_output=True, text=True, timeout=10)
            assert r.returncode != 0 and "Permission denied" in r.stderr
            r = subprocess.run([*nobody, "cat", str(m.path("ds2/ann/scan 05.png.json"))],
                               capture_output=True, timeout=10)
            assert r.returncode == 0 and r.stdout == (proj / "ds2/ann/scan 05.png.json").read_bytes()


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_missing_meta_json_mounts_the_rest(blob_project, tmp_path, libfuse):
    proj = copy_project(blob_project, tmp_path / "proj")
    (proj / "meta.json").unlink()
    code, rep = info_json(proj)
    assert code == 1 and any("meta.json is missing" in p for p in rep["problems"])
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(proj, mp, libfuse=libfuse) as m:
        assert sorted(os.listdir(m.path())) == ["ds1", "ds2"]
        assert len(os.listdir(m.path("ds2/img"))) == 12
