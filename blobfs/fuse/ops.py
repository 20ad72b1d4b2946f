"""The FUSE adapter on the fusepy ``Operations`` API: paths in, ``ClassicView`` calls, errno out.

Used with libfuse 2, with plain fusepy, and with ``-o fuse_api=highlevel``; on libfuse 3 the
default is the same adapter on libfuse's low-level API (:mod:`blobfs.fuse.lowlevel`).

Every request that reaches this process costs a user/kernel/user round trip, so the adapter
implements as few callbacks as possible and lets the kernel cache the rest (the data never
changes while mounted):

* ``open`` and ``flush`` answer ENOSYS. The kernel then sets ``no_open`` / ``no_flush`` for the
  connection and stops sending OPEN, FLUSH and RELEASE at all ("zero-message open", kernel
  fs/fuse/file.c ``fuse_file_open``); its default for such files is FOPEN_KEEP_CACHE, so
  page-cache contents survive across opens.
* ``opendir`` is answered by the FUSE class on libfuse >= 3.16 only, so the kernel caches
  listings (see :mod:`blobfs.fuse.fastfuse`; older high-level libfuse drops the flag).
* ``ioctl``, ``release``, ``releasedir``, ``access`` are left NULL: libfuse answers
  them in C without entering Python (``default_permissions`` makes the kernel check modes).
* Write-type callbacks are absent; the ``ro`` mount makes the kernel refuse them with EROFS
  before they could reach us.

The class is a plain object, not a subclass of the binding's ``Operations``: mfusepy and fusepy
register a libfuse callback for every method the object has, so an absent method means a NULL
callback under both bindings.
"""
from __future__ import annotations

import errno
import logging
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger(__name__)

_ENOSYS = errno.ENOSYS


class View(Protocol):
    """What the adapter needs from ``blobfs.model.view.ClassicView``."""

    def getattr(self, path: str) -> Any: ...
    def readdir(self, path: str, offset: int) -> Iterator[tuple]: ...
    def read(self, path: str, size: int, offset: int) -> bytes: ...
    def statfs(self) -> dict[str, int]: ...


class BlobfsOperations:
    """fusepy-API operations over a read-only view."""

    #: Times in nanoseconds (both bindings read this attribute).
    use_ns = True

    def __init__(self, view: View, *, on_init: Callable[[], None] | None = None) -> None:
        self._view = view
        self._on_init = on_init

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self, path: str) -> None:
        # Called from libfuse while it answers the kernel's FUSE_INIT: the mount exists and the
        # kernel holds every other request until the reply, so the mount is usable now.
        if self._on_init is not None:
            self._on_init()

    # -- metadata ----------------------------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        st = self._view.getattr(path)
        mtime = st.mtime_ns
        return {
            "st_mode": st.mode,
            "st_ino": st.ino,
            "st_nlink": st.nlink,
            "st_size": st.size,
            "st_uid": st.uid,
            "st_gid": st.gid,
            "st_blksize": st.blksize,
            "st_blocks": st.blocks,
            "st_mtime": mtime,
            "st_ctime": mtime,
            "st_atime": mtime,
        }

    def readdir_with_offset(self, path: str, offset: int, fh: Any = None) -> Iterator[tuple[str, dict[str, int], int]]:
        # libfuse stops the generator when the kernel's buffer is full and calls again with the
        # offset of the last entry it kept; the view resumes from there without rebuilding.
        return self._entries(path, offset)

    def readdir(self, path: str, fh: Any = None) -> Iterator[tuple[str, dict[str, int], int]]:
        # fusepy has no offset support: hand libfuse the whole listing with offset 0 (libfuse
        # buffers it per open directory). mfusepy uses readdir_with_offset instead.
        for name, attrs, _next in self._entries(path, 0):
            yield name, attrs, 0

    def readdir_entries(self, path: str, offset: int) -> Iterator[tuple[str, int, int, int]]:
        """(name, mode, inode, next offset) for :mod:`blobfs.fuse.fastfuse`'s READDIR loop."""
        return self._view.readdir(path, offset)

    def _entries(self, path: str, offset: int) -> Iterator[tuple[str, dict[str, int], int]]:
        # Each entry carries its mode (so `find -type f` needs no stat) and its inode number:
        # with use_ino libfuse copies st_ino into d_ino, and glibc's readdir() silently skips
        # entries whose d_ino is 0 (sysdeps/unix/sysv/linux/readdir.c, "Skip deleted files").
        for name, mode, ino, nxt in self._view.readdir(path, offset):
            yield name, {"st_mode": mode, "st_ino": ino}, nxt

    def statfs(self, path: str) -> dict[str, int]:
        return self._view.statfs()

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: Any = None) -> bytes:
        return self._view.read(path, size, offset)

    def open(self, path: str, flags: int) -> int:
        raise OSError(_ENOSYS, "zero-message open")

    def flush(self, path: str, fh: Any = None) -> int:
        raise OSError(_ENOSYS, "no flush needed")


class CachedDirOperations(BlobfsOperations):
    """Operations for libfuse >= 3.16: the bindings register a libfuse callback only for
    methods the object has, and :mod:`blobfs.fuse.fastfuse` answers OPENDIR itself (with
    FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE); this method is never called."""

    def opendir(self, path: str) -> int:
        return 0


class FusepyOperations(BlobfsOperations):
    """fusepy dispatches every callback through ``operations(name, *args)``."""

    def __call__(self, op: str, *args: Any) -> Any:
        fn = getattr(self, op, None)
        if fn is None:
            raise OSError(errno.ENOSYS, op)
        return fn(*args)


def make_operations(view: View, binding_name: str, *, caches_dirs: bool = False,
                    **kwargs: Any) -> BlobfsOperations:
    """The operations object for the loaded binding (see :mod:`blobfs.fuse.binding`)."""
    if binding_name == "fusepy":
        return FusepyOperations(view, **kwargs)
    cls = CachedDirOperations if caches_dirs else BlobfsOperations
    return cls(view, **kwargs)
