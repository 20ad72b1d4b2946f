"""Outputs that appear whole or not at all.

Every output (a file or a directory tree) is written under a temporary name in the
destination's own folder (same filesystem, so the final ``rename(2)`` is atomic) and renamed
into place only after everything was written. Any exception — including KeyboardInterrupt and
the SIGTERM/SIGHUP that ``interrupt_guard`` turns into one — removes the temporaries, so an
interrupted run never leaves a half-written file under a final name. A SIGKILL can leave a
hidden ``.NAME.blobfs-tmp-*`` behind, never a final-named file.

Several outputs cannot be renamed in one step. When one of them tells readers how to use the
others (``pack``'s offsets file locates the images in its tar) it is the *marker*: an existing
one is moved aside before anything is replaced and the new one is renamed last, so between two
renames the folder holds the other outputs without a marker (blobfs then indexes the tar's own
headers), never new outputs beside an old marker (wrong bytes for every item). SIGINT, SIGTERM
and SIGHUP are held back during the renames, so only a crash or SIGKILL can stop them half way.

``commit()`` renames with SIGINT/SIGTERM/SIGHUP held, so an interrupt lands before every
output is in place or after all of them are; after, it is an ``InterruptedAfterPublish`` that
says so. Replacing a tree (``force``) moves the old one aside as ``.NAME.blobfs-old-PID-*``
and then deletes it; when that deletion is cut short, the next ``AtomicOutputs`` for the same
name removes the rest (once process PID is gone), with one warning.

Without ``force`` the rename must not replace anything: ``renameat2(RENAME_NOREPLACE)``
(Linux >= 3.15, glibc >= 2.28) closes the race with another writer; where it is missing we
fall back to a check just before ``rename``.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import stat
import threading
from pathlib import Path
from typing import Iterator

from blobfs.pids import alive
from blobfs.signals import interrupt_guard
from blobfs.write.errors import (InterruptedAfterPublish, OutputExistsError, WriteFailedError,
                                 output_failed)
from blobfs.write.outpaths import check_output_folder, hidden_stem, temp_name

log = logging.getLogger(__name__)

__all__ = ["AtomicOutputs", "commit_mark", "interrupt_guard", "published_since", "remove_stale_old"]

#: Every ``AtomicOutputs`` of this process that committed, in order: an interrupt that lands
#: after its ``with`` block ended (a lock released, the summary printed) must still say that
#: the outputs are in place, not that nothing was written.
_commits: list["AtomicOutputs"] = []

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_libc = None
try:  # renameat2 is Linux-only; the fallback below keeps other systems working
    # The process's own symbols (dlopen(NULL)), as blobfs.fuse.overlay: the libc in use, and
    # an LD_PRELOAD interposer sees these calls as it sees os.rename's.
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):
    _renameat2 = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(src, dst) that fails with FileExistsError instead of replacing dst."""
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: filesystem lacks the flag
            raise OSError(err, os.strerror(err), os.fspath(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    os.rename(src, dst)


def _rename_exchange(src: Path, dst: Path) -> bool:
    """Swap ``src`` and ``dst`` in one step (both must exist); False where the system or the
    filesystem cannot (no renameat2, or EINVAL: e.g. some network and FUSE filesystems)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(dst))


def commit_mark() -> int:
    """A mark for ``published_since``."""
    return len(_commits)


def published_since(mark: int) -> InterruptedAfterPublish | None:
    """What an interrupt leaves in place when it lands after the outputs committed since
    ``mark`` left their ``with`` block; None when none did."""
    done = [str(outputs._interrupted()) for outputs in _commits[mark:]]
    return InterruptedAfterPublish("; ".join(done)) if done else None


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except (NotADirectoryError, FileNotFoundError):
        return False


def remove_stale_old(final: Path) -> None:
    """Delete the ``.NAME.blobfs-old-PID-*`` trees beside ``final`` whose process is gone: the
    rest of an old output that an interrupted ``--force`` replacement had started to delete
    (the new output was already in place). A live PID's tree is left to its owner."""
    prefix = f"{hidden_stem(final)}.blobfs-old-"
    try:
        with os.scandir(final.parent) as it:
            names = [e.name for e in it if e.name.startswith(prefix)]
    except OSError:
        return
    pids = {n: n[len(prefix):].partition("-")[0] for n in sorted(names)}
    stale = [final.parent / n for n, pid in pids.items() if pid.isdigit() and not alive(int(pid))]
    if stale:
        log.warning("%s: removing what an interrupted --force run left of the output it replaced",
                    ", ".join(map(os.fspath, stale)))
        for path in stale:
            _remove(path)


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


class AtomicOutputs:
    """Temporaries for a set of final paths, published together by ``commit()``.

    Use as a context manager; leaving it without ``commit()`` (an exception, Ctrl-C) removes
    every temporary. An existing final path is refused at ``__enter__`` unless ``force``;
    for a directory output an existing *empty* directory is fine (nothing to clobber).
    """

    def __init__(self, finals: list[Path], *, force: bool = False, fsync: bool = False,
                 marker: Path | None = None) -> None:
        self.finals = [Path(p) for p in finals]
        self.force = force
        self.fsync = fsync
        # One of finals, published last (see the module doc).
        self.marker = Path(marker) if marker is not None else None
        self._temps: dict[Path, Path] = {}
        self._old: dict[Path, Path] = {}  # final -> its replaced tree, until that is deleted
        self._committed = False

    def __enter__(self) -> "AtomicOutputs":
        for final in self.finals:
            remove_stale_old(final)
            self._check(final)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            for tmp in self._temps.values():
                _remove(tmp)
        elif isinstance(exc, KeyboardInterrupt) and not isinstance(exc, InterruptedAfterPublish):
            # Ctrl-C after commit() but before the block ended: the outputs are whole and in
            # place, and the message must not say otherwise.
            raise self._interrupted() from None

    def _interrupted(self) -> InterruptedAfterPublish:
        done = [os.fspath(f) for f in self.finals if f in self._temps]
        text = f"the new {', '.join(done)} {'is' if len(done) == 1 else 'are'} in place"
        for final, old in self._old.items():
            if os.path.lexists(old):
                text += f"; the rest of the old one, {old}, is removed by the next run that writes {final}"
        return InterruptedAfterPublish(text)

    def _check(self, final: Path) -> None:
        check_output_folder(final)
        if os.path.lexists(final) and not self.force and not _is_empty_dir(final):
            raise OutputExistsError(f"{final}: already exists (use --force to replace it)")

    def file(self, final: Path) -> tuple[int, Path]:
        """(write fd, temp path) for the file that will become ``final``."""
        final = Path(final)
        tmp = temp_name(final)
        # Registered before it exists: a Ctrl-C right after open() must still remove it.
        self._temps[final] = tmp
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as e:
            del self._temps[final]
            raise output_failed(final, e) from None
        return fd, tmp

    def directory(self, final: Path) -> Path:
        """Temp directory that will become ``final``."""
        final = Path(final)
        tmp = temp_name(final)
        self._temps[final] = tmp
        try:
            os.mkdir(tmp, 0o777)
        except OSError as e:
            del self._temps[final]
            raise output_failed(final, e) from None
        return tmp

    def commit(self) -> None:
        """Rename every temporary into place (in the order the finals were given, the marker
        last)."""
        if self.fsync:
            for tmp in self._temps.values():
                _fsync_tree(tmp)
        marker = self.marker
        others = [f for f in self.finals if f != marker and f in self._temps]
        try:
            with _signals_held():
                retired = self._retire(marker) if marker in self._temps and others else None
                published = False
                try:
                    if retired is not None and self.fsync:
                        _fsync_path(marker.parent)  # on disk, the old marker goes before anything else
                    for final in others:
                        self._publish(self._temps[final], final)
                        published = True
                    if marker in self._temps:
                        if self.fsync and others:
                            for parent in {f.parent for f in others}:
                                _fsync_path(parent)
                        self._publish(self._temps[marker], marker)
                except BaseException as e:
                    if retired is not None:
                        if published:  # it belongs to the outputs just replaced: never put it back
                            _remove(retired)
                        else:
                            with contextlib.suppress(OSError):
                                _rename_noreplace(retired, marker)
                    if published and isinstance(e, (WriteFailedError, OutputExistsError)):
                        raise _partly_published(e, others, marker) from None
                    raise
                if retired is not None:
                    _remove(retired)
                self._committed = True
                _commits.append(self)
            # A held signal is raised here at the latest, before any old tree is deleted.
            for final, old in list(self._old.items()):
                _remove(old)
                del self._old[final]
        except KeyboardInterrupt:
            if not self._committed:
                raise
            raise self._interrupted() from None
        if self.fsync:
            for parent in {f.parent for f in self.finals}:
                _fsync_path(parent)

    def _retire(self, marker: Path) -> Path | None:
        """Move an existing marker aside (its hidden name is returned) before the others are
        replaced; without ``force`` an existing marker refuses the commit before anything is
        published."""
        if not os.path.lexists(marker):
            return None
        if not self.force:
            if _is_empty_dir(marker) and os.path.isdir(self._temps[marker]):
                return None  # _publish replaces an empty folder with a folder, as without a marker
            raise OutputExistsError(f"{marker}: appeared while writing (use --force to replace it)")
        trash = temp_name(marker, "old")
        try:
            os.rename(marker, trash)
        except OSError as e:
            raise output_failed(marker, e) from None
        return trash

    def _publish(self, tmp: Path, final: Path) -> None:
        try:
            if not os.path.lexists(final):
                _rename_noreplace(tmp, final)
            elif _is_empty_dir(final) and os.path.isdir(tmp):
                os.rename(tmp, final)  # rename(2) replaces an empty directory atomically
            elif not self.force:
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(final))
            elif (os.path.isdir(final) and not os.path.islink(final)) or os.path.isdir(tmp):
                # rename(2) cannot replace a non-empty tree. RENAME_EXCHANGE swaps the two in
                # one step, so a reader of the final name sees the old output or the new one,
                # never nothing (rename(2), RENAME_EXCHANGE, Linux >= 3.15); elsewhere the
                # old one is moved aside first and the name is empty for a moment.
                trash = temp_name(final, "old")
                if _rename_exchange(tmp, final):
                    os.rename(tmp, trash)  # the old tree, under the name a later run sweeps
                else:
                    os.rename(final, trash)
                    try:
                        os.rename(tmp, final)
                    except BaseException:
                        os.rename(trash, final)  # the old output back under its name
                        raise
                self._old[final] = trash  # deleted by commit() once every output is in place
            else:
                os.replace(tmp, final)
        except FileExistsError:
            raise OutputExistsError(f"{final}: appeared while writing (use --force to replace it)") from None
        except OSError as e:
            raise output_failed(final, e) from None


def _partly_published(e: WriteFailedError | OutputExistsError, done: list[Path],
                      marker: Path) -> WriteFailedError | OutputExistsError:
    """The same error, saying what is in place: the marker's rename failed after the others'
    ("nothing written" would be wrong, and the user must know the marker is missing)."""
    why = str(e).removesuffix("; nothing written")
    names = ", ".join(os.fspath(f) for f in done)
    return type(e)(f"{why}; the new {names} {'is' if len(done) == 1 else 'are'} in place "
                   f"without {marker.name} (run the command again with --force to write both)")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                _fsync_path(Path(dirpath) / name)
            _fsync_path(Path(dirpath))
    else:
        _fsync_path(path)


_HELD = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP}) if os.name == "posix" else frozenset()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Delay SIGINT, SIGTERM and SIGHUP until the block is done (the kernel delivers them when
    it ends): an interrupt between two renames would leave a publish half done."""
    if not _HELD or threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python's handlers; another thread's mask is moot
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
