"""Mount options: ONE frozen dataclass built by the CLI, and the ``-o a,b,c`` parser.

``-o`` is parsed the way mount(8) / mount.fuse3 pass options to a FUSE helper, so an fstab
line ``/data/proj /mnt/proj fuse.blobfs ro,allow_other,nofail 0 0`` works: generic mount
options that only mean something to mount(8) or systemd are accepted and ignored; anything
unknown is a usage error naming the option.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from blobfs.errors import InputError
from blobfs.model.ownership import Ownership, parse_id, parse_umask

#: Seconds the kernel may cache attributes, lookups and failed lookups. The view never
#: changes while mounted, so a day is as good as forever and keeps each stat in the kernel.
CACHE_TIMEOUT = 86400.0

#: Generic options mount(8), mount.fuse3, systemd or the fstab author may pass; they mean
#: nothing to blobfs (which is always read-only, nosuid, nodev) and are ignored. ``rw`` too:
#: mount.fuse3 adds it (with ``dev,suid``) to every fstab line that does not say ``ro``, so
#: refusing it would break ``defaults``; the mount is read-only regardless.
GENERIC_FLAGS = frozenset(
    {
        "ro", "rw", "defaults", "auto", "noauto", "nofail", "user", "users", "nouser", "owner",
        "group", "_netdev", "suid", "nosuid", "dev", "nodev", "async",
        "sync", "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
        "diratime", "nodiratime", "lazytime", "nolazytime", "silent", "loud", "nodfltperm",
        "default_permissions", "bg", "fg",
    }
)
GENERIC_PREFIXES = ("x-", "comment=", "uhelper=", "helper=")

#: blobfs's own ``-o`` options (key -> takes a value). ``exec``/``noexec`` are kernel flags blobfs
#: passes on (the last one wins, as with mount(8)): pass-through files keep their execute bits.
OWN_OPTIONS = {
    "exec": False,
    "noexec": False,
    "allow_other": False,
    "allow_root": False,
    "uid": True,
    "gid": True,
    "umask": True,
    "auto_unmount": False,
    "debug": False,
    "nonempty": False,
    "threads": False,
    "nothreads": False,
    "synthesize_ann": False,
    "libfuse": True,
    "fuse_api": True,
    "spin_us": True,
    "workers": True,
    "uring": False,
    "nouring": False,
    "overlay": False,
    "log": True,
    "offsets": True,
    "ann": True,
    "fsname": True,
    "subtype": True,
}


#: Default polling window after each request (µs). On the test VM 50 did as well as 200-1000
#: for Python ``open()`` readers (1 and 8) and cold reads; a longer window only burns more CPU.
DEFAULT_SPIN_US = 50
MAX_SPIN_US = 1_000_000
MAX_WORKERS = 256


class MountUsageError(InputError):
    """A bad mount option or argument (CLI exit code 2)."""


@dataclass(frozen=True)
class MountOptions:
    """Everything ``blobfs mount`` was asked to do."""

    source: Path
    mountpoint: Path
    foreground: bool = False
    libfuse: int | None = None  #: 2, 3 or None (= $BLOBFS_LIBFUSE, else 3)
    #: "lowlevel", "highlevel" or None (= $BLOBFS_FUSE_API, else low-level where available)
    fuse_api: str | None = None
    threads: bool = False  #: multithreaded dispatch (default: single thread, measured faster)
    #: µs the low-level driver keeps polling /dev/fuse after a request (0: block at once;
    #: None: :data:`DEFAULT_SPIN_US` for one daemon process, 0 with workers); see
    #: :mod:`blobfs.fuse.pollloop`
    spin_us: int | None = None
    #: daemon processes of the low-level driver, each pinned to its CPUs (None: one per CPU,
    #: at most 8); see :mod:`blobfs.fuse.cpuworkers`
    workers: int | None = None
    #: serve through FUSE over io_uring (per-CPU kernel queues; low-level driver, not with
    #: ``threads``): None (the default) when the kernel offers it, True: asked for (a warning
    #: when it cannot be had), False: never; see :mod:`blobfs.fuse.uringsession`
    uring: bool | None = None
    #: stack a read-only overlayfs on the FUSE mount so the kernel answers ioctls (Python's
    #: ``isatty()``) itself; see :mod:`blobfs.fuse.overlay`
    overlay: bool = False
    allow_other: bool = False
    uid: int | None = None  #: the owner every entry shows (None: its source's)
    gid: int | None = None  #: the group every entry shows (None: its source's)
    umask: int | None = None  #: permission bits taken from every entry's mode (see :mod:`blobfs.model.ownership`)
    auto_unmount: bool = False
    debug: bool = False
    nonempty: bool = False  #: allow a non-empty mount point
    noexec: bool = False  #: the kernel's noexec flag (fstab ``noexec``, or ``user``, which implies it)
    offsets: Path | None = None
    ann: Path | None = None
    synthesize_ann: bool = False
    log_file: Path | None = None
    fsname: str | None = None
    ignored: tuple[str, ...] = field(default=())  #: generic options accepted and ignored

    @property
    def ownership(self) -> Ownership | None:
        """What the view shows instead of each entry's owner, group and permission bits."""
        return Ownership(self.uid, self.gid, self.umask) or None

    @property
    def source_name(self) -> str:
        """What the mount table shows as the mount's source: ``fsname``, else the source path."""
        return self.fsname or str(self.source)

    def spin_window(self, workers: int) -> int:
        """The polling window for a daemon of ``workers`` processes. With pinned workers the
        default is 0: a worker polling on the reader's CPU would keep the reader, whose reply
        it just sent, off that CPU (measured: Python ``open()`` 0.23x native with 50 µs
        against 0.33x with 0, tests/bench/bench_mount.py at 30k)."""
        if self.spin_us is not None:
            return self.spin_us
        return DEFAULT_SPIN_US if workers < 2 else 0

    def fuse_kwargs(self, libfuse: int) -> dict[str, Any]:
        """Keyword options for the binding's ``FUSE(ops, mountpoint, **kwargs)``."""
        kw: dict[str, Any] = {
            # libfuse's own fork/daemonize is never used: blobfs daemonizes before calling it.
            "foreground": True,
            "nothreads": not self.threads,
            "debug": self.debug,
            "ro": True,
            "default_permissions": True,
            "kernel_cache": True,
            "attr_timeout": CACHE_TIMEOUT,
            "entry_timeout": CACHE_TIMEOUT,
            "negative_timeout": CACHE_TIMEOUT,
            "use_ino": True,
            # The binding joins these into one -o string that libfuse splits on commas.
            "fsname": escape_opt(self.source_name),
            "subtype": "blobfs",
        }
        if self.allow_other:
            kw["allow_other"] = True
        if self.auto_unmount:
            kw["auto_unmount"] = True
        if self.noexec:
            kw["noexec"] = True
        if self.nonempty and libfuse == 2:
            kw["nonempty"] = True  # libfuse 3 dropped the option (it always allows it)
        return kw


def escape_opt(value: str) -> str:
    """``value`` as one item of a libfuse ``-o`` string: fuse_opt_parse splits on commas and
    unescapes backslashes, so a comma or backslash in a path must be escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def parse_o(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse repeated ``-o a,b=c`` values into ``{key: value}`` (flags map to True).

    Generic options go to the ``"ignored"`` key; unknown ones raise :class:`MountUsageError`.
    """
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, arg = item.partition("=")
            if item in GENERIC_FLAGS or item.startswith(GENERIC_PREFIXES):
                ignored.append(item)
                continue
            if key not in OWN_OPTIONS:
                raise MountUsageError(f"unknown mount option {item!r}")
            wants_value = OWN_OPTIONS[key]
            if wants_value and not arg:  # log= is no log file, not "none": say so
                raise MountUsageError(f"mount option {key!r} needs a value ({key}=...)")
            if not wants_value and eq:
                raise MountUsageError(f"mount option {key!r} takes no value")
            if key in ("exec", "noexec"):
                out["noexec"] = key == "noexec"
                continue
            out[key] = arg if wants_value else True
    if ignored:
        out["ignored"] = tuple(ignored)
    return out


def _check_overlay(parsed: dict[str, Any], libfuse: int | str | None) -> None:
    """What ``-o overlay`` cannot be combined with (see :mod:`blobfs.fuse.overlay`)."""
    if not parsed.get("allow_other"):
        # overlayfs reaches the FUSE layer with the mounter's credentials, so the FUSE mount's
        # own "only the mounting user" check no longer applies: say so instead of implying it.
        raise MountUsageError("mount option 'overlay' makes the files readable by every user the file modes "
                              "allow (overlayfs has no allow_other); say -o overlay,allow_other")
    if parsed.get("auto_unmount"):
        raise MountUsageError("mount options 'overlay' and 'auto_unmount' cannot be combined: fusermount3 "
                              "watches the FUSE mount, which the overlay hides")
    if str(libfuse if libfuse is not None else parsed.get("libfuse")) == "2" or parsed.get("fuse_api") == "highlevel":
        raise MountUsageError("mount option 'overlay' needs the low-level driver (libfuse 3, fuse_api=lowlevel)")


def build_options(
    source: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    *,
    o: tuple[str, ...] | list[str] = (),
    foreground: bool = False,
    libfuse: int | str | None = None,
    threads: bool | None = None,
    offsets: str | os.PathLike[str] | None = None,
    ann: str | os.PathLike[str] | None = None,
    synthesize_ann: bool = False,
    debug: bool = False,
) -> MountOptions:
    """Merge command-line flags and ``-o`` options into :class:`MountOptions` (flags win)."""
    parsed = parse_o(o)
    if parsed.get("threads") and parsed.get("nothreads"):
        raise MountUsageError("mount options 'threads' and 'nothreads' contradict each other")
    if threads is None:
        threads = bool(parsed.get("threads"))
    if parsed.get("uring") and parsed.get("nouring"):
        raise MountUsageError("mount options 'uring' and 'nouring' contradict each other")
    if parsed.get("allow_root"):
        # libfuse refuses other users in the daemon (fuse_lowlevel.c ``deny_others``), but the
        # kernel answers from its caches for a day (CACHE_TIMEOUT) without asking: with
        # libfuse 2, 3 and the low-level driver alike, any user could then read every file root
        # had looked at. The kernel's own mode check (default_permissions) holds for cached
        # entries too, and root passes it through its capabilities.
        raise MountUsageError("mount option 'allow_root' is not supported (the kernel's caches would let other "
                              "users past it); for the shown owner and root only, use -o allow_other,umask=077 "
                              "(with uid= to choose that owner)")
    if parsed.get("overlay"):
        _check_overlay(parsed, libfuse)
    # mount.fuse3 adds subtype=TYPE from an fstab type "fuse.TYPE". The mount table's type is
    # what "blobfs umount" and "findmnt -t fuse.blobfs" go by, so another name is refused
    # rather than silently dropped.
    if parsed.get("subtype", "blobfs") != "blobfs":
        raise MountUsageError(f"mount option subtype={parsed['subtype']} is not supported: the mount type "
                              "is always fuse.blobfs")
    lib = libfuse if libfuse is not None else parsed.get("libfuse")
    if lib is not None:
        if str(lib) not in ("2", "3"):
            raise MountUsageError(f"libfuse must be 2 or 3, not {lib!r}")
        lib = int(lib)

    api = parsed.get("fuse_api")
    if api is not None and api not in ("lowlevel", "highlevel"):
        raise MountUsageError(f"fuse_api must be lowlevel or highlevel, not {api!r}")

    spin = parsed.get("spin_us")
    try:
        spin = None if spin is None else int(spin)
    except ValueError:
        spin = -1
    if spin is not None and not 0 <= spin <= MAX_SPIN_US:
        raise MountUsageError(f"spin_us must be a whole number of microseconds from 0 to {MAX_SPIN_US}, "
                              f"not {parsed.get('spin_us')!r}")

    workers = parsed.get("workers")
    if workers is not None:
        if workers == "auto":
            workers = None
        elif not (workers.isdigit() and 1 <= int(workers) <= MAX_WORKERS):
            raise MountUsageError(f"workers must be 'auto' or a whole number from 1 to {MAX_WORKERS}, "
                                  f"not {workers!r}")
        else:
            workers = int(workers)

    try:
        owner = {k: parse_id(k, parsed[k]) for k in ("uid", "gid") if k in parsed}
        umask = parse_umask(parsed["umask"]) if "umask" in parsed else None
    except ValueError as e:
        raise MountUsageError(str(e)) from None

    def _path(v: Any) -> Path | None:
        return None if v in (None, "") else Path(os.path.abspath(os.path.expanduser(str(v))))

    src = str(source)
    if src.startswith("blobfs#"):  # old mount.fuse spelling: "blobfs#SOURCE"
        src = src[len("blobfs#"):]
    # mount(2) follows symlinks, so the mount table names the real path: checking and later
    # unmounting the path as typed would miss a mount on a symlinked mount point.
    mp = "" if mountpoint in (None, "") else os.path.realpath(os.path.expanduser(str(mountpoint)))
    return MountOptions(
        source=_path(src),  # type: ignore[arg-type]
        mountpoint=_path(mp),  # type: ignore[arg-type]
        foreground=foreground,
        libfuse=lib,
        fuse_api=api,
        threads=threads,
        spin_us=spin,
        workers=workers,
        uring=True if parsed.get("uring") else (False if parsed.get("nouring") else None),
        overlay=bool(parsed.get("overlay")),
        allow_other=bool(parsed.get("allow_other")),
        uid=owner.get("uid"),
        gid=owner.get("gid"),
        umask=umask,
        auto_unmount=bool(parsed.get("auto_unmount")),
        debug=debug or bool(parsed.get("debug")),
        nonempty=bool(parsed.get("nonempty")),
        noexec=bool(parsed.get("noexec")),
        offsets=_path(offsets if offsets is not None else parsed.get("offsets")),
        ann=_path(ann if ann is not None else parsed.get("ann")),
        synthesize_ann=synthesize_ann or bool(parsed.get("synthesize_ann")),
        log_file=_path(parsed.get("log")),
        fsname=parsed.get("fsname"),
        ignored=parsed.get("ignored", ()),
    )


__all__ = ["CACHE_TIMEOUT", "DEFAULT_SPIN_US", "MountOptions", "MountUsageError", "build_options", "parse_o", "replace"]
