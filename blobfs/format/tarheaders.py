"""Tar header parser: where each member's bytes are, without ``tarfile`` (FORMAT.md §3, §4).

The SDK computes blob offsets with Python's ``tarfile`` (``tarfile.open(path, "r")`` then
``getmembers()``), so this module reproduces exactly ``tarfile``'s view of an archive: member
names (ustar prefix, GNU ``././@LongLink`` L/K records, PAX ``path``/``linkpath``, global
``g`` headers), ``offset_data``, ``size``, normalized type, header offset. It reads header
blocks only and jumps over member data with ``os.pread``, so 300,000 members index in about a
second and member data is never held in memory.

Deliberate differences from ``tarfile`` (all on damaged input, never on a valid archive):

* ``tarfile`` silently treats a bad checksum, an unparsable numeric field or a partial header
  block *after* the first member as the end of the archive; blobfs raises ``TarFormatError``
  instead, because serving a silently shortened archive would hide data.
* An empty (0-byte) file has no members (``tarfile`` raises "empty file"; GNU tar accepts it).
* PAX records must be well framed (``"<len> <key>=<value>\\n"``), like CPython >= 3.12's
  ``tarfile``; 3.11's regex parser accepts some garbage and is quadratic on crafted input.
* Negative sizes (base-256 ``0xff`` fields, PAX ``size=-1``) are refused: ``tarfile`` would
  seek backwards and loop.
* Sparse members (GNU type ``S``, any PAX ``GNU.sparse.*`` record) are refused: their data is
  not one contiguous byte range, so an offset range would serve wrong bytes.
* Gzip/bzip2/xz/zstd data is refused ("compressed tar is not supported"); ``tarfile.open(...,
  "r")`` would decompress it transparently, but offsets into a compressed stream are useless.

Like ``tarfile`` with the default ``ignore_zeros=False``, parsing stops at the first all-zero
block: in concatenated archives (``cat a.tar b.tar``) only the first archive's members exist.
A missing end-of-archive marker (EOF right after a member, at a block boundary) is accepted.
"""
from __future__ import annotations

import fnmatch
import os
import posixpath
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from blobfs.errors import TarFormatError

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)

# tarfile's type constants and groups (Lib/tarfile.py).
_REGULAR_TYPES = frozenset((b"0", b"\0", b"7", b"S"))
_SUPPORTED_TYPES = frozenset((b"0", b"\0", b"1", b"2", b"5", b"6", b"7", b"3", b"4",
                              b"L", b"K", b"S"))
_GNU_TYPES = frozenset((b"L", b"K", b"S"))
_PAX_TYPES = frozenset((b"x", b"g", b"X"))
_DIRTYPE = b"5"

#: Consecutive extension headers (L/K/x) before one member; tarfile recurses once per header
#: and would hit RecursionError on a crafted archive.
_MAX_EXT_DEPTH = 32
#: A GNU long name or PAX header larger than this is refused rather than read into memory.
_MAX_EXT_SIZE = 64 * 1024 * 1024

#: Read sizes: small after jumping over member data, large while headers are dense.
_SMALL_READ = 4096
_BIG_READ = 64 * 1024

_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x9d", "compress (.Z)"),
    (b"LZIP", "lzip"),
)

# name, mode, uid, gid, size, mtime, chksum, type, linkname, (magic, version, uname, gname
# skipped), devmajor, devminor, prefix.
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s72x8s8s155s12x")
_adler32 = zlib.adler32


@dataclass(frozen=True, slots=True)
class TarMember:
    """One archive member as ``tarfile`` reports it (extension headers applied)."""

    name: str            # full member name (PAX path / GNU longname applied)
    header_offset: int   # first header block of the member, incl. PAX/GNU extension headers
    offset_data: int     # absolute byte offset of the data
    size: int
    type: bytes          # typeflag as tarfile normalizes it (v7 "dir/" regular -> b"5")
    mode: int
    mtime: float
    linkname: str

    def isreg(self) -> bool:
        """Same notion as ``tarfile.TarInfo.isreg()``."""
        return self.type in _REGULAR_TYPES


class _HeaderError(Exception):
    """A header block tarfile would reject; ``kind`` says how."""

    def __init__(self, kind: str, offset: int, detail: str = "") -> None:
        super().__init__(kind)
        self.kind = kind          # "eof" (zero block), "empty", "truncated", "invalid"
        self.offset = offset
        self.detail = detail


class _Info:
    """Mutable per-header state, like tarfile.TarInfo while it is being built."""

    __slots__ = ("name", "mode", "size", "mtime", "type", "linkname", "offset", "offset_data",
                 "pax")

    def __init__(self, name: str, mode: int, size: int, mtime: float, type_: bytes,
                 linkname: str, offset: int) -> None:
        self.name = name
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.type = type_
        self.linkname = linkname
        self.offset = offset
        self.offset_data = offset + BLOCK
        self.pax: dict[str, str] | None = None

    def isreg(self) -> bool:
        return self.type in _REGULAR_TYPES


def _round_up(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _nts(field: bytes) -> str:
    """tarfile.nts with the file-system encoding (UTF-8) and surrogateescape."""
    p = field.find(0)
    if p != -1:
        field = field[:p]
    return field.decode("utf-8", "surrogateescape")


def _nti(field: bytes) -> int:
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


def _signed_checksum(buf: bytes) -> int:
    return 256 + sum(struct.unpack_from("148b8x356b", buf))


class _Parser:
    """Walks one archive. Mirrors TarFile.next()/TarInfo._proc_* step by step."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.filesize = os.fstat(fd).st_size
        self.globals: dict[str, str] = {}   # tarfile.pax_headers (updated by "g" headers)
        self.next_offset = 0                 # tarfile.offset
        self._buf = b""
        self._buf_start = 0
        self._nti_cache: dict[bytes, int] = {}

    # -- reading -------------------------------------------------------------------------
    def _read(self, offset: int, n: int) -> bytes:
        """Bytes [offset, offset+n), shorter only at end of file."""
        start = offset - self._buf_start
        if start >= 0 and start + n <= len(self._buf):
            return self._buf[start:start + n]
        gap = offset - (self._buf_start + len(self._buf))
        want = _BIG_READ if 0 <= gap < _BIG_READ else _SMALL_READ
        try:
            data = os.pread(self.fd, max(n, want), offset)
        except OSError as e:
            raise TarFormatError(f"{self.path}: cannot read at offset {offset}: "
                                 f"{e.strerror or e}") from None
        self._buf, self._buf_start = data, offset
        return data[:n]

    def error(self, problem: str) -> TarFormatError:
        return TarFormatError(f"{self.path}: {problem}")

    # -- one header block (TarInfo.frombuf) ----------------------------------------------
    def _num(self, field: bytes, offset: int, what: str) -> int:
        # mode/uid/gid/mtime/dev fields repeat across members: cache their parse.
        n = self._nti_cache.get(field)
        if n is None:
            try:
                n = _nti(field)
            except ValueError:
                raise _HeaderError("invalid", offset, f"invalid {what} field {field!r}") from None
            if len(self._nti_cache) > 4096:
                self._nti_cache.clear()
            self._nti_cache[field] = n
        return n

    def _frombuf(self, buf: bytes, offset: int) -> _Info:
        if not buf:
            raise _HeaderError("empty", offset)
        if len(buf) != BLOCK:
            raise _HeaderError("truncated", offset)
        if buf == _ZERO_BLOCK:
            raise _HeaderError("eof", offset)
        (name, mode, uid, gid, size, mtime, chksum, type_, linkname, devmajor, devminor,
         prefix) = _HEADER.unpack(buf)
        want = self._num(chksum, offset, "checksum")
        # Unsigned sum with the checksum field counted as 8 spaces (256). adler32's low
        # half is 1 + sum(bytes) mod 65521, exact for chunks of at most 256 bytes.
        got = ((_adler32(buf[:148]) & 0xFFFF) + (_adler32(buf[156:356]) & 0xFFFF)
               + (_adler32(buf[356:]) & 0xFFFF) + 253)
        if want != got and want != _signed_checksum(buf):
            raise _HeaderError("invalid", offset, "bad header checksum")
        num = self._num
        mode_n = num(mode, offset, "mode")
        num(uid, offset, "uid")
        num(gid, offset, "gid")
        try:
            size_n = _nti(size)
        except ValueError:
            raise _HeaderError("invalid", offset, f"invalid size field {size!r}") from None
        mtime_n = num(mtime, offset, "mtime")
        num(devmajor, offset, "devmajor")
        num(devminor, offset, "devminor")
        info = _Info(_nts(name), mode_n, size_n, mtime_n, type_, _nts(linkname), offset)
        if type_ == b"\0" and info.name.endswith("/"):
            info.type = _DIRTYPE          # old v7: a directory is a regular file named "x/"
        if info.type == _DIRTYPE:
            info.name = info.name.rstrip("/")
        if prefix[0] and type_ not in _GNU_TYPES:
            info.name = _nts(prefix) + "/" + info.name
        return info

    # -- a member and its extension headers (TarInfo.fromtarfile / _proc_*) --------------
    def fromtarfile(self, offset: int, depth: int) -> _Info:
        info = self._frombuf(self._read(offset, BLOCK), offset)
        if info.size < 0:
            raise self.error(f"negative size {info.size} in header at offset {offset}")
        t = info.type
        if t == b"L" or t == b"K":
            return self._proc_gnulong(info, depth)
        if t == b"S":
            raise self.error(f"member {info.name!r} at offset {offset} is sparse: its data is "
                             "not stored contiguously, blobfs refuses to serve it")
        if t in _PAX_TYPES:
            return self._proc_pax(info, depth)
        return self._proc_builtin(info)

    def _subsequent(self, offset: int, depth: int, owner: _Info) -> _Info:
        """The header after an extension header: any header problem is fatal there."""
        if depth >= _MAX_EXT_DEPTH:
            raise self.error(f"more than {_MAX_EXT_DEPTH} consecutive extension headers "
                             f"at offset {owner.offset}")
        try:
            return self.fromtarfile(offset, depth + 1)
        except _HeaderError as e:
            what = {"eof": "an end-of-archive block", "empty": "end of file",
                    "truncated": "a truncated header"}.get(e.kind, e.detail)
            raise self.error(f"extension header at offset {owner.offset} is followed by "
                             f"{what} at offset {e.offset}") from None

    def _ext_data(self, info: _Info) -> bytes:
        n = _round_up(info.size)
        if info.size > _MAX_EXT_SIZE:
            raise self.error(f"extension header at offset {info.offset} is too large "
                             f"({info.size} bytes)")
        if info.offset_data + n > self.filesize:
            raise self.error(f"truncated: extension header at offset {info.offset} needs "
                             f"{info.size} bytes, the file ends first")
        return self._read(info.offset_data, n)

    def _proc_builtin(self, info: _Info) -> _Info:
        offset = info.offset_data
        if info.type in _REGULAR_TYPES or info.type not in _SUPPORTED_TYPES:
            offset += _round_up(info.size)   # only these types have data blocks (tarfile)
        self.next_offset = offset
        if self.globals:
            self._apply_pax(info, self.globals)
        if info.type == _DIRTYPE:
            info.name = info.name.rstrip("/")
        return info

    def _proc_gnulong(self, info: _Info, depth: int) -> _Info:
        buf = self._ext_data(info)
        nxt = self._subsequent(info.offset_data + len(buf), depth, info)
        nxt.offset = info.offset
        if info.type == b"L":
            nxt.name = _nts(buf)
        else:
            nxt.linkname = _nts(buf)
        if nxt.type == _DIRTYPE:
            nxt.name = nxt.name.removesuffix("/")
        return nxt

    def _pax_records(self, buf: bytes, offset: int) -> list[tuple[bytes, bytes]]:
        """``"<len> <keyword>=<value>\\n"`` records, framed as CPython >= 3.12 checks them."""
        records = []
        pos, end = 0, len(buf)
        while pos < end and buf[pos] != 0:
            sp = buf.find(b" ", pos, pos + 21)
            digits = buf[pos:sp]
            if sp == -1 or not digits.isdigit():
                raise self.error(f"malformed PAX record in header at offset {offset}")
            length = int(digits)
            last = pos + length - 1
            if length < 5 or last >= end or buf[last] != 0x0A:
                raise self.error(f"malformed PAX record in header at offset {offset}")
            keyword, eq, value = buf[sp + 1:last].partition(b"=")
            if not keyword or not eq:
                raise self.error(f"malformed PAX record in header at offset {offset}")
            records.append((keyword, value))
            pos += length
        return records

    def _proc_pax(self, info: _Info, depth: int) -> _Info:
        buf = self._ext_data(info)
        records = self._pax_records(buf, info.offset)
        pax = self.globals if info.type == b"g" else dict(self.globals)
        # hdrcharset only matters for non-UTF-8 names; tarfile then uses the file-system
        # encoding (UTF-8 + surrogateescape), which is what every value gets here anyway.
        for keyword, value in records:
            pax[keyword.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape")
        if any(k.startswith("GNU.sparse.") for k in pax):
            name = pax.get("GNU.sparse.name") or pax.get("path") or "?"
            raise self.error(f"member {name!r} at offset {info.offset} is sparse: its data is "
                             "not stored contiguously, blobfs refuses to serve it")
        nxt = self._subsequent(info.offset_data + len(buf), depth, info)
        if info.type != b"g":
            self._apply_pax(nxt, pax)
            nxt.offset = info.offset
            if "size" in pax:
                # The real size lives in the PAX record: recompute where the next header is.
                offset = nxt.offset_data
                if nxt.type in _REGULAR_TYPES or nxt.type not in _SUPPORTED_TYPES:
                    offset += _round_up(nxt.size)
                self.next_offset = offset
        return nxt

    def _apply_pax(self, info: _Info, pax: dict[str, str]) -> None:
        """TarInfo._apply_pax_info for the fields TarMember carries."""
        for keyword, value in pax.items():
            if keyword == "path":
                info.name = value.rstrip("/")
            elif keyword == "linkpath":
                info.linkname = value
            elif keyword == "size":
                try:
                    info.size = int(value)
                except ValueError:
                    info.size = 0            # tarfile's fallback for a bad number
                if info.size < 0:
                    raise self.error(f"negative PAX size {info.size} for member "
                                     f"{info.name!r} at offset {info.offset}")
            elif keyword == "mtime":
                try:
                    info.mtime = float(value)
                except ValueError:
                    info.mtime = 0

    # -- the archive (TarFile.next) ------------------------------------------------------
    def _first_header_problem(self, e: _HeaderError) -> TarFormatError:
        head = self._read(0, 8)
        for magic, kind in _COMPRESSED_MAGIC:
            if head.startswith(magic):
                return self.error(f"{kind}-compressed data: compressed tar is not supported, "
                                  "decompress it to a plain .tar first")
        if e.kind == "truncated":
            return self.error(f"not a tar file ({self.filesize} bytes, shorter than one "
                              "header block)")
        return self.error(f"not a tar file ({e.detail} at offset 0)")

    def members(self) -> Iterator[TarMember]:
        offset = 0
        while True:
            try:
                info = self.fromtarfile(offset, 0)
            except _HeaderError as e:
                if e.kind == "eof" or e.kind == "empty":
                    return                   # first zero block / EOF at a block boundary
                if offset == 0:
                    raise self._first_header_problem(e) from None
                if e.kind == "truncated":
                    raise self.error(f"truncated header at offset {offset} (the file ends "
                                     f"{self.filesize - offset} bytes into it)") from None
                raise self.error(f"{e.detail} at offset {e.offset}") from None
            if self.next_offset > self.filesize:
                raise self.error(f"truncated: member {info.name!r} needs {info.size} bytes "
                                 f"from offset {info.offset_data}, the file ends at "
                                 f"{self.filesize}")
            yield TarMember(info.name, info.offset, info.offset_data, info.size, info.type,
                            info.mode, float(info.mtime), info.linkname)
            offset = self.next_offset


def iter_members(path: str | os.PathLike[str]) -> Iterator[TarMember]:
    """Every member of the tar at ``path`` in archive order, as ``tarfile`` lists them.

    Raises ``TarFormatError`` (one line naming the file) for anything that is not a plain,
    intact tar, and for sparse members.
    """
    spath = os.fspath(path)
    try:
        fd = os.open(spath, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise TarFormatError(f"{spath}: cannot open: {e.strerror or e}") from None
    try:
        yield from _Parser(spath, fd).members()
    finally:
        os.close(fd)


def regular_members(path: str | os.PathLike[str]) -> list[TarMember]:
    """``[m for m in tarfile.open(path) if m.isreg()]`` (regular files only, archive order)."""
    return [m for m in iter_members(path) if m.isreg()]


def _matches(patterns: Sequence[str], full: str, base: str) -> bool:
    return any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def index_tar(path: str | os.PathLike[str], include: Sequence[str] = (),
              exclude: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    """The entries ``sly.fs.save_blob_offsets_pkl`` writes for this tar.

    One ``(basename of member name, offset_data, offset_data + size)`` per regular member,
    in archive order (the SDK: ``member.isfile()``, ``os.path.basename(member.name)``).
    ``include``/``exclude`` are case-sensitive fnmatch globs (``*`` also matches ``/``),
    each tested against the full member name and against its basename; a member is kept
    when it matches some include (or there are none) and no exclude. Duplicated basenames
    are kept, as the SDK keeps them.
    """
    out = []
    for m in regular_members(path):
        base = posixpath.basename(m.name)
        if include and not _matches(include, m.name, base):
            continue
        if exclude and _matches(exclude, m.name, base):
            continue
        out.append((base, m.offset_data, m.offset_data + m.size))
    return out
