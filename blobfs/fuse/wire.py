"""The FUSE kernel protocol spoken directly, for the io_uring driver (:mod:`blobfs.fuse.uringsession`).

libfuse 3.14 (Debian 12) cannot speak FUSE over io_uring, and its FUSE_INIT reply cannot ask the
kernel for it, so that driver answers every request itself. The structures are kernel ABI
(include/uapi/linux/fuse.h, protocol 7.x); only what a read-only blobfs mount receives is
decoded. :class:`WireFS` answers exactly as :class:`blobfs.fuse.lowlevel.LowLevelFS` does through
libfuse: ENOSYS for OPEN (zero-message opens), FLUSH, IOCTL, ACCESS and xattrs, so the kernel
stops sending them (or, for IOCTL, answers cheaply); cached directory listings; images need no
node record.
"""
from __future__ import annotations

import errno
import logging
import struct
from typing import Any, Callable

from blobfs.fuse.lowlevel import pack_dirents
from blobfs.fuse.nodes import NodeTable

log = logging.getLogger(__name__)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # struct fuse_attr
_ENTRY = struct.Struct("<QQQQII")  # struct fuse_entry_out, before its fuse_attr
_ATTR_OUT = struct.Struct("<QII")  # struct fuse_attr_out, before its fuse_attr
_OPEN_OUT = struct.Struct("<QIi")
_READ_IN = struct.Struct("<QQI")  # fh offset size (of struct fuse_read_in)
_KSTATFS = struct.Struct("<QQQQQIII4x24x")
_FORGET_ONE = struct.Struct("<QQ")
_INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2
_INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")

LOOKUP, FORGET, GETATTR, OPEN, READ, RELEASE, STATFS = 1, 2, 3, 14, 15, 18, 17
INIT, OPENDIR, READDIR, RELEASEDIR, INTERRUPT, DESTROY, IOCTL, BATCH_FORGET = 26, 27, 28, 29, 36, 38, 39, 42
#: Size of each opcode's fixed argument struct, which FUSE over io_uring delivers apart from
#: the rest of the request (fs/fuse/dev_uring.c ``fuse_uring_args_to_ring``).
OP_IN_SIZE = {FORGET: 8, GETATTR: 16, OPEN: 8, READ: 40, RELEASE: 24, OPENDIR: 8, READDIR: 40,
              RELEASEDIR: 24, INTERRUPT: 8, BATCH_FORGET: 8}
NO_REPLY = frozenset({FORGET, BATCH_FORGET, INTERRUPT})

FUSE_ASYNC_READ, FUSE_ASYNC_DIO, FUSE_PARALLEL_DIROPS = 1 << 0, 1 << 15, 1 << 18
FUSE_MAX_PAGES, FUSE_INIT_EXT, FUSE_OVER_IO_URING = 1 << 22, 1 << 30, 1 << 41
_WANT = FUSE_ASYNC_READ | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_INIT_EXT
FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR = 1 << 1, 1 << 3
#: Pages per READ (1 MiB), as libfuse 3.14 negotiates; the io_uring payload buffers hold this.
MAX_PAGES = 256
MAX_PAYLOAD = MAX_PAGES * 4096
_ENC, _ERRS = "utf-8", "surrogateescape"


class ProtocolError(RuntimeError):
    """The kernel's FUSE_INIT could not be answered (wrong major version)."""


def answer_init(msg: bytes, *, uring: bool) -> tuple[bytes, bool]:
    """The reply to a FUSE_INIT request, and whether FUSE over io_uring was agreed (only when
    the kernel offers it: the ``fuse`` module's ``enable_uring`` is set)."""
    _, opcode, unique, *_ = IN_HEADER.unpack_from(msg)
    if opcode != INIT:
        raise ProtocolError(f"expected FUSE_INIT, got opcode {opcode}")
    major, minor, max_readahead, flags, flags2 = _INIT_IN.unpack_from(msg, IN_HEADER.size)
    if major != 7:
        raise ProtocolError(f"kernel FUSE protocol {major}.{minor}; blobfs speaks 7.x")
    offered = flags | (flags2 << 32 if flags & FUSE_INIT_EXT else 0)
    agreed = offered & (_WANT | (FUSE_OVER_IO_URING if uring else 0))
    body = _INIT_OUT.pack(7, min(minor, 45), max_readahead, agreed & 0xFFFFFFFF, 16, 12, MAX_PAYLOAD, 1,
                          MAX_PAGES, 0, agreed >> 32, 0, 0)
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), 0, unique) + body, bool(agreed & FUSE_OVER_IO_URING)


class WireFS:
    """Request handlers over a view: ``handle`` returns (negative errno, reply body), or None
    for the requests the kernel expects no reply to."""

    def __init__(self, view: Any, nodes: NodeTable, timeout: float) -> None:
        self.view = view
        self.nodes = nodes
        self.timeout = int(timeout)
        self._table: dict[int, Callable[[int, Any, Any], tuple[int, bytes]]] = {
            LOOKUP: self._lookup, GETATTR: self._getattr, READ: self._read, OPENDIR: self._opendir,
            READDIR: self._readdir, STATFS: self._statfs, RELEASE: _ok, RELEASEDIR: _ok, DESTROY: _ok,
        }

    def handle(self, opcode: int, nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes] | None:
        if opcode in NO_REPLY:
            if opcode == FORGET:
                self.nodes.forget(nodeid, struct.unpack_from("<Q", op_in)[0])
            elif opcode == BATCH_FORGET:
                (count,) = struct.unpack_from("<I", op_in)
                for k in range(count):
                    self.nodes.forget(*_FORGET_ONE.unpack_from(payload, 16 * k))
            return None
        fn = self._table.get(opcode)
        if fn is None:
            return -errno.ENOSYS, b""
        try:
            return fn(nodeid, op_in, payload)
        except OSError as e:
            if e.errno:
                return -e.errno, b""
            log.exception("opcode %d failed", opcode)
        except Exception:
            log.exception("opcode %d failed", opcode)
        return -errno.EIO, b""

    def handle_message(self, msg: bytes) -> bytes | None:
        """One request as read from ``/dev/fuse``: the reply to write, or None."""
        _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(msg)
        view = memoryview(msg)[IN_HEADER.size:]
        split = OP_IN_SIZE.get(opcode, 0)
        res = self.handle(opcode, nodeid, view[:split], view[split:])
        if res is None:
            return None
        err, body = res
        return OUT_HEADER.pack(OUT_HEADER.size + len(body), err, unique) + body

    # -- handlers (nodeid, fixed argument struct, rest) ---------------------------------
    def _path(self, nodeid: int) -> str:
        path = self.nodes.path(nodeid)
        if path is None:
            raise OSError(errno.ESTALE, "unknown node")
        return path

    def _attr(self, st: Any) -> bytes:
        sec, ns = divmod(st.mtime_ns, 1_000_000_000)
        return _ATTR.pack(st.ino, st.size, st.blocks, sec, sec, sec, ns, ns, ns, st.mode, st.nlink,
                          st.uid, st.gid, 0, st.blksize, 0)

    def _lookup(self, parent: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
        t = self.timeout
        base = self._path(parent)
        name = bytes(payload).split(b"\0", 1)[0].decode(_ENC, _ERRS)
        path = f"{base}/{name}" if base else name
        try:
            st = self.view.getattr(path)
        except OSError as e:
            if e.errno == errno.ENOENT:  # node id 0 with a timeout: a cacheable negative entry
                return 0, _ENTRY.pack(0, 0, t, t, 0, 0) + bytes(_ATTR.size)
            raise
        return 0, _ENTRY.pack(self.nodes.ref(path, st.ino), 0, t, t, 0, 0) + self._attr(st)

    def _getattr(self, nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
        st = self.view.getattr(self._path(nodeid))
        return 0, _ATTR_OUT.pack(self.timeout, 0, 0) + self._attr(st)

    def _read(self, nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
        _, offset, size = _READ_IN.unpack_from(op_in)
        return 0, self.view.read(self._path(nodeid), size, offset)

    def _opendir(self, nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
        # FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE: see blobfs.fuse.lowlevel.
        return 0, _OPEN_OUT.pack(0, FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, 0)

    def _readdir(self, nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
        _, offset, size = _READ_IN.unpack_from(op_in)
        return 0, pack_dirents(self.view.readdir(self._path(nodeid), offset), size)

    def _statfs(self, nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
        v = {k: max(x, 0) for k, x in self.view.statfs().items()}
        return 0, _KSTATFS.pack(v["f_blocks"], v["f_bfree"], v["f_bavail"], v["f_files"], v["f_ffree"],
                                v["f_bsize"], v["f_namemax"], v["f_frsize"])


def _ok(nodeid: int, op_in: Any, payload: Any) -> tuple[int, bytes]:
    return 0, b""


__all__ = ["IN_HEADER", "MAX_PAYLOAD", "OUT_HEADER", "ProtocolError", "WireFS", "answer_init"]
