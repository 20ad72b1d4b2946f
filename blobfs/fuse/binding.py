"""Which Python FUSE binding and which libfuse the mount uses.

blobfs is written against the fusepy ``Operations`` API. The preferred binding is **mfusepy**
(maintained fork: libfuse 2 and 3, ``readdir_with_offset``); plain **fusepy** (libfuse 2 only,
module ``fuse``) still works as a fallback.

Both bindings pick the shared library once, at import time, from ``FUSE_LIBRARY_PATH`` /
``FUSE_LIBRARY_NAME``; without them mfusepy tries ``find_library('fuse')`` (libfuse **2**) first.
blobfs wants libfuse **3** by default: only libfuse 3 + the kernel give zero-message opens
(``open`` answered ENOSYS once, then the kernel stops sending OPEN/FLUSH — see
https://github.com/libfuse/libfuse/blob/master/include/fuse_lowlevel.h ``no_open`` docs), so
:func:`load` sets ``FUSE_LIBRARY_NAME`` before the first import unless the user chose a library.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from blobfs.errors import BlobfsError
from blobfs.fuse.fastfuse import caches_dirs, fast_fuse
from blobfs.fuse.lowlevel_abi import abi_ok

log = logging.getLogger(__name__)

#: ``BLOBFS_LIBFUSE=2|3`` picks the library when the command line does not.
LIBFUSE_ENV = "BLOBFS_LIBFUSE"
#: ``BLOBFS_FUSE_BINDING=mfusepy|fusepy`` forces a binding (tests use it to cover fusepy).
BINDING_ENV = "BLOBFS_FUSE_BINDING"
#: ``BLOBFS_FUSE_API=lowlevel|highlevel``: on libfuse 3 with mfusepy, blobfs drives libfuse's
#: low-level API itself (:mod:`blobfs.fuse.lowlevel`); ``highlevel`` uses mfusepy's ``FUSE``.
API_ENV = "BLOBFS_FUSE_API"
DEFAULT_LIBFUSE = 3

_LIBRARY_NAMES = {2: "fuse", 3: "fuse3"}


class BindingError(BlobfsError):
    """No usable FUSE binding / libfuse (one line, says what to install)."""


@dataclass(frozen=True)
class Binding:
    """The loaded binding: what ``daemon`` needs to run a filesystem."""

    name: str  #: "mfusepy" or "fusepy"
    module: ModuleType
    libfuse: int  #: major version of the loaded shared library (2 or 3)
    library_path: str

    @property
    def FUSE(self) -> Callable[..., Any]:  # noqa: N802 - mirrors the binding's class name
        if self.name == "mfusepy":
            return fast_fuse(self.module)
        return self.module.FUSE

    @property
    def caches_dirs(self) -> bool:
        """Whether OPENDIR can reply FOPEN_CACHE_DIR (see :mod:`blobfs.fuse.fastfuse`)."""
        return self.name == "mfusepy" and caches_dirs(self.module)

    def lowlevel(self, choice: str | None = None) -> bool:
        """Whether the mount runs on libfuse's low-level API (:mod:`blobfs.fuse.lowlevel`):
        libfuse 3 through mfusepy, unless ``choice`` (else ``$BLOBFS_FUSE_API``) says
        ``highlevel``."""
        if self.name != "mfusepy" or self.libfuse != 3:
            return False
        if (choice or os.environ.get(API_ENV, "").strip().lower()) == "highlevel":
            return False
        return abi_ok(self.module)

    @property
    def has_readdir_offset(self) -> bool:
        """mfusepy passes libfuse's readdir offset through (``readdir_with_offset``)."""
        return self.name == "mfusepy"


def requested_libfuse(choice: int | str | None = None) -> int | None:
    """The libfuse major version the user asked for (argument, then ``$BLOBFS_LIBFUSE``)."""
    raw = choice if choice is not None else os.environ.get(LIBFUSE_ENV)
    if raw in (None, ""):
        return None
    try:
        v = int(raw)
    except (TypeError, ValueError):
        v = 0
    if v not in _LIBRARY_NAMES:
        raise BindingError(f"libfuse version must be 2 or 3, not {raw!r}")
    return v


def _choose_library(version: int | None) -> None:
    # The bindings read these variables once, at import; an explicit FUSE_LIBRARY_PATH or
    # FUSE_LIBRARY_NAME from the user wins unless the command line asked for a version.
    if version is None:
        if os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME"):
            return
        version = DEFAULT_LIBFUSE
    os.environ.pop("FUSE_LIBRARY_PATH", None)
    os.environ["FUSE_LIBRARY_NAME"] = _LIBRARY_NAMES[version]


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except OSError as e:  # the binding raises OSError when it cannot find/load libfuse
        raise BindingError(f"cannot load libfuse through {name}: {e} (install fuse3 / libfuse3-3)") from e


def load(libfuse: int | None = None) -> Binding:
    """Import the binding with the requested libfuse (``None``: env, else libfuse 3).

    Raises :class:`BindingError` when it cannot be satisfied — including a second call asking
    for another version than the one already loaded in this process.
    """
    version = requested_libfuse(libfuse)
    forced = os.environ.get(BINDING_ENV, "").strip().lower() or None
    if forced not in (None, "mfusepy", "fusepy"):
        raise BindingError(f"{BINDING_ENV} must be mfusepy or fusepy, not {forced!r}")
    api = os.environ.get(API_ENV, "").strip().lower()
    if api not in ("", "lowlevel", "highlevel"):
        raise BindingError(f"{API_ENV} must be lowlevel or highlevel, not {api!r}")

    mod: ModuleType | None = None
    name = "mfusepy"
    if forced != "fusepy":
        if "mfusepy" not in sys.modules:
            _choose_library(version)
        try:
            mod = _import("mfusepy")
        except ImportError:
            if forced == "mfusepy":
                raise BindingError("mfusepy is not installed (pip install mfusepy)") from None
    if mod is None:
        name = "fusepy"
        # fusepy only knows libfuse 2 (its ctypes structs are libfuse 2's).
        if version == 3:
            raise BindingError("libfuse 3 needs mfusepy (pip install mfusepy); fusepy supports libfuse 2 only")
        if "fuse" not in sys.modules:
            _choose_library(2)
        try:
            mod = _import("fuse")
        except ImportError:
            raise BindingError("no FUSE binding installed (pip install mfusepy)") from None
        if not hasattr(mod, "FUSE") or not hasattr(mod, "Operations"):
            raise BindingError(f"module 'fuse' at {getattr(mod, '__file__', '?')} is not fusepy")

    major = int(getattr(mod, "fuse_version_major", 2))
    path = str(getattr(getattr(mod, "_libfuse", None), "_name", "?"))
    if version is not None and major != version:
        raise BindingError(
            f"libfuse {version} requested but {name} already loaded libfuse {major} ({path}) in this process"
        )
    log.debug("FUSE binding %s, libfuse %d (%s)", name, major, path)
    return Binding(name=name, module=mod, libfuse=major, library_path=path)
