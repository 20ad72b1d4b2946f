"""One writer at a time per output: an exclusive ``flock`` on a hidden file beside it.

Two runs writing one output each publish their own files; without a lock their renames can
interleave and leave one run's tar beside the other's offsets file (wrong bytes for every
item). A second writer fails at once rather than waiting: a pack can take minutes, a silent
wait looks like a hang, and running the same pack twice is nearly always a mistake.

Why a file beside the output, and not ``flock`` on the output folder: a folder lock would also
refuse packs into *other* outputs of that folder, and NFS emulates ``flock`` with POSIX locks,
which need a file opened for writing (a folder cannot be). The kernel drops the lock with its
process, so a SIGKILL leaves no stale lock, only the hidden ``.NAME.blobfs-lock`` file, which
the next writer reuses and removes.

Removing the file needs care: another writer may have opened it just before the holder
unlinked it, and would then lock an inode nobody else can find. So after locking, the path
must still name the locked inode, else the writer opens it again.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

from blobfs.errors import InputError
from blobfs.write.outpaths import check_output_folder, hidden_stem
from blobfs.write.errors import output_failed

log = logging.getLogger(__name__)

# flock is not offered everywhere (some FUSE filesystems): the write goes on unlocked there.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutputBusyError(InputError):
    """Another process holds the lock of this output."""


def lock_path(final: Path) -> Path:
    return final.parent / f"{hidden_stem(final)}.blobfs-lock"


def _open(path: Path, final: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if isinstance(e, (FileNotFoundError, NotADirectoryError)):
            check_output_folder(final)  # the usual reason: exit 2, as AtomicOutputs says it
        raise output_failed(final, e) from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@contextlib.contextmanager
def output_lock(final: Path, command: str) -> Iterator[Path]:
    """Hold the lock of ``final`` for the block (yields the lock file's path, which the
    caller must not treat as input). Raises ``OutputBusyError`` at once if ``command`` is
    already writing ``final`` in another process."""
    final = Path(final)
    path = lock_path(final)
    while True:
        fd = _open(path, final)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"{final}: another {command} is writing this output; "
                                  "run again when it has finished") from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                os.close(fd)
                raise output_failed(final, e) from None
            log.warning("%s: cannot lock (%s); a concurrent writer would not be noticed",
                        path, e.strerror)
            break
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed it after we opened it: lock the new one
    try:
        yield path
    finally:
        # Unlinked while still locked, so a writer that opened it meanwhile sees it is gone.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
