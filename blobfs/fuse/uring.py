"""A minimal io_uring for FUSE over io_uring (Linux 6.14+), through raw syscalls and ctypes.

Only what one FUSE queue worker needs: a ring of 128-byte SQEs (``IORING_SETUP_SQE128``: a
``IORING_OP_URING_CMD`` carries ``struct fuse_uring_cmd_req`` in the SQE's 80-byte command area),
REGISTER and COMMIT_AND_FETCH commands, and reaping completions. Layouts are kernel ABI
(include/uapi/linux/io_uring.h, include/uapi/linux/fuse.h; Documentation/filesystems/
fuse-io-uring.rst). x86-64 only: the ring indices are plain 32-bit stores and loads from Python,
which need no fence under x86-64's total store order; elsewhere the driver is not offered.

Why FUSE over io_uring at all: the kernel then keeps one request queue per CPU and hands a
request to the queue of the CPU that sent it, waking only the worker that serves that queue
(fs/fuse/dev_uring.c ``fuse_uring_task_to_queue``). With ``/dev/fuse`` every waiting worker is
woken for every request. And a worker answers one request and waits for the next in one
``io_uring_enter`` instead of poll + read + write + read.

The ring is shared with an optional compiled loop (``_uringloop.c``, see :func:`fast_loop`) that
answers the isatty() ioctl of every Python ``open()`` without entering Python: both sides read
the SQ tail back from the ring and keep the commit ids in one ctypes array.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import importlib.machinery
import logging
import mmap
import os
import platform
import struct
from pathlib import Path

log = logging.getLogger(__name__)

_SYS_SETUP, _SYS_ENTER = 425, 426  # the same numbers on every architecture (asm-generic)
_SETUP_CQSIZE, _SETUP_SQE128 = 1 << 3, 1 << 10
_ENTER_GETEVENTS = 1
_OFF_SQES = 0x10000000
_OP_URING_CMD = 46
CMD_REGISTER, CMD_COMMIT_AND_FETCH = 1, 2  # enum fuse_uring_cmd
_SQE_SIZE = 128
#: An SQE up to the end of its command: opcode flags ioprio fd cmd_op pad addr len rw_flags
#: user_data, 8 bytes of buf_index/personality/file_index (zero), then the command area's
#: ``struct fuse_uring_cmd_req`` (flags commit_id qid).
_SQE = struct.Struct("<BBHiIIQIIQ8xQQH6x")
_CQE = struct.Struct("<QiI")
#: ``struct fuse_uring_req_header``: in_out[128] (fuse_in_header, then fuse_out_header),
#: op_in[128], then ``struct fuse_uring_ent_in_out`` (flags, commit_id, payload_sz, ...).
OP_IN_AT, ENT_AT = 128, 256
#: A delivered request: ``struct fuse_in_header`` (len opcode unique nodeid uid gid pid
#: total_extlen padding), then, past op_in, commit_id and payload_sz of ``fuse_uring_ent_in_out``.
REQUEST = struct.Struct("<IIQQIIIHH216x8xQI")
REPLY_SIZE_AT = ENT_AT + 16
HEADER_SIZE = 4096  # one page: the kernel pins it
ENABLE = Path("/sys/module/fuse/parameters/enable_uring")
_IO_URING_DISABLED = Path("/proc/sys/kernel/io_uring_disabled")

_u32 = ctypes.c_uint32


class _SqOff(ctypes.Structure):
    _fields_ = [(n, _u32) for n in ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped",
                                    "array", "resv1")] + [("user_addr", ctypes.c_uint64)]


class _CqOff(ctypes.Structure):
    _fields_ = [(n, _u32) for n in ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes",
                                    "flags", "resv1")] + [("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [(n, _u32) for n in ("sq_entries", "cq_entries", "flags", "sq_thread_cpu",
                                    "sq_thread_idle", "features", "wq_fd")] + [
        ("resv", _u32 * 3), ("sq_off", _SqOff), ("cq_off", _CqOff)]


def kernel_offers() -> str | None:
    """None when this kernel will agree to FUSE over io_uring, else why not (one phrase)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"not on {platform.machine()}"
    try:
        value = ENABLE.read_text().strip()
    except OSError:
        return "this kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)"
    if value not in ("Y", "1"):
        return f"it is off in the kernel ({ENABLE} is {value})"
    try:  # 1: only for members of kernel.io_uring_group; 2: for nobody
        disabled = int(_IO_URING_DISABLED.read_text().strip() or 0)
    except (OSError, ValueError):
        disabled = 0
    if disabled == 2 or (disabled == 1 and os.geteuid() != 0):
        return f"io_uring is disabled ({_IO_URING_DISABLED} is {disabled})"
    return None


def _addr(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class Entry:
    """One ring entry: a header page and a payload buffer the kernel copies requests into."""

    def __init__(self, qid: int, payload_size: int) -> None:
        self.qid = qid
        self.header = mmap.mmap(-1, HEADER_SIZE)
        self.payload = mmap.mmap(-1, payload_size)
        self.iov = (ctypes.c_uint64 * 4)(_addr(self.header), HEADER_SIZE, _addr(self.payload), payload_size)
        self.op_in = memoryview(self.header)[OP_IN_AT:ENT_AT]
        self.payload_view = memoryview(self.payload)


_ptr, _s32 = ctypes.c_void_p, ctypes.c_int32


class _CRing(ctypes.Structure):
    """``struct blobfs_ring`` of _uringloop.c."""
    _fields_ = [("ring_fd", _s32), ("fuse_fd", _s32), ("sq_head", _ptr), ("sq_tail", _ptr), ("sq_mask", _u32),
                ("sqes", _ptr), ("cq_head", _ptr), ("cq_tail", _ptr), ("cq_mask", _u32), ("cqes", _ptr),
                ("n_entries", _u32), ("headers", _ptr), ("commit_ids", _ptr), ("qids", _ptr),
                ("answered", ctypes.c_uint64), ("user_data", ctypes.c_uint64), ("res", _s32)]


#: Set (to anything but "" or "0") to answer every request in Python: for measuring what the
#: compiled loop saves, and a way around it should it ever misbehave.
PURE_PYTHON_ENV = "BLOBFS_PURE_PYTHON"


def fast_loop() -> ctypes.CDLL | None:
    """The compiled loop that answers ioctl requests without Python (blobfs/fuse/_uringloop.c,
    an optional extension): None where it was not built, or with ``$BLOBFS_PURE_PYTHON`` set."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    return _load_fast_loop()


@functools.cache
def _load_fast_loop() -> ctypes.CDLL | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = Path(__file__).with_name("_uringloop" + suffix)
        if path.exists():
            try:
                lib = ctypes.CDLL(str(path))
                lib.blobfs_uring_next.argtypes = [ctypes.POINTER(_CRing)]
            except (OSError, AttributeError) as e:
                log.warning("cannot load %s: %s; answering every request in Python", path.name, e)
                return None
            return lib
    return None


def compiled_loop(debug: bool) -> bool:
    """Whether a worker's compiled loop answers ioctls: it is built and loadable
    (:func:`fast_loop`), and ``-o debug``, which logs every request, is off."""
    return not debug and fast_loop() is not None


class Ring:
    """An io_uring instance whose SQEs are all FUSE commands on one ``/dev/fuse`` fd, with one
    :class:`Entry` per FUSE queue it serves (user_data: the entry's index).

    ``fast``: let the compiled loop (:func:`fast_loop`) answer ioctl requests itself when it is
    built; :meth:`reap` then hands back only the other requests."""

    def __init__(self, fuse_fd: int, entries: list[Entry], fast: bool = True) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = self._libc.syscall
        self._syscall.restype = ctypes.c_long
        n = len(entries)
        p = _Params()
        p.flags = _SETUP_SQE128 | _SETUP_CQSIZE
        p.cq_entries = 2 * n
        fd = self._syscall(_SYS_SETUP, ctypes.c_uint(n), ctypes.byref(p))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_uring_setup: {os.strerror(e)}")
        self.fd = int(fd)
        self._fuse_fd = fuse_fd
        self.entries = entries
        #: per entry, the id of the request in its buffers: 0 until the first (never a valid id);
        #: shared with the compiled loop, which answers requests too
        self.commit_ids = (ctypes.c_uint64 * n)()
        size = max(p.sq_off.array + 4 * p.sq_entries, p.cq_off.cqes + _CQE.size * p.cq_entries)
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        self._rings = mmap.mmap(self.fd, size, mmap.MAP_SHARED, rw, offset=0)
        self._sqes = mmap.mmap(self.fd, _SQE_SIZE * p.sq_entries, mmap.MAP_SHARED, rw, offset=_OFF_SQES)
        self._u32 = memoryview(self._rings).cast("I")
        so, co = p.sq_off, p.cq_off
        for i in range(p.sq_entries):  # SQ array slot i always names SQE i
            self._u32[so.array // 4 + i] = i
        self._sq_head, self._sq_tail = so.head // 4, so.tail // 4
        self._sq_mask = self._u32[so.ring_mask // 4]
        self._cq_head, self._cq_tail = co.head // 4, co.tail // 4
        self._cq_mask = self._u32[co.ring_mask // 4]
        self._cqes = co.cqes
        lib = fast_loop() if fast else None
        self._c: _CRing | None = None
        if lib is not None:
            base = _addr(self._rings)
            # the struct points into these arrays: they live as long as the ring
            self._headers = (ctypes.c_void_p * n)(*(_addr(e.header) for e in entries))
            self._qids = (ctypes.c_uint16 * n)(*(e.qid for e in entries))
            self._c = _CRing(self.fd, fuse_fd, base + so.head, base + so.tail, self._sq_mask, _addr(self._sqes),
                             base + co.head, base + co.tail, self._cq_mask, base + co.cqes, n,
                             ctypes.addressof(self._headers), ctypes.addressof(self.commit_ids),
                             ctypes.addressof(self._qids))
            self._next = lib.blobfs_uring_next

    @property
    def answered_in_c(self) -> int:
        """How many requests the compiled loop answered (0 without it)."""
        return self._c.answered if self._c is not None else 0

    def register(self, k: int) -> None:
        """Queue REGISTER: hand the kernel entry ``k``'s buffers for its queue's next request."""
        entry = self.entries[k]
        self._queue(CMD_REGISTER, ctypes.addressof(entry.iov), 2, k, 0, entry.qid)

    def commit(self, k: int, commit_id: int) -> None:
        """Queue COMMIT_AND_FETCH: send the reply to request ``commit_id`` written in entry
        ``k``'s buffers, and wait for the next request in them."""
        self.commit_ids[k] = commit_id
        self._queue(CMD_COMMIT_AND_FETCH, 0, 0, k, commit_id, self.entries[k].qid)

    def _queue(self, cmd_op: int, addr: int, n: int, user_data: int, commit_id: int, qid: int) -> None:
        # Past the command area an SQE stays as the kernel mapped it: zero. The tail is read
        # back from the ring, because the compiled loop queues SQEs too.
        tail = self._u32[self._sq_tail]
        _SQE.pack_into(self._sqes, (tail & self._sq_mask) * _SQE_SIZE, _OP_URING_CMD, 0, 0, self._fuse_fd,
                       cmd_op, 0, addr, n, 0, user_data, 0, commit_id, qid)
        self._u32[self._sq_tail] = (tail + 1) & 0xFFFFFFFF

    def submit_and_wait(self) -> bool:
        """Submit what is queued and wait for a completion; False if a signal came first."""
        n = (self._u32[self._sq_tail] - self._u32[self._sq_head]) & 0xFFFFFFFF
        res = self._syscall(_SYS_ENTER, self.fd, n, 1, _ENTER_GETEVENTS, None, 0)
        if res < 0:
            e = ctypes.get_errno()
            if e == errno.EINTR:
                return False
            raise OSError(e, f"io_uring_enter: {os.strerror(e)}")
        return True

    def completions(self) -> list[tuple[int, int]]:
        """(user_data, result) of every completion, oldest first; the CQ ring is then empty."""
        u32 = self._u32
        head, tail = u32[self._cq_head], u32[self._cq_tail]
        out = []
        while head != tail:
            user_data, res, _ = _CQE.unpack_from(self._rings, self._cqes + (head & self._cq_mask) * _CQE.size)
            out.append((user_data, res))
            head = (head + 1) & 0xFFFFFFFF
        u32[self._cq_head] = head
        return out

    def reap(self) -> list[tuple[int, int]]:
        """Submit what is queued, wait, and return the completions Python must handle
        ((entry index, result), oldest first); empty when a signal came first. With the
        compiled loop, ioctl requests are answered and resubmitted on the way."""
        if self._c is None:
            return self.completions() if self.submit_and_wait() else []
        err = self._next(self._c)
        if err == 0:
            return [(self._c.user_data, self._c.res)]
        if err == -errno.EINTR:
            return []
        raise OSError(-err, f"io_uring_enter: {os.strerror(-err)}")


__all__ = ["CMD_COMMIT_AND_FETCH", "CMD_REGISTER", "ENT_AT", "Entry", "HEADER_SIZE", "OP_IN_AT", "REPLY_SIZE_AT",
           "PURE_PYTHON_ENV", "REQUEST", "Ring", "compiled_loop", "fast_loop", "kernel_offers"]
