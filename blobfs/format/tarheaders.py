"""Tar header parser: where each member's bytes are, without ``tarfile`` (FORMAT.md §3, §4).

The SDK computes blob offsets with Python's ``tarfile`` (``tarfile.open(path, "r")`` then
``getmembers()``), so this module reproduces exactly ``tarfile``'s view of an archive: member
names (ustar prefix, GNU ``././@LongLink`` L/K records, PAX ``path``/``linkpath``, global
``g`` headers), ``offset_data``, ``size``, normalized type, header offset. It reads header
blocks only (one small ``os.pread`` per member, jumping over data; member data is never held
in memory): 300,000 members index in ~2 s where ``tarfile`` takes 10-20 s. Names are decoded
like ``tarfile``'s (UTF-8, surrogateescape: non-UTF-8 bytes become lone surrogates).

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

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from blobfs.errors import TarFormatError
from blobfs.format.names import quoted
from blobfs.format.regular import open_regular
from blobfs.format.tarfields import (BLOCK, COMPRESSED_MAGIC, DIRTYPE, EXT_TYPE_FLAGS, EXT_TYPES,
                                      GNU_TYPES, HEADER, MAX_EXT_DEPTH, MAX_EXT_SIZE,
                                      REGULAR_TYPES, SUPPORTED_TYPES, ZERO_BLOCK, Header,
                                      HeaderError, nti, nts, round_up, signed_checksum)

#: Read sizes: small after jumping over member data, large while headers are dense.
_SMALL_READ = 4096
_BIG_READ = 64 * 1024
_CACHE_LIMIT = 4096
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
        return self.type in REGULAR_TYPES


# A frozen dataclass's __init__ assigns each field through object.__setattr__; on archives
# of small files that is ~15% of the parse. Members are built through the slot descriptors.
_SET = tuple(TarMember.__dict__[f.name].__set__ for f in fields(TarMember))
_new = object.__new__


def _member(name: str, header_offset: int, offset_data: int, size: int, type_: bytes,
            mode: int, mtime: float, linkname: str) -> TarMember:
    m = _new(TarMember)
    s0, s1, s2, s3, s4, s5, s6, s7 = _SET
    s0(m, name), s1(m, header_offset), s2(m, offset_data), s3(m, size)
    s4(m, type_), s5(m, mode), s6(m, mtime), s7(m, linkname)
    return m


class _Parser:
    """Walks one archive, reproducing TarFile.next() and TarInfo._proc_*.

    tarfile handles extension headers (L, K, x, g) by recursion: the member header is
    processed first, then each extension header applies its change on the way back out, the
    outermost last. Here they are collected in ``pending`` and applied in reverse order,
    which gives the same result without recursion.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.filesize = os.fstat(fd).st_size
        self.globals: dict[str, str] = {}   # tarfile.pax_headers (updated by "g" headers)
        self.globals_sparse = False
        self._buf = b""
        self._buf_start = 0
        # Parse caches (cleared when full). Archives repeat mode/uid/gid/mtime fields, the
        # PAX header block and often its records ("mtime=..."), so most of a typical
        # member's validation is a dict hit.
        self._num_cache: dict[bytes, int] = {}
        self._chk_cache: dict[bytes, int] = {}
        self._ext_cache: dict[bytes, Header] = {}
        self._pax_cache: dict[bytes, tuple[dict[str, str], bool]] = {}

    def error(self, problem: str) -> TarFormatError:
        return TarFormatError(f"{self.path}: {problem}")

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
            raise self.error(f"cannot read at offset {offset}: {e.strerror or e}") from None
        self._buf, self._buf_start = data, offset
        return data[:n]

    # -- one header block (TarInfo.frombuf) ----------------------------------------------
    def _header(self, offset: int) -> Header:
        start = offset - self._buf_start
        buf = self._buf
        if 0 <= start and start + BLOCK <= len(buf):
            block = buf[start:start + BLOCK]
        else:
            block = self._read(offset, BLOCK)
        if len(block) == BLOCK and block[156] in EXT_TYPES:
            hit = self._ext_cache.get(block)
            if hit is None:
                hit = self._frombuf(block, offset)
                if len(self._ext_cache) > _CACHE_LIMIT:
                    self._ext_cache.clear()
                self._ext_cache[block] = hit
            return hit
        return self._frombuf(block, offset)

    def _num(self, field: bytes, offset: int, what: str) -> int:
        """tarfile.nti of a field, cached; tarfile's "invalid header" as HeaderError."""
        n = self._num_cache.get(field)
        if n is None:
            try:
                n = nti(field)
            except ValueError:
                raise HeaderError("invalid", offset, f"invalid {what} field {field!r}") from None
            if len(self._num_cache) > _CACHE_LIMIT:
                self._num_cache.clear()
            self._num_cache[field] = n
        return n

    def _ids(self, field: bytes, offset: int, what: str) -> int:
        """Validate consecutive 8-byte numeric fields (mode+uid+gid, devmajor+devminor)."""
        first = self._num(field[:8], offset, what)
        for i in range(8, len(field), 8):
            self._num(field[i:i + 8], offset, what)
        self._num_cache[field] = first
        return first

    def _frombuf(self, buf: bytes, offset: int) -> Header:
        if len(buf) != BLOCK:
            raise HeaderError("empty" if not buf else "truncated", offset)
        if buf == ZERO_BLOCK:
            raise HeaderError("eof", offset)
        name, ids, size, mtime, chksum, type_, linkname, devs, prefix = HEADER.unpack(buf)
        cache = self._num_cache
        # Unsigned sum with the checksum field counted as 8 spaces (256): adler32's low half
        # is 1 + sum(bytes) mod 65521, exact for 256-byte halves. ``target`` folds the field's
        # own bytes and the +1s in, per distinct checksum field.
        target = self._chk_cache.get(chksum)
        if target is None:
            target = self._num(chksum, offset, "checksum") + sum(chksum) - 254
            if len(self._chk_cache) > _CACHE_LIMIT:
                self._chk_cache.clear()
            self._chk_cache[chksum] = target
        if ((_adler32(buf[:256]) & 0xFFFF) + (_adler32(buf[256:]) & 0xFFFF) != target
                and self._num(chksum, offset, "checksum") != signed_checksum(buf)):
            raise HeaderError("invalid", offset, "bad header checksum")
        mode_n = cache.get(ids)
        if mode_n is None:
            mode_n = self._ids(ids, offset, "mode/uid/gid")
        mtime_n = cache.get(mtime)
        if mtime_n is None:
            mtime_n = self._num(mtime, offset, "mtime")
        if devs not in cache:
            self._ids(devs, offset, "devmajor/devminor")
        p = size.find(0)
        try:
            size_n = int(size[:p] if p >= 0 else size, 8)
        except ValueError:          # base-256, spaces, empty...: the exact slow path
            try:
                size_n = nti(size)
            except ValueError:
                raise HeaderError("invalid", offset, f"invalid size field {size!r}") from None
        p = name.find(0)
        name_s = (name[:p] if p >= 0 else name).decode("utf-8", "surrogateescape")
        link_s = nts(linkname) if linkname[0] else ""
        if type_ == b"\0" and name_s.endswith("/"):
            type_ = DIRTYPE          # old v7: a directory is a regular file named "x/"
        if type_ == DIRTYPE:
            name_s = name_s.rstrip("/")
        if prefix[0] and type_ not in GNU_TYPES:
            name_s = nts(prefix) + "/" + name_s
        return name_s, mode_n, size_n, mtime_n, type_, link_s

    # -- extension headers (TarInfo._proc_gnulong / _proc_pax) ---------------------------
    def _extension(self, header: Header, offset: int, pending: list) -> int:
        """Read the extension header at ``offset``; return where the next header starts."""
        t, size = header[4], header[2]
        n = round_up(size)
        if size < 0 or size > MAX_EXT_SIZE:
            raise self.error(f"extension header at offset {offset} has a bad size ({size})")
        if offset + BLOCK + n > self.filesize:
            raise self.error(f"truncated: extension header at offset {offset} needs "
                             f"{size} bytes, the file ends first")
        if len(pending) >= MAX_EXT_DEPTH:
            raise self.error(f"more than {MAX_EXT_DEPTH} consecutive extension headers "
                             f"at offset {offset}")
        data = self._read(offset + BLOCK, n)
        if t == b"L" or t == b"K":
            pending.append((t, nts(data), offset))
        else:
            cached = self._pax_cache.get(data)
            if cached is None:
                records = self._pax_records(data, offset)
                cached = records, any(k.startswith("GNU.sparse.") for k in records)
                if n <= BLOCK:
                    if len(self._pax_cache) > _CACHE_LIMIT:
                        self._pax_cache.clear()
                    self._pax_cache[data] = cached
            records, sparse = cached
            if t == b"g":
                self.globals.update(records)
                self.globals_sparse = any(k.startswith("GNU.sparse.") for k in self.globals)
                pending.append((t, None, offset))
            else:   # b"x" and Solaris b"X"; records are shared with the cache: read-only
                pax = {**self.globals, **records} if self.globals else records
                # Sparse records describe the member that follows: refused once it is named.
                pending.append((b"S" if sparse else b"x", pax, offset))
        return offset + BLOCK + n

    def _pax_records(self, buf: bytes, offset: int) -> dict[str, str]:
        """``"<len> <keyword>=<value>\n"`` records, framed as CPython >= 3.12 checks them."""
        records = {}
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
            # hdrcharset only matters for non-UTF-8 names, which tarfile then decodes with
            # the file-system encoding: UTF-8 + surrogateescape, as every value is here.
            records[keyword.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape")
            pos += length
        return records

    def _apply_pax(self, pax: dict[str, str], name: str, linkname: str, size: int,
                   mtime: float, offset: int) -> tuple[str, str, int, float]:
        """TarInfo._apply_pax_info for the fields TarMember carries."""
        if "path" in pax:
            name = pax["path"].rstrip("/")
        if "linkpath" in pax:
            linkname = pax["linkpath"]
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                size = 0                 # tarfile's fallback for a bad number
            if size < 0:
                raise self.error(f"negative PAX size {size} for member {quoted(name)} at offset "
                                 f"{offset}")
        if "mtime" in pax:
            try:
                mtime = float(pax["mtime"])
            except ValueError:
                mtime = 0
        return name, linkname, size, mtime

    # -- the archive (TarFile.next) ------------------------------------------------------
    def _header_problem(self, e: HeaderError, offset: int, pending: list) -> TarFormatError:
        if pending:
            what = {"eof": "an end-of-archive block", "empty": "end of file",
                    "truncated": "a truncated header"}.get(e.kind, e.detail)
            return self.error(f"extension header at offset {pending[-1][2]} is followed by "
                              f"{what} at offset {e.offset}")
        if offset == 0:
            head = self._read(0, 8)
            for magic, kind in COMPRESSED_MAGIC:
                if head.startswith(magic):
                    return self.error(f"{kind}-compressed data: compressed tar is not "
                                      "supported, decompress it to a plain .tar first")
            if e.kind == "truncated":
                return self.error(f"not a tar file ({self.filesize} bytes, shorter than one "
                                  "header block)")
            return self.error(f"not a tar file ({e.detail} at offset 0)")
        if e.kind == "truncated":
            return self.error(f"truncated header at offset {offset} (the file ends "
                              f"{self.filesize - offset} bytes into it)")
        return self.error(f"{e.detail} at offset {e.offset}")

    def members(self) -> Iterator[TarMember]:
        offset = 0
        while True:
            pending: list[tuple[bytes, Any, int]] = []
            try:
                header = self._header(offset)
                while header[4] in EXT_TYPE_FLAGS:
                    offset = self._extension(header, offset, pending)
                    header = self._header(offset)
            except HeaderError as e:
                if not pending and e.kind in ("eof", "empty"):
                    return              # first zero block / EOF at a block boundary
                raise self._header_problem(e, offset, pending) from None
            name, mode, size, mtime, t, linkname = header
            if size < 0:
                raise self.error(f"negative size {size} in header at offset {offset}")
            # TarInfo._proc_builtin: only regular and unknown types have data blocks.
            data_at = offset + BLOCK
            has_data = t in REGULAR_TYPES or t not in SUPPORTED_TYPES
            end = data_at + ((size + 511) & -512) if has_data else data_at  # round_up inlined
            if self.globals:
                name, linkname, size, mtime = self._apply_pax(
                    self.globals, name, linkname, size, mtime, offset)
            if t == DIRTYPE:
                name = name.rstrip("/")
            header_offset = offset
            sparse = t == b"S" or self.globals_sparse
            for kind, value, ext_offset in reversed(pending):
                if kind == b"L":
                    name = value.removesuffix("/") if t == DIRTYPE else value
                elif kind == b"K":
                    linkname = value
                elif kind == b"x" or kind == b"S":
                    name, linkname, size, mtime = self._apply_pax(
                        value, name, linkname, size, mtime, ext_offset)
                    if kind == b"S":
                        sparse, name = True, value.get("GNU.sparse.name", name)
                    if "size" in value:
                        end = data_at + round_up(size) if has_data else data_at
                if kind != b"g":
                    header_offset = ext_offset
            if sparse:
                raise self.error(f"member {quoted(name)} at offset {header_offset} is sparse: its "
                                 "data is not stored contiguously, blobfs refuses to serve it")
            if end > self.filesize:
                raise self.error(f"truncated: member {quoted(name)} needs {size} bytes from offset "
                                 f"{data_at}, the file ends at {self.filesize}")
            yield _member(name, header_offset, data_at, size, t, mode, float(mtime), linkname)
            offset = end


def iter_members(path: str | os.PathLike[str]) -> Iterator[TarMember]:
    """Every member of the tar at ``path`` in archive order, as ``tarfile`` lists them.

    Raises ``TarFormatError`` (one line naming the file) for anything that is not a plain,
    intact tar, and for sparse members.
    """
    spath = os.fspath(path)
    try:
        fd = open_regular(spath)
    except OSError as e:
        raise TarFormatError(f"{spath}: cannot open: {e.strerror or e}") from None
    try:
        yield from _Parser(spath, fd).members()
    finally:
        os.close(fd)


def regular_members(path: str | os.PathLike[str]) -> list[TarMember]:
    """``[m for m in tarfile.open(path) if m.isreg()]`` (regular files only, archive order)."""
    return [m for m in iter_members(path) if m.isreg()]
