"""``Project.open``'s file object: a read-only, seekable file over one path of the view."""
from __future__ import annotations

import io
import operator
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blobfs.model.view import ClassicView

#: The largest position a file offset (off_t, 64-bit) holds.
_MAX_POS = 2**63 - 1


class ProjectFile(io.RawIOBase):
    """File object over a view path; every read is a positional read (no shared offset), so
    two of them over one project never disturb each other. Wrap it in ``io.BufferedReader``
    for many small reads (``PIL.Image.open`` takes it as it is). Once its project is closed,
    every read raises ``ValueError``, as the project's own reads do — at the end of the file
    too, and for files whose bytes are not in a tar (annotations, ``meta.json``)."""

    def __init__(self, view: "ClassicView", path: str) -> None:
        super().__init__()
        self._view = view
        self._project = view.project
        self._path = "/" + path.strip("/")
        self._size = view.getattr(self._path).size
        self._pos = 0
        self.name = path
        #: As a file opened ``"rb"`` says it: libraries read ``mode`` to tell binary from text
        #: (``tarfile.open(fileobj=...)`` takes its own mode from it).
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def __reduce_ex__(self, protocol: object) -> object:
        # Pickling walked into the view's internals and failed on "cannot pickle
        # 'mmap.mmap' object", naming nothing the caller holds. An open file of the local
        # filesystem cannot be pickled either; the project can (it reopens itself).
        raise TypeError(f"cannot pickle an open blobfs file ({self.name}): pickle the project "
                        "and open the path again where it is unpickled")

    def write(self, b: object) -> int:
        # io.RawIOBase leaves write() unimplemented (NotImplementedError); a read-only file
        # says io.UnsupportedOperation, which callers catch as an OSError or a ValueError.
        self._checkClosed()  # type: ignore[attr-defined]
        raise io.UnsupportedOperation("File not open for writing")

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        # Checked here, as FileIO checks its own: a float or a position no off_t holds would
        # otherwise fail only at the next read, far from its cause.
        pos = (0, self._pos, self._size)[whence] + operator.index(offset)
        if pos < 0:
            raise ValueError("negative seek position")
        if pos > _MAX_POS:
            raise OverflowError(f"seek position {pos} past the largest file offset")
        self._pos = pos
        return self._pos

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def readinto(self, buf) -> int:  # type: ignore[override]
        self._checkClosed()  # type: ignore[attr-defined]
        if self._project._closed:
            self._project._check_open()  # raises the project's ValueError
        # Any writable bytes-like object, as FileIO takes it (an array of ints, a ctypes
        # buffer): counted and filled in bytes, not in its own items.
        with memoryview(buf) as mv, mv.cast("B") as view:
            data = self._view.read(self._path, view.nbytes, self._pos)
            n = len(data)
            view[:n] = data
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()  # type: ignore[attr-defined]
        if self._project._closed:
            self._project._check_open()  # raises the project's ValueError
        if size is None or size < 0:
            size = max(self._size - self._pos, 0)
        data = self._view.read(self._path, size, self._pos)
        self._pos += len(data)
        return data

    readall = read
