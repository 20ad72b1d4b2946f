"""Unmounting, and telling mounted / stale / free mount points apart.

A FUSE mount whose daemon died (SIGKILL, crash) stays in the mount table and every access
fails with ENOTCONN ("Transport endpoint is not connected") until someone unmounts it;
``fusermount3 -u`` / ``umount`` clear it like a live one.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

from blobfs.errors import BlobfsError, InputError

log = logging.getLogger(__name__)


class UnmountError(BlobfsError):
    """The mount point could not be unmounted (CLI exit code 1)."""


class BusyError(UnmountError):
    """Files are open or a process has its cwd inside the mount."""


#: What a mount whose daemon is gone answers: ENOTCONN, or, while the kernel is still tearing
#: down a dead daemon's FUSE io_uring queues, ECONNABORTED (fs/fuse/dev_uring.c
#: ``fuse_uring_abort_end_queue_requests``) or ECANCELED (a request handed to a queue whose
#: task is dead: ``fuse_uring_send_in_task``); all mean "stale".
STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED)

#: The source (in /proc/self/mountinfo) of the overlay ``-o overlay`` stacks on a mount point
#: (:mod:`blobfs.fuse.overlay`) starts with this: the fstype alone, "overlay", is Docker's too.
OVERLAY_SOURCE_PREFIX = "blobfs:"

#: The mount table's type of every blobfs FUSE mount (libfuse's ``subtype=blobfs``).
BLOBFS_FSTYPE = "fuse.blobfs"


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo octal-escapes space, tab, newline and backslash (fs/proc_namespace.c).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entry(mountpoint: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(fstype, source)`` of the mount at exactly ``mountpoint``, or None when not a mount."""
    target = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                parts = left.split()
                if len(parts) >= 5 and _unescape_mountinfo(parts[4]) == target:
                    rparts = right.split()
                    found = (rparts[0], _unescape_mountinfo(rparts[1]) if len(rparts) > 1 else "")
    except OSError:
        return None
    return found  # the last entry wins: it is the one on top


def is_blobfs_overlay(entry: tuple[str, str] | None) -> bool:
    """Whether a :func:`mount_entry` is the overlay of a ``-o overlay`` mount."""
    return entry is not None and entry[0] == "overlay" and entry[1].startswith(OVERLAY_SOURCE_PREFIX)


def is_stale(mountpoint: str | os.PathLike[str]) -> bool:
    """True when ``mountpoint`` is a FUSE mount (or blobfs's overlay on one) whose daemon is
    gone (:data:`STALE_ERRNOS`)."""
    # stat() alone can succeed from the kernel's attribute cache after the daemon died;
    # listing needs the daemon.
    try:
        with os.scandir(mountpoint) as it:
            next(it, None)
    except OSError as e:
        return e.errno in STALE_ERRNOS
    return False


def _commands(mountpoint: str, lazy: bool, fuse: bool = True) -> list[list[str]]:
    cmds = []
    for prog in ("fusermount3", "fusermount") if fuse else ():
        exe = shutil.which(prog)
        if exe:
            cmds.append([exe, "-u", "-q"] + (["-z"] if lazy else []) + [mountpoint])
    exe = shutil.which("umount")
    if exe:
        cmds.append([exe] + (["-l"] if lazy else []) + [mountpoint])
    return cmds


def unmount(mountpoint: str | os.PathLike[str], *, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount the blobfs mount at ``mountpoint`` (live or stale) with fusermount3, fusermount
    or umount.

    Raises :class:`BusyError` when the mount is in use (suggesting ``lazy``),
    :class:`UnmountError` when it is not mounted or every tool failed, and
    :class:`blobfs.errors.InputError` when the path does not exist.
    """
    mp = os.path.abspath(mountpoint)
    entry = mount_entry(mp)
    if entry is None and os.path.realpath(mp) != mp:
        # A symlinked path: the mount table names where it leads (mount(2) followed it).
        # Only now, so a mount given by its own name is never stat()ed (its daemon may hang).
        mp = os.path.realpath(mp)
        entry = mount_entry(mp)
    if entry is None:
        if not os.path.lexists(mp):
            raise InputError(f"{mp}: no such mount point")
        raise UnmountError(f"{mp}: not mounted")
    fuse = entry[0].startswith("fuse")
    if not fuse and not is_blobfs_overlay(entry):
        # umount(8), the last fallback below, would unmount anything, a tmpfs or /home alike.
        raise InputError(f"{mp}: not a FUSE mount ({entry[0]}); blobfs umount only unmounts FUSE mounts")
    if fuse and entry[0] != BLOBFS_FSTYPE:
        # Every blobfs mount says subtype=blobfs, and a dead daemon's stale mount keeps it, so
        # another type is someone else's filesystem (sshfs, a ratarmount): not ours to end.
        raise InputError(f"{mp}: a {entry[0]} mount, not blobfs; blobfs umount only unmounts blobfs mounts "
                         "(fusermount3 -u unmounts any FUSE mount)")
    errors: list[str] = []
    busy = False
    for cmd in _commands(mp, lazy, fuse):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{Path(cmd[0]).name}: {e}")
            continue
        if r.returncode == 0 and mount_entry(mp) is None:
            log.info("unmounted %s with %s", mp, Path(cmd[0]).name)
            return
        msg = (r.stderr or r.stdout).strip().splitlines()
        line = msg[-1] if msg else f"exit status {r.returncode}"
        log.debug("%s failed: %s", " ".join(cmd), line)
        if "busy" in line.lower():
            busy = True
        errors.append(f"{Path(cmd[0]).name}: {line}")
        if mount_entry(mp) is None:  # someone else unmounted it meanwhile
            return
    if busy:
        raise BusyError(f"{mp}: mount point is busy (files open or a shell inside it); close them or use --lazy")
    if not errors:
        raise UnmountError(f"{mp}: no unmount tool found (need fusermount3, fusermount or umount)")
    raise UnmountError(f"{mp}: cannot unmount ({'; '.join(errors)})")
