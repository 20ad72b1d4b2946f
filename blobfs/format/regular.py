"""Opening an input that must be a regular file (a tar, an offsets pickle)."""
from __future__ import annotations

import errno
import os
import stat


def open_regular(path: str) -> int:
    """A read-only fd of the regular file at ``path``; ``OSError`` ("not a regular file") for a
    FIFO, a device or a folder. Opened ``O_NONBLOCK`` first: open(2) of a FIFO would wait for a
    writer, and ``/dev/zero`` never ends."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
