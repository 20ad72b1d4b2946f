"""Copy a run of blob items out of their tar into files of one folder: unpack's hot path.

Unpacking 300k small images is bound by per-file work, so this loop keeps it to what the
kernel must do anyway — per item ``openat`` relative to an fd of the folder (one path
component to look up, not the whole temporary path), ``write``, ``futimens``, ``close`` — and
a handful of C-level Python calls. The tar is read sequentially in spans of up to ``READ``
bytes into one reused buffer (one ``preadv`` per ~200 items instead of one ``pread`` each) and
every file is written from a slice of that buffer, so no bytes object is made per item; a
buffer that stays the same memory is also what keeps it in the CPU cache (see the pack side's
128 KiB flushes in ``tarwriter``).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from blobfs.errors import InputError
from blobfs.write.errors import output_failed

log = logging.getLogger(__name__)

#: Bytes of tar read per system call.
READ = 1 << 20
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def copy_items(names: Sequence[bytes], starts: Sequence[int], ends: Sequence[int], limit: int,
               src_fd: int, src_label: str, dir_fd: int, dir_label: str, mtime_ns: int,
               buf: bytearray) -> int:
    """Write item k (bytes ``starts[k]:ends[k]`` of the tar open as ``src_fd``) to the new file
    ``names[k]`` (file system encoding) of the folder open as ``dir_fd``, with mtime
    ``mtime_ns``; reads never go past tar offset ``limit``. Returns the bytes written.

    A tar shorter than an item's range raises InputError (as the view's EIO would); a failed
    create or write raises WriteFailedError naming the output file."""
    mv = memoryview(buf)
    cap = len(buf)
    lo = hi = 0                      # the tar bytes [lo, hi) are in buf[: hi - lo]
    ns = (mtime_ns, mtime_ns)
    o_open, o_write, o_utime, o_close, preadv = os.open, os.write, os.utime, os.close, os.preadv
    total = 0
    name = b""
    fd = -1
    try:
        for name, s, e in zip(names, starts, ends):
            if s < lo or e > hi:
                if e - s > cap:
                    total += _copy_big(name, s, e, src_fd, src_label, dir_fd, dir_label, ns, mv)
                    continue
                try:
                    n = preadv(src_fd, [mv[: min(cap, max(limit, e) - s)]], s)
                except OSError as err:
                    raise InputError(f"{src_label}: {err.strerror or err}") from None
                lo, hi = s, s + n
                if hi < e:
                    raise _short(src_label, name, hi - s, e - s)
            fd = o_open(name, _FLAGS, 0o666, dir_fd=dir_fd)
            if e > s:
                n = o_write(fd, mv[s - lo : e - lo])
                if n != e - s:  # a regular file takes it all unless the disk is full
                    _write_rest(fd, mv[s - lo + n : e - lo])
            o_utime(fd, ns=ns)
            o_close(fd)
            fd = -1
            total += e - s
    except OSError as err:
        if fd >= 0:
            o_close(fd)
        raise output_failed(f"{dir_label}/{os.fsdecode(name)}", err) from None
    return total


def _write_rest(fd: int, mv: memoryview) -> None:
    while mv:
        mv = mv[os.write(fd, mv):]


def _copy_big(name: bytes, s: int, e: int, src_fd: int, src_label: str, dir_fd: int,
              dir_label: str, ns: tuple[int, int], mv: memoryview) -> int:
    """An item larger than the buffer: read and written one buffer at a time."""
    fd = os.open(name, _FLAGS, 0o666, dir_fd=dir_fd)
    try:
        pos = s
        while pos < e:
            try:
                n = os.preadv(src_fd, [mv[: min(len(mv), e - pos)]], pos)
            except OSError as err:
                raise InputError(f"{src_label}: {err.strerror or err}") from None
            if n == 0:
                raise _short(src_label, name, pos - s, e - s)
            _write_rest(fd, mv[:n])
            pos += n
        os.utime(fd, ns=ns)
    finally:
        os.close(fd)
    return e - s


def _short(src_label: str, name: bytes, got: int, want: int) -> InputError:
    item = os.fsdecode(name)
    log.error("%s: short read for item %r (%d of %d bytes): file changed or truncated",
              src_label, item, got, want)
    return InputError(f"{src_label}: short read for item {item!r}")


def copy_files(names: Sequence[str], src_fd: int, src_label: str, dir_fd: int,
               dir_label: str) -> int:
    """Copy the regular files ``names`` of the folder open as ``src_fd`` (symlinks followed,
    as the view does) to new files of the folder open as ``dir_fd``, with their mtimes; as
    many bytes as ``fstat`` gave when opened, READ at a time. Returns the bytes written."""
    total = 0
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=src_fd)
        except OSError as err:
            raise InputError(f"{src_label}/{name}: {err.strerror or err}") from None
        try:
            st = os.fstat(fd)
            try:
                out = os.open(name, _FLAGS, 0o666, dir_fd=dir_fd)
            except OSError as err:
                raise output_failed(f"{dir_label}/{name}", err) from None
            try:
                done = 0
                while done < st.st_size:
                    try:
                        data = os.read(fd, min(READ, st.st_size - done))
                    except OSError as err:
                        raise InputError(f"{src_label}/{name}: {err.strerror or err}") from None
                    if not data:
                        raise InputError(
                            f"{src_label}/{name}: ends after {done} of {st.st_size} bytes")
                    _write_rest(out, memoryview(data))
                    done += len(data)
                os.utime(out, ns=(st.st_mtime_ns, st.st_mtime_ns))
            except OSError as err:
                raise output_failed(f"{dir_label}/{name}", err) from None
            finally:
                os.close(out)
        finally:
            os.close(fd)
        total += st.st_size
    return total
