"""Field-level decoding of tar header blocks, exactly as Python's ``tarfile`` does it.

Split from ``tarheaders`` (which walks archives) so each stays small: the format's constants
(as ``tarfile`` groups them) and the pure functions a header block is decoded with.
"""
from __future__ import annotations

import struct

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: What an empty archive is padded to by GNU tar and ``tarfile`` (20 blocks).
RECORDSIZE = 20 * BLOCK

# tarfile's type constants and groups (Lib/tarfile.py).
REGULAR_TYPES = frozenset((b"0", b"\0", b"7", b"S"))
SUPPORTED_TYPES = frozenset((b"0", b"\0", b"1", b"2", b"5", b"6", b"7", b"3", b"4",
                              b"L", b"K", b"S"))
GNU_TYPES = frozenset((b"L", b"K", b"S"))
DIRTYPE = b"5"

#: Consecutive extension headers (L/K/x/g) before one member; tarfile recurses once per
#: header and would hit RecursionError on a crafted archive.
MAX_EXT_DEPTH = 32
#: A GNU long name or PAX header larger than this is refused rather than read into memory.
MAX_EXT_SIZE = 64 * 1024 * 1024


COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x9d", "compress (.Z)"),
    (b"LZIP", "lzip"),
)

EXT_TYPES = frozenset(b"xgXLK")     # extension header type bytes (as ints)
EXT_TYPE_FLAGS = frozenset((b"x", b"g", b"X", b"L", b"K"))

#: name, mode+uid+gid, size, mtime, chksum, type, linkname, (magic, version, uname, gname
#: skipped), devmajor+devminor, prefix.
HEADER = struct.Struct("100s24s12s12s8sc100s72x16s155s12x")


class HeaderError(Exception):
    """A block tarfile would reject: kind "eof" (zero block), "empty", "truncated", "invalid"."""

    def __init__(self, kind: str, offset: int, detail: str = "") -> None:
        super().__init__(kind)
        self.kind, self.offset, self.detail = kind, offset, detail


#: What one header block says: name, mode, size, mtime, type, linkname.
Header = tuple[str, int, int, int, bytes, str]


def round_up(n: int) -> int:
    return (n + 511) & -512


def nts(field: bytes) -> str:
    """tarfile.nts with the file-system encoding (UTF-8) and surrogateescape."""
    p = field.find(0)
    if p != -1:
        field = field[:p]
    return field.decode("utf-8", "surrogateescape")


def nti(field: bytes) -> int:
    """tarfile.nti: octal text, or GNU base-256 (leading 0x80 positive / 0xff negative)."""
    lead = field[0]
    if lead == 0o200 or lead == 0o377:
        n = int.from_bytes(field[1:], "big")
        if lead == 0o377:
            n = -(256 ** (len(field) - 1) - n)
        return n
    p = field.find(0)
    if p != -1:
        field = field[:p]
    # int() accepts the same oddities (spaces, sign, "_") that tarfile accepts.
    return int(field.decode("ascii").strip() or "0", 8)


def signed_checksum(buf: bytes) -> int:
    return 256 + sum(struct.unpack_from("148b8x356b", buf))


def starts_like_tar(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes beginning with ``head`` (its first block, or all of a
    shorter file) can be a tar archive: empty, an empty archive (a zero block, no longer than
    the one record ``tar`` and ``tarfile`` write for it), or a header whose checksum holds, as
    ``tarfile`` checks it (unsigned or signed sum). A link in ``blob/`` may lead anywhere: this
    keeps an offsets file from serving byte ranges of a file that is no tar (``/etc/shadow``,
    or a file system image, whose first 1024 bytes are zeros). An empty file passes: offsets
    into it are a tar cut short (each entry past its end is a problem); read by its own headers
    it holds no archive (``blobfs.model.opening``)."""
    if not head:
        return True
    if head == ZERO_BLOCK:
        return size <= RECORDSIZE
    if len(head) < BLOCK:
        return False
    try:
        stored = nti(head[148:156])
    except (ValueError, IndexError):
        return False
    unsigned = 256 + sum(head[:148]) + sum(head[156:BLOCK])
    return stored in (unsigned, signed_checksum(head))
