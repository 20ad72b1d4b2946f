"""Real tar generators for the tar header tests (Python ``tarfile`` and GNU ``tar``).

``tarfile`` is the reference: the SDK computes blob offsets with it, so every archive built
here is compared member by member against ``tarfile``'s own reading of it.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import unicodedata
import zlib
from pathlib import Path

from blobfs.format.tarheaders import TarMember, iter_members
from blobfs.write.tarwriter import archive_size, member_header

BLOCK = 512
GNU_TAR = shutil.which("tar")


def gnu_tar_works() -> bool:
    if GNU_TAR is None:
        return False
    out = subprocess.run([GNU_TAR, "--version"], capture_output=True, text=True)
    return "GNU tar" in out.stdout


def tarfile_view(path: Path) -> list[tuple]:
    """(name, header offset, offset_data, size, type, mode, mtime, linkname) per member."""
    with tarfile.open(path, "r") as tf:
        return [(m.name, m.offset, m.offset_data, m.size, m.type, m.mode, float(m.mtime),
                 m.linkname) for m in tf.getmembers()]


def our_view(path: Path) -> list[tuple]:
    return [member_tuple(m) for m in iter_members(path)]


def member_tuple(m: TarMember) -> tuple:
    return (m.name, m.header_offset, m.offset_data, m.size, m.type, m.mode, m.mtime,
            m.linkname)


# -- a directory tree with every awkward kind of entry ----------------------------------
LONG_DIR = "d" * 90 + "/" + "e" * 90                   # two components, 181 bytes
NAME_OVER_100 = "long_" + "n" * 110 + ".png"           # one component > 100 bytes
NAME_OVER_255_PATH = LONG_DIR + "/" + "f" * 100 + ".jpg"   # path > 255 bytes
CAFE_NFC = unicodedata.normalize("NFC", "café.png")
CAFE_NFD = unicodedata.normalize("NFD", "café.png")


def make_tree(root: Path) -> dict[str, bytes]:
    """Create the tree; return relative path -> content of every regular file."""
    files = {
        "plain.png": b"\x89PNG" + bytes(range(256)) * 3,
        "with space/name with spaces.jpg": b"jpeg" * 300,
        "empty.txt": b"",
        NAME_OVER_100: b"x" * 513,
        NAME_OVER_255_PATH: b"y" * 1024,
        CAFE_NFC: b"nfc",
        CAFE_NFD: b"nfd-" * 200,
        "日本語/画像.png": b"\x00" * 700,
        "exactly_512.bin": b"z" * 512,
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "empty_dir").mkdir()
    os.symlink("plain.png", root / "link_to_plain")
    os.symlink("/" + "t" * 150, root / "link_long_target")
    os.link(root / "plain.png", root / "hardlink_to_plain.png")
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_700_000_000.25, 1_700_000_000.75))
    return files


def python_tar(dst: Path, root: Path, fmt: int, **kwargs) -> Path:
    """``tarfile`` archive of ``root`` (sorted walk, names relative to it)."""
    with tarfile.open(dst, "w", format=fmt, **kwargs) as tf:
        for p in sorted(root.rglob("*")):
            tf.add(p, arcname=p.relative_to(root).as_posix(), recursive=False)
    return dst


def gnu_tar(dst: Path, root: Path, fmt: str, *extra: str) -> Path:
    """GNU ``tar --format=FMT`` archive of ``root`` (names start with ``./``)."""
    subprocess.run([GNU_TAR, f"--format={fmt}", *extra, "-cf", str(dst), "-C", str(root), "."],
                   check=True, capture_output=True)
    return dst


def members_tar(dst: Path, members: list[tuple[str, bytes]], fmt: int, **kwargs) -> Path:
    """Archive of regular files given as (name, content), written by ``tarfile``."""
    with tarfile.open(dst, "w", format=fmt, **kwargs) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_700_000_000.5
            tf.addfile(ti, io.BytesIO(data))
    return dst


# -- hand-made header blocks -------------------------------------------------------------
def header_block(name: str, size: int = 0, type_: bytes = b"0", fmt: int = tarfile.GNU_FORMAT
                 ) -> bytearray:
    """One valid header block made by ``tarfile`` (no extension headers)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.mtime, ti.mode = size, type_, 1_700_000_000, 0o644
    buf = bytearray(ti.tobuf(format=fmt))
    assert len(buf) == BLOCK, "name too long for a single header block"
    return buf


def fix_checksum(block: bytearray) -> bytearray:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


def set_field(block: bytearray, start: int, value: bytes) -> bytearray:
    """Overwrite a header field and recompute the checksum."""
    block[start:start + len(value)] = value
    return fix_checksum(block)


def base256(n: int, width: int = 12) -> bytes:
    """GNU base-256 numeric field: 0x80 then big-endian (0xff for negative numbers)."""
    if n >= 0:
        return b"\x80" + n.to_bytes(width - 1, "big")
    return b"\xff" + (256 ** (width - 1) + n).to_bytes(width - 1, "big")


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax_block(records: dict[str, str], type_: bytes = b"x") -> bytes:
    """A PAX extended (x) or global (g) header with its record blocks, framed by hand."""
    body = b""
    for k, v in records.items():
        rec = f" {k}={v}\n".encode()
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n += 1
        body += str(n).encode() + rec
    head = header_block("././@PaxHeader", len(body), type_, tarfile.USTAR_FORMAT)
    return bytes(head) + pad(body)


def big_tar(dst: Path, member_size: int) -> Path:
    """A bare tar of 30,000 small members (its listing, ~450 kB, is far more than a pipe
    holds) and one 2 MB member ``huge.png``, for the CLI's interrupt and output-error tests."""
    with tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as t:
        for i in range(30_000):
            info = tarfile.TarInfo(f"img_{i:06d}.png")
            info.size = member_size
            t.addfile(info, io.BytesIO(b"x" * member_size))
        info = tarfile.TarInfo("huge.png")
        info.size = 2_000_000
        t.addfile(info, io.BytesIO(os.urandom(info.size)))
    return dst


def tiny_png(width: int, height: int) -> bytes:
    """The smallest PNG whose header gives a size: signature, IHDR, IEND (no pixels)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def blob_of(tar: Path, members: list[tuple[str, bytes]]) -> list[tuple[str, int, int]]:
    """Write ``members`` as a blob tar the way ``blobfs pack`` does; return the offsets
    entries (name, start, end) for ``write_offsets``."""
    entries, pos = [], 0
    with open(tar, "wb") as f:
        for name, data in members:
            head = member_header(name, len(data), 1700000000)
            f.write(head + pad(data))
            entries.append((name, pos + len(head), pos + len(head) + len(data)))
            pos += len(head) + len(pad(data))
        f.write(b"\0" * (archive_size(pos) - pos))
    return entries
