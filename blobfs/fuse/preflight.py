"""What a mount needs from its surroundings, checked before the mount point changes, and what to
say when libfuse fails for a reason blobfs can name."""
from __future__ import annotations

import os
import stat as _stat
from pathlib import Path

from blobfs.errors import BlobfsError
from blobfs.fuse.options import MountOptions, MountUsageError
from blobfs.fuse.umount import STALE_ERRNOS, is_stale, mount_entry

FUSE_DEVICE = "/dev/fuse"


class MountError(BlobfsError):
    """The filesystem could not be mounted (CLI exit code 1)."""


# -- checks (all before the mount point changes) ---------------------------------------------
def check_mountpoint(opts: MountOptions) -> None:
    """Refuse a missing, non-directory, non-empty, stale or already mounted mount point."""
    mp = opts.mountpoint
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        raise MountUsageError(f"{mp}: mount point does not exist") from None
    except OSError as e:
        if e.errno in STALE_ERRNOS:
            raise MountError(
                f"{mp}: stale mount left by a dead daemon (Transport endpoint is not connected); "
                f"run 'blobfs umount {mp}' first"
            ) from None
        raise MountUsageError(f"{mp}: {e.strerror}") from None
    if not _stat.S_ISDIR(st.st_mode):
        raise MountUsageError(f"{mp}: mount point is not a directory")
    entry = mount_entry(mp)
    # x-systemd.automount puts an autofs trigger on the mount point and runs this mount on top
    # of it when the folder is first used: the trigger is no mount to refuse, and listing it
    # would wait for this very mount (systemd.automount(5); stat(2) does not trigger it,
    # opening the folder does: Documentation/filesystems/autofs.rst).
    trigger = entry is not None and entry[0] == "autofs"
    if entry is not None and not trigger:
        if is_stale(mp):
            raise MountError(
                f"{mp}: stale mount left by a dead daemon (Transport endpoint is not connected); "
                f"run 'blobfs umount {mp}' first"
            )
        raise MountError(f"{mp}: already mounted ({entry[0]} from {entry[1]})")
    # Real paths: a mount point that only a symlink places inside the source hangs the same way.
    src = Path(os.path.realpath(opts.source))
    mp_real = Path(os.path.realpath(mp))
    if mp == src or src in mp_real.parents:
        # The daemon would stat its own mount through the project and wait on itself.
        raise MountUsageError(f"{mp}: mount point is inside the source {src}")
    # The other way round (-o nonempty over a folder holding the source): the mount hides the
    # files the daemon reads by path, and it would wait on itself for each of them.
    for what, path in (("source", opts.source), ("offsets file", opts.offsets), ("annotation folder", opts.ann)):
        if path is not None and mp_real in Path(os.path.realpath(path)).parents:
            raise MountUsageError(f"{mp}: mount point holds the {what} {path}, which the mount would hide")
    if not opts.nonempty and not trigger:
        try:
            with os.scandir(mp) as it:
                nonempty = next(it, None) is not None
        except OSError as e:
            raise MountUsageError(f"{mp}: cannot list mount point: {e.strerror}") from None
        if nonempty:
            raise MountUsageError(f"{mp}: mount point is not empty (use -o nonempty to mount over it)")


def device_hint() -> str:
    """Why an ordinary user's mount failed when /dev/fuse is closed to them. libfuse opens the
    device before it tries mount(2) or the setuid fusermount, and gives up when that open fails
    (lib/mount.c ``fuse_mount_sys``); machines without udev leave the node at devtmpfs's 0600."""
    try:
        if os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
            return ""
        mode = _stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode)
    except OSError:
        return ""
    return (f"; {FUSE_DEVICE} is mode {mode:04o}, closed to this user (ordinary users mount through "
            f"fusermount once it is 0666, as Debian's udev rules set it; or mount as root)")


__all__ = ["FUSE_DEVICE", "MountError", "check_mountpoint", "device_hint"]
