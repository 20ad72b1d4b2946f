"""``-o overlay``: a read-only overlayfs on top of the FUSE mount, so ioctls never reach the daemon.

Why: Python's ``open()`` (and so ``PIL.Image.open(path)``) calls ``isatty()``, a ``TCGETS``
ioctl, on every file. fs/fuse/ioctl.c forwards every ioctl to the daemon and remembers no
"not implemented", so each Python open costs one round trip between two processes: the one
request per file that no daemon-side change removes (README, "Where the time goes").
overlayfs's regular-file ``file_operations`` have had no ``unlocked_ioctl`` since Linux 5.13
(flags moved to ``fileattr_get``, fs/overlayfs/file.c), so fs/ioctl.c ``vfs_ioctl`` answers
ENOTTY itself, the answer the daemon gives. Reads go through ``backing_file_read_iter`` to
the FUSE file underneath and are served from its page cache as before.

The price: overlayfs opens a second ``struct file`` per open and adds its own dentries, about
1.5 µs per open and 1 µs per lookup here. Plain ``os.open``/``os.read`` readers (cat, cp, tar)
lose about what Python ``open()`` readers gain, so this is opt-in (tests/bench/bench_mount.py,
``--variant``). It needs root (mounting overlayfs needs CAP_SYS_ADMIN) and Linux >= 6.5.

Layout: the FUSE file system is mounted on a private directory, the overlay goes on the mount
point with that directory as its only visible layer, and the private FUSE mount is detached.
overlayfs keeps a private clone of each layer's mount (fs/overlayfs/super.c
``clone_private_mount``), so the FUSE superblock lives exactly as long as the overlay: unmounting
the overlay ends the FUSE connection, and the daemon's loop sees ENODEV and exits.
overlayfs without an upper directory wants two lower layers; the second is an empty data-only
layer (``lower::empty``, Linux >= 6.5, Documentation/filesystems/overlayfs.rst "Data-only lower
layers"): it is not part of the directory tree, so the root is no merged directory and the
empty directory can be removed at once (a removed *regular* second layer empties the root's
listing; measured).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blobfs.errors import BlobfsError
from blobfs.fuse.umount import OVERLAY_SOURCE_PREFIX, is_blobfs_overlay, mount_entry
from blobfs.pids import alive

log = logging.getLogger(__name__)

# include/uapi/linux/mount.h
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MNT_DETACH = 2
_PREFIX = "blobfs-overlay-"
#: ``blobfs-overlay-PID-RANDOM``: :func:`prepare`'s directories (older names hold no pid).
_STALE_NAME = re.compile(re.escape(_PREFIX) + r"([0-9]+)-[A-Za-z0-9_]+")
#: Characters overlayfs's option parser splits on; the private directories never hold them.
_SEPARATORS = (",", ":", "\\", "=")


class OverlayError(BlobfsError):
    """The overlay could not be stacked (CLI exit code 1)."""


@dataclass(frozen=True)
class Layers:
    """The private directories of one overlay mount: ``lower`` takes the FUSE mount."""

    base: Path
    lower: Path
    empty: Path


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def prepare() -> Layers:
    """Make the private directories (under /run when it is writable, the root's tmpfs).

    The name carries this process's pid: a mount whose parent was killed between here and
    :func:`release` leaves its directories (and perhaps a daemon serving the private mount)
    behind, and the next ``-o overlay`` mount finishes that release (:func:`sweep`)."""
    parent = "/run" if os.access("/run", os.W_OK) else None
    sweep(Path(parent or tempfile.gettempdir()))
    base = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
    layers = _layers(base)
    if any(c in str(base) for c in _SEPARATORS):
        shutil.rmtree(base, ignore_errors=True)
        raise OverlayError(f"{base}: private directory name holds an overlayfs separator")
    layers.lower.mkdir()
    layers.empty.mkdir()
    return layers


def sweep(parent: Path) -> None:
    """Release the private directories of mounts whose process is gone (never raises).

    Only names with a dead pid are touched, so a mount being set up by a live process is
    left alone; :func:`release` only detaches a FUSE mount and removes empty directories.
    After a stacked overlay its clone keeps the file system alive (the mount still works);
    before one, detaching ends the orphaned daemon (its loop sees ENODEV)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = _STALE_NAME.fullmatch(name)
        if m is None or alive(int(m.group(1))):
            continue
        layers = _layers(parent / name)
        entry = mount_entry(layers.lower)
        if entry is not None and not entry[0].startswith("fuse"):
            continue  # not ours to detach
        log.info("%s: releasing what an interrupted -o overlay mount left behind", layers.base)
        release(layers)


def _layers(base: Path) -> Layers:
    return Layers(base, base / "fuse", base / "empty")


def stack(layers: Layers, mountpoint: Path, fsname: str, *, noexec: bool = False) -> None:
    """Mount the overlay on ``mountpoint`` over the FUSE mount at ``layers.lower`` (``noexec``:
    with the kernel's noexec flag; exec checks the mount on top, not the FUSE one below)."""
    # The FUSE root inode starts with mode 040000 and learns its real mode from the first
    # GETATTR (fs/fuse/inode.c ``fuse_get_root_inode``); overlayfs copies the mode of the
    # inode below into its own root when it mounts, and checks callers against that copy
    # (fs/overlayfs/inode.c ``ovl_permission``), so without this stat only root could enter.
    os.stat(layers.lower)
    data = f"lowerdir={layers.lower}::{layers.empty}"
    source = OVERLAY_SOURCE_PREFIX + fsname
    libc = _libc()
    if libc.mount(os.fsencode(source), os.fsencode(mountpoint), b"overlay",
                  MS_RDONLY | MS_NOSUID | MS_NODEV | (MS_NOEXEC if noexec else 0), os.fsencode(data)) != 0:
        e = ctypes.get_errno()
        why = os.strerror(e)
        if e == errno.ENODEV:
            why = "this kernel has no overlayfs"
        elif e == errno.EINVAL:
            why = "overlayfs refused the layers (data-only lower layers need Linux >= 6.5)"
        elif e == errno.EPERM:
            why = "mounting overlayfs needs root"
        raise OverlayError(f"{mountpoint}: cannot stack overlayfs on the FUSE mount: {why}")
    log.debug("overlayfs on %s over %s", mountpoint, layers.lower)


def release(layers: Layers) -> None:
    """Detach the private FUSE mount and remove the private directories (never raises).

    After :func:`stack` the overlay's clone keeps the FUSE file system alive; without an
    overlay this ends the FUSE connection and so the daemon."""
    if mount_entry(layers.lower) is not None and _libc().umount2(os.fsencode(layers.lower), MNT_DETACH) != 0:
        log.warning("%s: cannot detach the private FUSE mount: %s", layers.lower, os.strerror(ctypes.get_errno()))
    for d in (layers.lower, layers.empty, layers.base):
        try:
            d.rmdir()
        except FileNotFoundError:  # a sweep of a mount that was killed while making them
            pass
        except OSError as e:
            log.warning("%s: cannot remove private directory: %s", d, e.strerror)


def unstack(mountpoint: Path) -> None:
    """Detach blobfs's overlay from ``mountpoint`` if it is still there (the daemon's stop on
    SIGTERM/SIGINT): lazily, like libfuse's own unmount, so an open file does not block it."""
    if not is_blobfs_overlay(mount_entry(mountpoint)):
        return
    if _libc().umount2(os.fsencode(mountpoint), MNT_DETACH) != 0:
        log.warning("%s: cannot unmount the overlay: %s", mountpoint, os.strerror(ctypes.get_errno()))
    else:
        log.debug("detached the overlay from %s", mountpoint)


__all__ = ["Layers", "OverlayError", "prepare", "release", "stack", "sweep", "unstack"]
