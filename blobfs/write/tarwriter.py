"""Deterministic tar bytes for many small files, written at precomputed offsets.

Format decision: POSIX ustar headers, with a PAX extended header (``././@PaxHeader``, as Python's
``tarfile`` names it) only where ustar cannot hold a value: a name longer than 100 bytes or not
ASCII, or a size of 8 GiB or more. GNU tar, bsdtar and Python's ``tarfile`` read this; the
SDK's ``archive_directory`` writes PAX for *every* member (1536 header bytes per file) only
because ``tarfile`` stores fractional mtimes. Here a typical member costs one 512-byte header,
and the bytes are a pure function of (names, sizes, mtimes, data): uid/gid 0, uname/gname
empty, mode 0644, integer mtimes clamped to ustar's range (before 1970 → 0, after 2242-03-16
→ ``MTIME_MAX``; counted, so that pack can say so), no directory members. A PAX ``mtime``
record could hold any mtime, but it would make a header's length depend on the mtime, which
pack-project learns only from the workers' fstat, after the layout is fixed. The archive
ends with two zero blocks and is padded to a 10240-byte record (like tar and ``tarfile``).

Because a header's *length* depends only on the name and the size, the offset of every member
is known before any data is read (``member_span``). ``fill_span`` writes a run of members at
their offsets with ``pwrite``, so several processes can fill one tar at once
(``blobfs.write.blobwriter``). Data of small files is read with ``preadv`` straight into one
reused buffer (no per-file bytes objects); files above ``SMALL`` are copied in the kernel
(``copy_file_range`` at an explicit offset, else read/pwrite).
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import stat
import struct
from typing import Sequence

from blobfs.errors import InputError
from blobfs.write.errors import input_failed, output_failed

BLOCK = 512
RECORD = 20 * BLOCK
OCTAL_LIMIT = 8**11           # 11 octal digits: ustar's size and mtime fields
MTIME_MAX = OCTAL_LIMIT - 1   # 2242-03-16 12:56:31 UTC: the latest mtime a ustar header holds
_LATEST = _dt.datetime.fromtimestamp(MTIME_MAX, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
#: What a ustar header's mtime field holds (11 octal digits).
MTIME_RANGE = f"a tar header holds 0 (1970-01-01) to {MTIME_MAX} ({_LATEST})"
SMALL = 1 << 20               # larger files bypass the buffer
BUFFER = 4 << 20              # per-writer buffer: room for any file up to SMALL
#: Flush once this much is buffered. Small on purpose: the buffer then stays in the CPU cache
#: between the read that fills it and the write that empties it; a 4 MiB buffer made the
#: kernel's copy into the page cache a memory-to-memory copy (300k files on ext4, 2 CPUs:
#: pack sys 5-7 s with 4 MiB flushes, 2.2-4.1 s with 128 KiB; GNU tar writes 10 KiB records).
FLUSH = 128 << 10

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
#: A whole ustar block: name (NUL-padded by struct), mode+uid+gid, size, mtime, checksum, tail.
_USTAR = struct.Struct("100s24s12s12s8s356s")
#: A member's mtime when it was not listed: fstat the file for it (int64 min, no real mtime).
NO_MTIME = -(1 << 63)
ZEROS = bytes(RECORD)


def _ustar(name: bytes, size: int, mtime: int, tail: bytes, const_sum: int) -> bytes:
    size_f = b"%011o\x00" % size
    mtime_f = b"%011o\x00" % mtime
    csum = const_sum + sum(name) + sum(size_f) + sum(mtime_f)
    return b"".join((name.ljust(100, b"\0"), _MODE_UID_GID, size_f, mtime_f,
                     b"%06o\x00 " % csum, tail))


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8")
    n = len(body) + 1
    while len(str(n)) + len(body) != n:  # the length counts its own digits
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


def clamped_note(count: int) -> str:
    """The one warning of a pack that clamped ``count`` files' own mtimes."""
    return (f"{count} file(s) with an mtime before 1970 or after {_LATEST}, out of what a tar "
            f"header holds: stored as the nearest it holds (--mtime sets one for all)")


def clamp_mtime(mtime: int) -> int:
    return min(max(mtime, 0), MTIME_MAX)


def member_header(name: str, size: int, mtime: int) -> bytes:
    """Header block(s) of a regular-file member: one ustar block, or PAX + ustar when needed."""
    raw = name.encode("utf-8")
    mtime = clamp_mtime(mtime)
    if len(raw) <= 100 and raw.isascii() and size < OCTAL_LIMIT:
        return _ustar(raw, size, mtime, _TAIL_REG, _CONST_SUM_REG)
    records = []
    if len(raw) > 100 or not raw.isascii():
        records.append(_pax_record("path", name))
        raw = name.encode("ascii", "replace")[:100]
    if size >= OCTAL_LIMIT:
        records.append(_pax_record("size", str(size)))
    reg = _ustar(raw, size if size < OCTAL_LIMIT else 0, mtime, _TAIL_REG, _CONST_SUM_REG)
    data = b"".join(records)
    pax = _ustar(_PAX_NAME, len(data), 0, _TAIL_PAX, _CONST_SUM_PAX)
    return pax + data + ZEROS[: -len(data) % BLOCK] + reg


def header_length(name: str, size: int) -> int:
    """len(member_header(name, size, any mtime)): mtimes never change a header's length."""
    if size < OCTAL_LIMIT and len(name) <= 100 and name.isascii():
        return BLOCK
    return len(member_header(name, size, 0))


def member_span(name: str, size: int) -> int:
    """Bytes a member occupies: headers + data + padding."""
    return header_length(name, size) + size + (-size % BLOCK)


def archive_size(end_of_members: int) -> int:
    """Final tar size: two zero blocks after the members, then padding to a whole record."""
    end = end_of_members + 2 * BLOCK
    return end + (-end % RECORD)


class _Out:
    """pwrite-only view of the output: one buffer, flushed at its file offset.

    ``turn``: (read end, write end) of a pipe holding one byte, shared by the processes that
    fill one output; a flush takes the byte and puts it back. Buffered writes to one file are
    serialized by the kernel anyway (ext4 holds the inode's i_rwsem for the whole write), but
    a waiter there spins on the lock owner (``rwsem_spin_on_owner``) for the full length of a
    multi-MiB write, burning the CPU the other worker needs for reading; blocked on the pipe
    it sleeps. 300k files on ext4, 2 CPUs, interleaved runs: pack sys 4.3-10 s -> 4-6.4 s.
    """

    __slots__ = ("fd", "label", "buf", "mv", "used", "at", "turn")

    def __init__(self, fd: int, label: str, at: int, buf: bytearray | None = None,
                 turn: tuple[int, int] | None = None) -> None:
        self.fd, self.label, self.at, self.turn = fd, label, at, turn
        self.buf = buf if buf is not None else bytearray(BUFFER + BLOCK)
        assert len(self.buf) >= BUFFER + BLOCK
        self.mv = memoryview(self.buf)
        self.used = 0

    def flush(self) -> None:
        done, used = 0, self.used
        turn = self.turn
        if turn is not None:
            os.read(turn[0], 1)
        try:
            while done < used:
                done += os.pwrite(self.fd, self.mv[done:used], self.at + done)
        except OSError as e:
            raise output_failed(self.label, e) from None
        finally:
            if turn is not None:
                os.write(turn[1], b".")
        self.at += used
        self.used = 0


def flat_chunks(paths: list[str], chunk: int) -> list[bytes]:
    """``paths`` in runs of ``chunk``, each run one NUL-separated bytes object (file system
    encoding: what ``open`` would pass to the kernel)."""
    return ["\0".join(paths[lo : lo + chunk]).encode("utf-8", "surrogateescape")
            for lo in range(0, len(paths), chunk)]


def fill_span(names: list[bytes], paths: list[bytes], sizes: Sequence[int], mtimes: Sequence[int],
              start: int, root: str, out_fd: int, out_label: str, mtime: int | None,
              buf: bytearray | None = None, turn: tuple[int, int] | None = None) -> int:
    """Write a run of members as tar bytes from file offset ``start`` (the offset
    ``member_span`` gives the first): member names and paths relative to ``root`` (both in
    the file system encoding), sizes, and mtimes (``NO_MTIME``: fstat the file for it).
    ``mtime`` (if not None) overrides every member's. Returns how many files' own mtimes
    were clamped (see the module doc).

    Raises InputError when an input vanished, is not a regular file or changed size since it
    was listed; WriteFailedError when the output cannot be written.
    """
    out = _Out(out_fd, out_label, start, buf, turn)
    root = root + "/"
    # Paths relative to an fd of the root: the kernel walks one component per file, not the
    # whole root path again (__d_lookup_rcu was 5.6% of a 300k pack's perf samples).
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise input_failed(root, e, "while packing") from None
    try:
        used, clamped = _fill(names, paths, sizes, mtimes, root, root_fd, out, mtime)
    finally:
        os.close(root_fd)
    out.used = used
    out.flush()
    return clamped


def _fill(names: list[bytes], paths: list[bytes], sizes: Sequence[int], mtimes: Sequence[int],
          root: str, root_fd: int, out: _Out, mtime: int | None) -> tuple[int, int]:
    mv = out.mv
    limit = FLUSH - BLOCK - 1           # room for a one-block header and the one extra byte
    o_open, o_fstat, o_preadv, o_close = os.open, os.fstat, os.preadv, os.close
    # O_NONBLOCK: a file swapped for a FIFO after listing must not block open(2) (no effect on
    # a regular file); its read then comes up short and is reported as changed.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    zeros = memoryview(ZEROS)
    pack_header = _USTAR.pack_into
    mode_f, tail, const_sum = _MODE_UID_GID, _TAIL_REG, _CONST_SUM_REG
    last_mt, mtime_f, mtime_sum = -1, b"", 0
    used = clamped = 0
    for raw, rel, size, listed_mtime in zip(names, paths, sizes, mtimes):
        try:
            fd = o_open(rel, flags, dir_fd=root_fd)
        except OSError as e:
            raise input_failed(root + os.fsdecode(rel), e, "while packing") from None
        try:
            if listed_mtime == NO_MTIME or size > SMALL:
                st = o_fstat(fd)
                if st.st_size != size or not stat.S_ISREG(st.st_mode):
                    raise InputError(f"{root}{os.fsdecode(rel)}: changed while packing "
                                     "(size or type)")
                listed_mtime = st.st_mtime_ns // 1_000_000_000
            # else: stat'ed when listed; a size change still shows in the read below.
            mt = mtime if mtime is not None else listed_mtime
            pad = -size % BLOCK
            if (len(raw) <= 100 and raw.isascii() and 0 <= mt < OCTAL_LIMIT and size <= SMALL):
                # The common member, inlined (this loop is the hot path): one ustar block
                # packed straight into the buffer; files of one folder mostly share an mtime.
                if mt != last_mt:
                    last_mt, mtime_f = mt, b"%011o\x00" % mt
                    mtime_sum = sum(mtime_f)
                if used and used + size + pad > limit:
                    out.used = used
                    out.flush()
                    used = 0
                size_f = b"%011o\x00" % size
                pack_header(mv, used, raw, mode_f, size_f, mtime_f,
                            b"%06o\x00 " % (const_sum + sum(raw) + sum(size_f) + mtime_sum), tail)
                p = used + BLOCK
            else:
                if not 0 <= mt < OCTAL_LIMIT:
                    clamped += 1  # a file's own (write_blob refuses such an ``mtime`` for all)
                header = member_header(os.fsdecode(raw), size, mt)
                out.used = used
                if size > SMALL:
                    _large(out, fd, root + os.fsdecode(rel), header, size, pad)
                    used = out.used
                    continue
                if used + len(header) + size + pad + 1 > BUFFER:
                    out.flush()
                    used = 0
                p = used + len(header)
                mv[used:p] = header
            # One byte more than the size: a file that grew since it was listed shows up here
            # without an extra read(2) at EOF.
            got = o_preadv(fd, [mv[p : p + size + 1]], 0)
            while 0 < got < size:
                n = o_preadv(fd, [mv[p + got : p + size + 1]], got)
                if n == 0:
                    break
                got += n
            if got != size:
                raise InputError(f"{root}{os.fsdecode(rel)}: changed size while packing")
            used = p + size
            if pad:
                mv[used : used + pad] = zeros[:pad]
                used += pad
        except OSError as e:
            raise input_failed(root + os.fsdecode(rel), e, "while packing") from None
        finally:
            o_close(fd)
    return used, clamped


def _large(out: _Out, fd: int, path: str, header: bytes, size: int, pad: int) -> None:
    out.mv[out.used : out.used + len(header)] = header
    out.used += len(header)
    out.flush()
    done = 0
    use_cfr = hasattr(os, "copy_file_range")
    while done < size:
        try:
            if use_cfr:
                try:
                    n = os.copy_file_range(fd, out.fd, size - done, done, out.at + done)
                except OSError as e:  # EXDEV/ENOSYS/EINVAL on some filesystems: plain copy
                    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
                        raise output_failed(out.label, e) from None
                    use_cfr = False
                    continue
            else:
                chunk = os.pread(fd, min(size - done, BUFFER), done)
                n = os.pwrite(out.fd, chunk, out.at + done) if chunk else 0
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise output_failed(out.label, e) from None
            raise
        if n == 0:
            raise InputError(f"{path}: changed size while packing")
        done += n
    if os.fstat(fd).st_size != size:
        raise InputError(f"{path}: changed size while packing")
    out.at += size
    out.mv[:pad] = ZEROS[:pad]
    out.used = pad


def write_trailer(fd: int, label: str, end_of_members: int) -> int:
    """The end-of-archive blocks and record padding; returns the tar's size."""
    total = archive_size(end_of_members)
    try:
        os.pwrite(fd, bytes(total - end_of_members), end_of_members)
        os.ftruncate(fd, total)
    except OSError as e:
        raise output_failed(label, e) from None
    return total
