"""A deterministic, streaming tar writer tuned for many small files.

Format decision: POSIX ustar headers, with a PAX extended header (``././@PaxHeader``, as Python's
``tarfile`` names it) only where ustar cannot hold a value: a name longer than 100 bytes or not
ASCII, a size of 8 GiB or more, an mtime outside 0..8^11-1. GNU tar, bsdtar and Python's
``tarfile`` read this; the SDK's ``archive_directory`` writes PAX for *every* member (1536
header bytes per file) only because ``tarfile`` stores fractional mtimes. Here a typical member
costs one 512-byte header, and the bytes are a pure function of (names, sizes, mtimes, data):
uid/gid 0, uname/gname empty, mode 0644, integer mtimes, no directory members, no atime/ctime.
The archive ends with two zero blocks and is padded to a 10240-byte record (like tar and
``tarfile``).

Speed: member data of small files is read with ``preadv`` straight into one big output buffer
(no per-file bytes objects), flushed with large writes; files above ``_SMALL`` bytes are copied
in the kernel (``copy_file_range``, else ``sendfile``).
"""
from __future__ import annotations

import os
import stat
from typing import BinaryIO

from blobfs.errors import InputError
from blobfs.write.errors import input_failed, output_failed

BLOCK = 512
RECORD = 20 * BLOCK
_OCTAL_LIMIT = 8**11          # 11 octal digits: ustar's size and mtime fields
_SMALL = 1 << 20              # larger files bypass the buffer
_BUFFER = 4 << 20
_DIRECT = 256 << 10          # writes at least this big bypass the buffer

_MODE_UID_GID = b"0000644\x00" + b"0000000\x00" + b"0000000\x00"


def _tail(typeflag: bytes) -> bytes:
    # typeflag, linkname, magic "ustar\0" + version "00", uname, gname, devmajor, devminor,
    # prefix, pad: bytes 156..512 of the header.
    tail = (typeflag + b"\0" * 100 + b"ustar\x0000" + b"\0" * 64 + b"0000000\x00" * 2
            + b"\0" * 155 + b"\0" * 12)
    assert len(tail) == 356
    return tail


_TAIL_REG = _tail(b"0")
_TAIL_PAX = _tail(b"x")
_CONST_SUM_REG = sum(_MODE_UID_GID) + 8 * 32 + sum(_TAIL_REG)
_CONST_SUM_PAX = sum(_MODE_UID_GID) + 8 * 32 + sum(_TAIL_PAX)
_PAX_NAME = b"././@PaxHeader".ljust(100, b"\0")
_ZEROS = bytes(max(BLOCK, RECORD))


def _ustar(name100: bytes, size: int, mtime: int, tail: bytes, const_sum: int) -> bytes:
    size_f = b"%011o\x00" % size
    mtime_f = b"%011o\x00" % mtime
    csum = const_sum + sum(name100) + sum(size_f) + sum(mtime_f)
    return b"".join((name100, _MODE_UID_GID, size_f, mtime_f, b"%06o\x00 " % csum, tail))


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8")
    n = len(body) + 1
    while len(str(n)) + len(body) != n:  # the length counts its own digits
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


def member_header(name: str, size: int, mtime: int) -> bytes:
    """Header block(s) of a regular-file member: one ustar block, or PAX + ustar when needed."""
    raw = name.encode("utf-8", "surrogateescape")
    records = []
    if len(raw) > 100 or not raw.isascii():
        records.append(_pax_record("path", name))
        raw = name.encode("ascii", "replace")[:100]
    if size >= _OCTAL_LIMIT:
        records.append(_pax_record("size", str(size)))
    if not 0 <= mtime < _OCTAL_LIMIT:
        records.append(_pax_record("mtime", str(mtime)))
    reg = _ustar(raw.ljust(100, b"\0"), size if size < _OCTAL_LIMIT else 0,
                 mtime if 0 <= mtime < _OCTAL_LIMIT else 0, _TAIL_REG, _CONST_SUM_REG)
    if not records:
        return reg
    data = b"".join(records)
    pax = _ustar(_PAX_NAME, len(data), 0, _TAIL_PAX, _CONST_SUM_PAX)
    return pax + data + _ZEROS[: -len(data) % BLOCK] + reg


class TarWriter:
    """Appends regular-file members to a tar being written to ``fd`` (from offset 0).

    ``add_file``/``add_bytes`` return the member's data range ``(start, end)`` — exactly what
    the offsets file records (FORMAT.md §4). ``finish()`` must be called to end the archive.
    """

    def __init__(self, fd: int, label: str, *, mtime: int | None = None) -> None:
        self._fd = fd
        self._label = label           # output name for error messages
        self._mtime = mtime
        self._buf = bytearray(_BUFFER + _SMALL + 4 * BLOCK)
        self._mv = memoryview(self._buf)
        self._used = 0                # bytes of _buf waiting to be written
        self._flushed = 0             # bytes already written to fd

    @property
    def position(self) -> int:
        return self._flushed + self._used

    def _flush(self) -> None:
        mv, used = self._mv, self._used
        done = 0
        try:
            while done < used:
                done += os.write(self._fd, mv[done:used])
        except OSError as e:
            raise output_failed(self._label, e) from None
        self._flushed += used
        self._used = 0

    def _put(self, data: bytes) -> None:
        if len(data) >= _DIRECT:  # big enough to write as it is: skip the copy
            self._flush()
            self._direct(data)
            return
        if self._used + len(data) > _BUFFER:
            self._flush()
        self._mv[self._used : self._used + len(data)] = data
        self._used += len(data)

    def _direct(self, data: bytes) -> None:
        mv, done = memoryview(data), 0
        try:
            while done < len(data):
                done += os.write(self._fd, mv[done:])
        except OSError as e:
            raise output_failed(self._label, e) from None
        self._flushed += len(data)

    def add_bytes(self, name: str, data: bytes, mtime: int | None = None) -> tuple[int, int]:
        """Add a member whose content is ``data``."""
        mt = self._mtime if self._mtime is not None else (mtime or 0)
        self._put(member_header(name, len(data), mt))
        start = self.position
        self._put(data)
        self._put(_ZEROS[: -len(data) % BLOCK])
        return start, start + len(data)

    def add_file(self, name: str, path: str | os.PathLike[str], *,
                 expect_size: int | None = None) -> tuple[int, int]:
        """Add the regular file ``path`` as member ``name`` (symlinks followed).

        Raises InputError when the file vanished, is unreadable, is not a regular file, or
        changed size while being packed (``expect_size`` = size seen when it was listed).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise input_failed(path, e, "while packing") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{os.fspath(path)}: not a regular file")
            size = st.st_size
            if expect_size is not None and size != expect_size:
                raise InputError(f"{os.fspath(path)}: changed size while packing")
            mtime = self._mtime if self._mtime is not None else st.st_mtime_ns // 1_000_000_000
            header = member_header(name, size, mtime)
            if size <= _SMALL:
                return self._add_small(fd, path, header, size)
            return self._add_large(fd, path, header, size)
        except OSError as e:
            raise input_failed(path, e, "while packing") from None
        finally:
            os.close(fd)

    def _add_small(self, fd: int, path: object, header: bytes, size: int) -> tuple[int, int]:
        pad = -size % BLOCK
        if self._used + len(header) + size + pad + 1 > len(self._buf):
            self._flush()
        mv, p = self._mv, self._used
        mv[p : p + len(header)] = header
        p += len(header)
        # Ask for one byte more than the size: a file that grew since fstat shows up here
        # without an extra read(2) at EOF.
        got = os.preadv(fd, [mv[p : p + size + 1]], 0)
        while got < size:
            n = os.preadv(fd, [mv[p + got : p + size + 1]], got)
            if n == 0:
                raise InputError(f"{os.fspath(path)}: changed size while packing")
            got += n
        if got > size:
            raise InputError(f"{os.fspath(path)}: changed size while packing")
        mv[p + size : p + size + pad] = _ZEROS[:pad]
        self._used = p + size + pad
        start = self._flushed + p
        return start, start + size

    def _add_large(self, fd: int, path: object, header: bytes, size: int) -> tuple[int, int]:
        self._put(header)
        self._flush()
        start = self._flushed
        copied = 0
        try:
            copied = _kernel_copy(fd, self._fd, size)
        except _OutputError as e:
            raise output_failed(self._label, e.__cause__) from None  # type: ignore[arg-type]
        if copied != size or os.fstat(fd).st_size != size:
            raise InputError(f"{os.fspath(path)}: changed size while packing")
        self._flushed += size
        self._put(_ZEROS[: -size % BLOCK])
        return start, start + size

    def write_segment(self, pieces: list) -> int:
        """Append a segment from ``build_segment``; returns the archive offset of its start."""
        base = self.position
        for piece in pieces:
            if isinstance(piece, LargeMember):
                self._copy_large(piece)
            else:
                self._put(piece)
        return base

    def _copy_large(self, m: "LargeMember") -> None:
        try:
            fd = os.open(m.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise input_failed(m.path, e, "while packing") from None
        try:
            if os.fstat(fd).st_size != m.size:
                raise InputError(f"{m.path}: changed size while packing")
            self._add_large(fd, m.path, m.header, m.size)
        except OSError as e:
            raise input_failed(m.path, e, "while packing") from None
        finally:
            os.close(fd)

    def finish(self) -> int:
        """Write the end-of-archive blocks and the record padding; return the tar's size."""
        end = self.position + 2 * BLOCK
        self._put(_ZEROS[: 2 * BLOCK + (-end % RECORD)])
        self._flush()
        return self._flushed


class _OutputError(Exception):
    """Marks an OSError raised by the output side of a kernel copy."""


def _kernel_copy(src: int, dst: int, size: int) -> int:
    """Copy ``size`` bytes from the start of ``src`` to ``dst``'s current position."""
    done = 0
    use_cfr = hasattr(os, "copy_file_range")
    while done < size:
        try:
            if use_cfr:
                try:
                    n = os.copy_file_range(src, dst, size - done, done)
                except OSError:  # EXDEV/ENOSYS/EINVAL on some filesystems: plain sendfile
                    use_cfr = False
                    continue
            else:
                n = os.sendfile(dst, src, done, size - done)
        except OSError as e:
            if e.errno in (28, 27, 5, 122):  # ENOSPC EFBIG EIO EDQUOT: the output's fault
                raise _OutputError() from e
            raise
        if n == 0:
            break
        done += n
    return done


def copy_stream(src: BinaryIO, dst_fd: int, label: str) -> int:
    """Copy a file-like object to ``dst_fd`` in big chunks (used for non-blob inputs)."""
    total = 0
    while chunk := src.read(1 << 20):
        mv = memoryview(chunk)
        try:
            while mv:
                n = os.write(dst_fd, mv)
                mv = mv[n:]
        except OSError as e:
            raise output_failed(label, e) from None
        total += len(chunk)
    return total


# -- segments: many small members built in worker threads -------------------------------------
#
# Tar headers hold no offsets, so the bytes of a run of members do not depend on where the run
# lands in the archive. ``build_segment`` turns a chunk of members into those bytes (in a
# worker thread: open/fstat/preadv/close release the GIL, so two workers overlap their system
# calls with each other's Python work and with the main thread's writes); the main thread
# writes segments in order and turns relative data offsets into absolute ones.


class LargeMember:
    """A member too big to buffer: the writer copies it in the kernel."""

    __slots__ = ("member", "path", "header", "size")

    def __init__(self, member: str, path: str, header: bytes, size: int) -> None:
        self.member, self.path, self.header, self.size = member, path, header, size


Piece = "memoryview | LargeMember"
_SEGMENT_BUFFER = 4 << 20
_DIRECT = 256 << 10          # writes at least this big bypass the buffer


def build_segment(members: list, root: str, mtime: int | None
                  ) -> tuple[list, list[tuple[str, int, int]]]:
    """(pieces, entries) for a chunk of (member name, path relative to ``root``, ...).
    ``entries`` are
    (base name, start, end) relative to the segment's first byte; a LargeMember's range
    counts its header, data and padding as the writer will emit them."""
    pieces: list = []
    entries: list[tuple[str, int, int]] = []
    append = entries.append
    o_open, o_fstat, o_preadv, o_close = os.open, os.fstat, os.preadv, os.close
    flags = os.O_RDONLY | os.O_CLOEXEC
    zeros = _ZEROS
    buf = bytearray(_SEGMENT_BUFFER)
    mv = memoryview(buf)
    used = 0
    base = 0  # segment offset of buf[0]
    root = root + "/"
    for m in members:
        member = m[0]
        path = root + m[1]
        try:
            fd = o_open(path, flags)
        except OSError as e:
            raise input_failed(path, e, "while packing") from None
        try:
            st = o_fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{path}: not a regular file")
            size = st.st_size
            mt = mtime if mtime is not None else st.st_mtime_ns // 1_000_000_000
            raw = member.encode("utf-8", "surrogateescape")
            if len(raw) <= 100 and raw.isascii() and 0 <= mt < _OCTAL_LIMIT and size < _OCTAL_LIMIT:
                size_f = b"%011o\x00" % size
                mtime_f = b"%011o\x00" % mt
                csum = _CONST_SUM_REG + sum(raw) + sum(size_f) + sum(mtime_f)
                header = b"".join((raw.ljust(100, b"\0"), _MODE_UID_GID, size_f, mtime_f,
                                   b"%06o\x00 " % csum, _TAIL_REG))
            else:
                header = member_header(member, size, mt)
            pad = -size % BLOCK
            if size > _SMALL:
                if used:
                    pieces.append(mv[:used])
                    base += used
                    buf = bytearray(_SEGMENT_BUFFER)
                    mv, used = memoryview(buf), 0
                pieces.append(LargeMember(member, path, header, size))
                start = base + len(header)
                base = start + size + pad
                append((member.rpartition("/")[2], start, start + size))
                continue
            need = len(header) + size + pad + 1
            if used + need > _SEGMENT_BUFFER:
                pieces.append(mv[:used])
                base += used
                buf = bytearray(_SEGMENT_BUFFER)
                mv, used = memoryview(buf), 0
            p = used + len(header)
            mv[used:p] = header
            # One byte more than the size: a file that grew since fstat shows up here without
            # an extra read(2) at EOF.
            got = o_preadv(fd, [mv[p : p + size + 1]], 0)
            while 0 < got < size:
                n = o_preadv(fd, [mv[p + got : p + size + 1]], got)
                if n == 0:
                    break
                got += n
            if got != size:
                raise InputError(f"{path}: changed size while packing")
            mv[p + size : p + size + pad] = zeros[:pad]
            used = p + size + pad
            append((member.rpartition("/")[2], base + p, base + p + size))
        except OSError as e:
            raise input_failed(path, e, "while packing") from None
        finally:
            o_close(fd)
    if used:
        pieces.append(mv[:used])
    return pieces, entries
