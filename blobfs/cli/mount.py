"""``blobfs mount`` and ``blobfs umount`` (thin: arguments in, one line out on failure).

mount(8) runs FUSE filesystems of type ``fuse.blobfs`` through mount.fuse3, which executes
``blobfs SOURCE MOUNTPOINT -o OPTS``; ``blobfs.cli.main.route_argv`` turns that into
``blobfs mount SOURCE MOUNTPOINT -o OPTS``.
"""
from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

from blobfs.cli.params import NonEmptyPath
from blobfs.errors import BlobfsError, InputError, one_line

log = logging.getLogger(__name__)


def _fail(prog: str, e: BlobfsError) -> NoReturn:
    # Escaped like every other command's line: a path may hold a newline or an escape sequence
    # (which click.echo would also strip silently when stderr is no terminal).
    click.echo(f"{prog}: {one_line(str(e))}", err=True)
    sys.exit(2 if isinstance(e, InputError) else 1)


def _setup_logging(debug: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("blobfs: %(levelname)s: %(message)s"))
        root.addHandler(h)
    # A mount's own lines ("mounted ... on ...") are INFO and shown by default, but the group's
    # -q ("only errors") and -vv ("debug") still hold, in the daemon's log too.
    group = click.get_current_context().parent
    params = group.params if group is not None else {}
    if debug or params.get("verbose", 0) >= 2:
        level = logging.DEBUG
    elif params.get("quiet"):
        level = logging.ERROR
    else:
        level = logging.INFO
    root.setLevel(level)


@click.command("mount", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=NonEmptyPath())
@click.argument("mountpoint", type=NonEmptyPath())
@click.option("-f", "--foreground", is_flag=True, help="Stay attached (do not daemonize); log to stderr.")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options as mount(8) passes them: allow_other, uid=N|USER and gid=N|GROUP (the owner and "
                   "group every entry shows), umask=NNN (octal; permission bits taken from every entry's mode, "
                   "never added), auto_unmount, nonempty, "
                   "threads, nothreads, workers=N|auto (daemon processes, default one per CPU, at most 8), spin_us=N (default 50 with one process, 0 with workers), uring|nouring (FUSE over io_uring; default: whenever the kernel has it on), overlay (root, with allow_other: overlayfs on top answers ioctls such as Python's isatty() in the kernel; faster Python open(), slower plain open), libfuse=2|3, fuse_api=lowlevel|highlevel, log=FILE, offsets=PKL, ann=DIR, synthesize_ann, "
                   "fsname=NAME, debug, noexec|exec (the kernel flag; the last one wins). Generic ones (ro, nofail, noauto, user, _netdev, x-systemd.*, "
                   "...) are ignored. allow_root is refused (the kernel's caches would let other users past it; use "
                   "allow_other,umask=077).")
@click.option("--offsets", type=NonEmptyPath(), help="Offsets file for a bare TAR source (default: the sibling "
                   "STEM_offsets.pkl, else the tar's own headers).")
@click.option("--ann", type=NonEmptyPath(), help="Annotation folder for a bare TAR source.")
@click.option("--synthesize-ann", is_flag=True, help="Show an empty annotation for items without one.")
@click.option("--libfuse", type=click.Choice(["2", "3"]), default=None,
              help="libfuse major version (default: $BLOBFS_LIBFUSE, else 3).")
@click.option("--threads/--no-threads", default=None,
              help="Multithreaded dispatch (default: single-threaded, faster on small machines).")
@click.option("-d", "--debug", is_flag=True, help="Log every FUSE request (implies nothing else).")
def mount_cmd(source: str, mountpoint: str, foreground: bool, options: tuple[str, ...], offsets: str | None,
              ann: str | None, synthesize_ann: bool, libfuse: str | None, threads: bool | None,
              debug: bool) -> None:
    """Mount the blob project SOURCE read-only at MOUNTPOINT as a classic project.

    Returns once the mount is listable (or with one line on stderr when it cannot mount).
    """
    from blobfs.fuse.daemon import run
    from blobfs.fuse.options import build_options

    try:
        opts = build_options(source, mountpoint, o=options, foreground=foreground, libfuse=libfuse,
                             threads=threads, offsets=offsets, ann=ann, synthesize_ann=synthesize_ann,
                             debug=debug)
        _setup_logging(opts.debug)
        if opts.ignored:
            log.debug("ignored generic mount options: %s", ",".join(opts.ignored))
        code = run(opts)
    except BlobfsError as e:
        _fail("blobfs mount", e)
    sys.exit(code)


@click.command("umount", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("mountpoint", type=NonEmptyPath())
@click.option("-l", "-z", "--lazy", is_flag=True,
              help="Detach now, finish when the last file is closed (for a busy mount).")
def umount_cmd(mountpoint: str, lazy: bool) -> None:
    """Unmount a blobfs mount (also clears a stale mount of a killed daemon)."""
    from blobfs.fuse.umount import unmount

    try:
        unmount(mountpoint, lazy=lazy)
    except BlobfsError as e:
        _fail("blobfs umount", e)
