"""An open blob tar: one read-only descriptor shared by every reader, and the promise it keeps.

The index of a tar's items (byte ranges from its offsets file or headers) holds for the file
as it was when opened. A tar written over in place (``dd conv=notrunc``, ``tar cf`` or
``cp`` onto the same name) keeps its descriptor, so ``pread`` would serve the new bytes under
the old ranges: another image's bytes, or half of one, as if nothing happened.
``BlobSource.check`` compares the file's size and mtime with those seen at open after every
read, so such a read fails with EIO (and one log line) instead. A tar replaced by rename is
no concern: the descriptor still names the old file, whose bytes are served unchanged.
"""
from __future__ import annotations

import errno
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from blobfs.errors import ReadError

log = logging.getLogger(__name__)


class _Descriptor(int):
    """An open descriptor number that closes itself when its last reference goes.

    Why: a read takes the number from ``BlobSource.fd`` and then calls ``os.pread``; if
    ``close()`` in another thread released the number in between, an ``open`` anywhere in the
    process could take it and the read would serve that file's bytes as an image (or fail
    with EBADF). A read holds this object (an argument of ``os.pread``) until the call
    returns, so the interpreter's own reference count is the in-flight count: ``close()``
    only drops the source's reference, and the number is released when the last read using
    it ends. The hot path pays nothing for it — no lock, no counter to update.
    """

    __slots__ = ()

    def __del__(self, _close=os.close) -> None:  # bound now: os may be gone at exit
        try:
            _close(int(self))
        except OSError:
            pass

    def __reduce_ex__(self, protocol: object) -> object:
        # A copy (copy.copy, pickle) would be a second owner closing the same number.
        raise TypeError("an open blob tar descriptor cannot be copied or pickled")


#: ``BlobSource.fd`` of a closed source: ``os.pread`` on it fails (EBADF) at once, and the
#: reader turns that into the API's ``ValueError`` (``BlobSource.closed_error``).
CLOSED = -1


@dataclass
class BlobSource:
    """An open tar: one read-only descriptor shared by every reader (``os.pread`` needs no lock).

    ``fd`` stays open while anyone holds it, even past ``close()`` (see ``_Descriptor``):
    a reader takes it once per read (``os.pread(src.fd, ...)``) and never keeps it in a
    variable that outlives the read (a suspended generator or a traceback would keep the
    tar open after ``close()``).
    """

    path: Path
    fd: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    #: Whether this process has logged that the tar changed (one line per tar, not per read).
    said_changed: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def open(cls, path: Path) -> "BlobSource":
        fd = _Descriptor(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        st = os.fstat(fd)
        return cls(path, fd, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)

    def check(self) -> None:
        """Raise ``ReadError`` (EIO) if the tar is no longer the file indexed at open.

        Called after each ``pread`` (any later fstat covers it): a write updates the mtime
        before it copies its bytes (``file_modified()``/``file_update_time()`` in the write
        checks of mm/filemap.c's ``__generic_file_write_iter`` and of ext4's and xfs's write
        paths), and a truncate sets the size, so a read that saw any new byte is caught. Size and mtime are what ``make`` and
        ``rsync`` trust; a writer that also puts the old mtime back is not caught. A source
        closed meanwhile passes: its reads in flight were made while it was open, and the
        next read says it is closed.
        """
        fd = self.fd  # held for the fstat only, as a read holds it for its pread
        if fd < 0:
            return
        s = os.fstat(fd)
        if s.st_mtime_ns != self.mtime_ns or s.st_size != self.size:
            raise self._changed(s.st_size)

    def _changed(self, size: int) -> ReadError:
        what = (f"size {self.size:,} -> {size:,} bytes" if size != self.size
                else "modified in place")
        if not self.said_changed:
            self.said_changed = True
            log.error("%s: changed on disk since it was opened (%s): its items fail with EIO "
                      "until the project is opened again (unmount and mount)", self.path, what)
        return ReadError(errno.EIO, f"{self.path}: changed on disk since it was opened ({what})")

    def close(self) -> None:
        """Drop the descriptor: closed now, or when the last read in flight ends. Idempotent
        and safe against concurrent reads and closes (one attribute store)."""
        self.fd = CLOSED

    def __del__(self) -> None:
        # A project dropped without close() must not keep its tars open until the process
        # ends (a notebook reopening a project leaks one descriptor per tar each time); say
        # so the way an unclosed file does.
        if getattr(self, "fd", CLOSED) >= 0:
            warnings.warn(f"unclosed blob tar {self.path}: close the project (or use 'with')",
                          ResourceWarning, stacklevel=2, source=self)
            self.close()

    def __reduce__(self) -> object:
        # The descriptor is a number valid in this process only: in another one it names some
        # other file (or none), so a copy would read the wrong bytes.
        raise TypeError(f"an open blob tar ({self.path}) cannot be pickled: pickle the Project "
                        "(it reopens itself) or open the project in each process")

    def fileno(self) -> int:
        """The descriptor to ``pread``, valid for as long as the caller holds it (even if the
        project is closed meanwhile); a closed source is a clear error, not EBADF."""
        fd = self.fd
        if fd < 0:
            raise self.closed_error()
        return fd

    def closed_error(self) -> ValueError:
        return ValueError(f"{self.path}: read from a closed project")
