"""Files opened by path stay the ones the view checked, even when the source changes between
the check and the open.

The view shows a symlink only when it leads inside the project (README, "Symlinks"), and it
checks that when it looks a path up; the read then opens the path again. Whoever can write to
the source could swap the file for a link to ``/etc/shadow`` in between (or, for an ``img/``
file checked only when the project was opened, at any time), and a daemon running as root
with ``allow_other`` would serve it to every user. The lookup's own check races too (a link
seen by ``lstat`` may be a file again when its target is resolved). So the descriptor itself
is checked after the open: a file inside the project by the kernel's own name for it. Where
the view follows no link at all (a bare tar's ``ann=`` folder), it must be the very file the
lookup's ``lstat`` found (same device and inode).
"""
from __future__ import annotations

import os

#: The kernel's name of an open descriptor: the file actually opened, whatever links led to it
#: (proc(5), /proc/pid/fd/). Only when /proc is not mounted is the path resolved once more.
_FD_LINK = "/proc/self/fd/{}"


def same_file(fd: int, looked_up: os.stat_result) -> bool:
    """Whether ``fd`` is the file whose (link-followed) stat a lookup returned."""
    s = os.fstat(fd)
    return s.st_ino == looked_up.st_ino and s.st_dev == looked_up.st_dev


def opened_inside(fd: int, path: str | os.PathLike[str], root_real: str) -> bool:
    """Whether ``fd``, opened from ``path``, is a file inside the folder ``root_real``."""
    try:
        real = os.readlink(_FD_LINK.format(fd))
    except OSError:
        real = os.path.realpath(path)
    return real.startswith(root_real + "/")
