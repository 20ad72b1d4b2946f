"""The FUSE adapter on libfuse 3's low-level API: nodeids in, ``ClassicView`` calls, errno out.

Used by default on libfuse 3 (see :mod:`blobfs.fuse.binding`); :mod:`blobfs.fuse.ops` is the
same adapter on the fusepy ``Operations`` API, used on libfuse 2, with plain fusepy, and on
request. Both answer the same requests the same way; this one exists for what the high-level
API cannot do on the libfuse releases Debian ships:

* OPENDIR replies FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, so the kernel keeps each listing in the
  directory's page cache and a warm ``find``/``ls`` never reaches the daemon (kernel
  fs/fuse/readdir.c ``fuse_readdir_cached``; high-level libfuse < 3.16.1 drops the flag,
  https://github.com/libfuse/libfuse/issues/821).
* READDIR replies are packed here in one go (``struct fuse_dirent`` is kernel ABI,
  include/uapi/linux/fuse.h), instead of one ctypes call into libfuse's filler per name.
* Images need no node table entry (:mod:`blobfs.fuse.nodes`).

Everything else mirrors :mod:`blobfs.fuse.ops`: OPEN answers ENOSYS once (zero-message opens:
the kernel stops sending OPEN and RELEASE, fs/fuse/file.c ``fuse_file_open``), FLUSH, IOCTL,
ACCESS, xattrs and the write-type requests are left NULL, so libfuse answers them in C with
ENOSYS and the kernel stops asking (or, for writes, the ``ro`` mount refuses them first).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import signal
import struct
from types import ModuleType
from typing import Any, Callable

from blobfs.fuse import cpuworkers, pollloop, uring
from blobfs.fuse.lowlevel_abi import FuseArgs, LowLevelOps, Prototypes
from blobfs.fuse.options import escape_opt
from blobfs.fuse.nodelog import NodeLog
from blobfs.fuse.nodes import NodeTable

log = logging.getLogger(__name__)

_DIRENT = struct.Struct("=QQII")  # struct fuse_dirent: ino, off, namelen, type; name; pad to 8
_ENC, _ERRS = "utf-8", "surrogateescape"


class LowLevelFS:
    """Callbacks for ``struct fuse_lowlevel_ops`` over a view (see :mod:`blobfs.fuse.ops`)."""

    def __init__(self, view: Any, mod: ModuleType, *, timeout: float,
                 on_init: Callable[[], None] | None = None) -> None:
        self.view = view
        self.api = Prototypes(mod)
        self.nodes = NodeTable(view.ids.node_path, view.ids.item_json_node)
        self.timeout = timeout
        self._on_init = on_init
        self._refs: list[Any] = []  # the ctypes callbacks must outlive the session
        self.ops = LowLevelOps()
        for name, proto in self.api.callbacks.items():
            cb = proto(getattr(self, "_" + name))
            self._refs.append(cb)
            setattr(self.ops, name, ctypes.cast(cb, ctypes.c_void_p))

    # -- helpers -----------------------------------------------------------------------
    def _fail(self, req: int, e: BaseException, what: str) -> None:
        if isinstance(e, OSError) and e.errno:
            code = e.errno
        else:
            log.exception("%s failed", what)
            code = errno.EIO
        self.api.fuse_reply_err(req, code)

    def _fill_stat(self, out: Any, st: Any) -> None:
        out.st_mode = st.mode
        out.st_ino = st.ino
        out.st_nlink = st.nlink
        out.st_size = st.size
        out.st_uid = st.uid
        out.st_gid = st.gid
        out.st_blksize = st.blksize
        out.st_blocks = st.blocks
        sec, ns = divmod(st.mtime_ns, 1_000_000_000)
        for ts in (out.st_atimespec, out.st_mtimespec, out.st_ctimespec):
            ts.tv_sec = sec
            ts.tv_nsec = ns

    # -- lifecycle ---------------------------------------------------------------------
    def _init(self, userdata: int, conn: int) -> None:
        self.initialized()

    def initialized(self) -> None:
        """Run the init hook. Called while FUSE_INIT is being answered (by libfuse, or by
        :mod:`blobfs.fuse.uringsession`): the mount exists, and the kernel holds every other
        request until the answer."""
        if self._on_init is not None:
            try:
                self._on_init()
            except Exception:
                log.exception("init hook failed")

    def _destroy(self, userdata: int) -> None:
        pass

    # -- metadata ----------------------------------------------------------------------
    def _lookup(self, req: int, parent: int, name: bytes) -> None:
        api = self.api
        try:
            base = self.nodes.path(parent)
            if base is None:
                raise OSError(errno.ESTALE, "unknown parent node")
            n = name.decode(_ENC, _ERRS)
            path = f"{base}/{n}" if base else n
            st = self.view.getattr(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                # A zero nodeid with a timeout is a cacheable negative entry (the high-level
                # driver's negative_timeout).
                ep = api.EntryParam()
                ep.entry_timeout = self.timeout
                api.fuse_reply_entry(req, ctypes.byref(ep))
                return
            self._fail(req, e, "lookup")
            return
        except Exception as e:
            self._fail(req, e, "lookup")
            return
        ep = api.EntryParam()
        ep.ino = self.nodes.ref(path, st.ino)
        self._fill_stat(ep.attr, st)
        ep.attr_timeout = ep.entry_timeout = self.timeout
        api.fuse_reply_entry(req, ctypes.byref(ep))

    def _forget(self, req: int, ino: int, nlookup: int) -> None:
        self.nodes.forget(ino, nlookup)
        self.api.fuse_reply_none(req)

    def _forget_multi(self, req: int, count: int, data: Any) -> None:
        for k in range(count):
            self.nodes.forget(data[k].ino, data[k].nlookup)
        self.api.fuse_reply_none(req)

    def _getattr(self, req: int, ino: int, fi: Any) -> None:
        try:
            st = self.view.getattr(self._path(ino))
        except Exception as e:
            self._fail(req, e, "getattr")
            return
        out = self.api.c_stat()
        self._fill_stat(out, st)
        self.api.fuse_reply_attr(req, ctypes.byref(out), self.timeout)

    def _statfs(self, req: int, ino: int) -> None:
        try:
            values = self.view.statfs()
        except Exception as e:
            self._fail(req, e, "statfs")
            return
        out = self.api.c_statvfs()
        for key, value in values.items():
            if hasattr(out, key):
                setattr(out, key, max(value, 0))
        self.api.fuse_reply_statfs(req, ctypes.byref(out))

    def _path(self, ino: int) -> str:
        path = self.nodes.path(ino)
        if path is None:
            raise OSError(errno.ESTALE, "unknown node")
        return path

    # -- data --------------------------------------------------------------------------
    def _open(self, req: int, ino: int, fi: Any) -> None:
        self.api.fuse_reply_err(req, errno.ENOSYS)

    def _read(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        try:
            data = self.view.read(self._path(ino), size, off)
        except Exception as e:
            self._fail(req, e, "read")
            return
        self.api.fuse_reply_buf(req, data, len(data))

    # -- listings ----------------------------------------------------------------------
    def _opendir(self, req: int, ino: int, fi: Any) -> None:
        f = fi.contents
        f.fh = 0
        f.cache_readdir = 1  # FOPEN_CACHE_DIR
        f.keep_cache = 1  # FOPEN_KEEP_CACHE: the cached listing survives closing the folder
        self.api.fuse_reply_open(req, fi)

    def _readdir(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        try:
            buf = pack_dirents(self.view.readdir(self._path(ino), off), size)
        except Exception as e:
            self._fail(req, e, "readdir")
            return
        self.api.fuse_reply_buf(req, buf, len(buf))


def pack_dirents(entries: Any, size: int) -> bytes:
    """A READDIR reply: the view's (name, mode, ino, next offset) entries as ``struct
    fuse_dirent`` records, as many as fit in ``size`` bytes."""
    buf = bytearray()
    pack = _DIRENT.pack
    for name, mode, d_ino, nxt in entries:
        raw = name.encode(_ENC, _ERRS)
        rec = 24 + len(raw)
        pad = -rec & 7
        if len(buf) + rec + pad > size:
            break  # the kernel asks again from the offset of the last entry it kept
        buf += pack(d_ino, nxt, len(raw), (mode >> 12) & 0o17)
        buf += raw
        buf += bytes(pad)
    return bytes(buf)


def _argv(opts: Any, fsname: str) -> list[bytes]:
    mount_opts = ["ro", "default_permissions", f"fsname={fsname}", "subtype=blobfs"]
    if opts.allow_other:
        mount_opts.append("allow_other")
    if opts.auto_unmount:
        mount_opts.append("auto_unmount")
    if opts.noexec:
        mount_opts.append("noexec")
    argv = ["blobfs", "-o", ",".join(escape_opt(o) for o in mount_opts)]
    if opts.debug:
        argv.append("-d")
    return [a.encode(_ENC, _ERRS) for a in argv]


def _worker_plan(fs: LowLevelFS, groups: list[set[int]]) -> Callable[[], cpuworkers.Workers | None] | None:
    """What forks one worker process per CPU group once FUSE_INIT is answered; None for one
    process (one CPU, or ``workers=1``)."""
    if len(groups) < 2:
        return None
    nodelog = NodeLog(len(groups))
    fs.nodes.share(nodelog)

    def fork() -> cpuworkers.Workers | None:
        try:
            return cpuworkers.fork(groups, nodelog.become)
        except (RuntimeError, OSError) as e:
            log.warning("serving from one process: %s", e)
            return None

    return fork


def run_session(fs: LowLevelFS, mountpoint: str, opts: Any, fsname: str,
                unmount: Callable[[], None] | None = None) -> int:
    """Mount, serve until unmounted or signalled, unmount; returns libfuse's loop status.
    ``unmount``: what to call instead of libfuse's unmount of ``mountpoint``.

    Raises ``RuntimeError`` when the session cannot be created or mounted."""
    api = fs.api
    argv = _argv(opts, fsname)
    arr = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
    args = FuseArgs(len(argv), arr, 0)
    se = api.fuse_session_new(ctypes.byref(args), ctypes.byref(fs.ops), ctypes.sizeof(fs.ops), None)
    if not se:
        raise RuntimeError("fuse_session_new failed")
    try:
        if api.fuse_session_mount(se, mountpoint.encode(_ENC, _ERRS)) != 0:
            raise RuntimeError("fuse_session_mount failed")
        try:
            # libfuse's handlers end the loop on SIGTERM/SIGINT/SIGHUP, but it installs each
            # only over SIG_DFL (lib/fuse_signals.c ``set_one_signal_handler``), and Python
            # owns SIGINT: hand it back for the session, as mfusepy does.
            old_int = signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                if api.fuse_set_signal_handlers(se) != 0:
                    raise RuntimeError("fuse_set_signal_handlers failed")
                try:
                    if opts.threads and opts.uring:
                        log.warning("-o uring is not used with threads")
                    if opts.threads and api.loop_mt is not None:
                        return int(api.loop_mt(se, 0))
                    groups = cpuworkers.plan(opts.workers)
                    if opts.uring is not False and not opts.threads:  # None: whenever the kernel offers it
                        why = uring.kernel_offers()
                        if why is None:
                            from blobfs.fuse import uringsession

                            return uringsession.serve(fs, api, se, groups, opts.debug)
                        if opts.uring:
                            log.warning("-o uring: FUSE over io_uring unavailable (%s); serving from /dev/fuse", why)
                        else:
                            log.info("FUSE over io_uring not used: %s", why)
                    spin = opts.spin_window(len(groups))
                    workers = _worker_plan(fs, groups)
                    if (spin > 0 or workers is not None) and pollloop.available(api):
                        return pollloop.serve(api, se, spin, workers)
                    return int(api.fuse_session_loop(se))
                finally:
                    api.fuse_remove_signal_handlers(se)
            finally:
                signal.signal(signal.SIGINT, old_int)
        finally:
            if unmount is None:
                api.fuse_session_unmount(se)
            else:
                unmount()
    finally:
        api.fuse_session_destroy(se)


__all__ = ["LowLevelFS", "pack_dirents", "run_session"]
