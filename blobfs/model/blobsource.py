"""An open blob tar: one read-only descriptor that every reader shares through ``os.pread``
(no seek position, so no lock), and that ``close()`` never pulls from under a read in flight."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path


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

    @classmethod
    def open(cls, path: Path) -> "BlobSource":
        fd = _Descriptor(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        st = os.fstat(fd)
        return cls(path, fd, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)

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
