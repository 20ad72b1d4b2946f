"""ctypes declarations of libfuse 3's low-level API (``fuse_lowlevel.h``), the parts blobfs uses.

Why the low-level API at all: the high-level one (which mfusepy and fusepy wrap) cannot give
the kernel FOPEN_CACHE_DIR before libfuse 3.16.1 — its ``opendir`` drops the flag
(https://github.com/libfuse/libfuse/issues/821) — and Debian 12 ships 3.14. Without it every
warm ``find`` sends one READDIR per page of names to the daemon. The low-level ``opendir``
reply carries the flag on every libfuse 3 (lib/fuse_lowlevel.c ``fill_open``).

The structures that differ between platforms and libfuse releases (``struct stat``,
``struct statvfs``, ``struct fuse_file_info``) are taken from mfusepy, which already keeps
them right per platform and per libfuse version; this module adds only what the high-level
binding never declares. Layouts are checked against libfuse 3.14's headers; :data:`ABI_OK`
limits the driver to the 3.x releases whose ``fuse_lowlevel_ops`` order is known.
"""
from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

c_ino = ctypes.c_uint64
c_req = ctypes.c_void_p

#: ``struct fuse_lowlevel_ops`` of libfuse 3.0-3.16, in header order. Later releases only
#: append fields, and ``fuse_session_new`` copies ``op_size`` bytes, so a shorter table is
#: accepted by newer libraries too.
OPS_FIELDS = (
    "init", "destroy", "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir",
    "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write", "flush", "release",
    "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "setxattr", "getxattr",
    "listxattr", "removexattr", "access", "create", "getlk", "setlk", "bmap", "ioctl", "poll",
    "write_buf", "retrieve_reply", "forget_multi", "flock", "fallocate", "readdirplus",
    "copy_file_range", "lseek",
)


class LowLevelOps(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in OPS_FIELDS]


class FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]


class FuseBuf(ctypes.Structure):
    """``struct fuse_buf`` of libfuse 3.0-3.16 (include/fuse_common.h)."""

    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class ForgetData(ctypes.Structure):
    _fields_ = [("ino", c_ino), ("nlookup", ctypes.c_uint64)]


def entry_param_type(c_stat: type) -> type:
    """``struct fuse_entry_param`` around the binding's ``struct stat``."""

    class EntryParam(ctypes.Structure):
        _fields_ = [("ino", c_ino), ("generation", ctypes.c_uint64), ("attr", c_stat),
                    ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]

    return EntryParam


class Prototypes:
    """Callback types and the library's functions with their argument types set."""

    def __init__(self, mod: ModuleType) -> None:
        fi_p = ctypes.POINTER(mod.fuse_file_info)
        self.c_stat = mod.c_stat
        self.c_statvfs = mod.c_statvfs
        self.fuse_file_info = mod.fuse_file_info
        self.EntryParam = entry_param_type(mod.c_stat)
        cf = ctypes.CFUNCTYPE
        self.callbacks: dict[str, Any] = {
            "init": cf(None, ctypes.c_void_p, ctypes.c_void_p),
            "destroy": cf(None, ctypes.c_void_p),
            "lookup": cf(None, c_req, c_ino, ctypes.c_char_p),
            "forget": cf(None, c_req, c_ino, ctypes.c_uint64),
            "getattr": cf(None, c_req, c_ino, fi_p),
            "open": cf(None, c_req, c_ino, fi_p),
            "read": cf(None, c_req, c_ino, ctypes.c_size_t, ctypes.c_int64, fi_p),
            "opendir": cf(None, c_req, c_ino, fi_p),
            "readdir": cf(None, c_req, c_ino, ctypes.c_size_t, ctypes.c_int64, fi_p),
            "statfs": cf(None, c_req, c_ino),
            "forget_multi": cf(None, c_req, ctypes.c_size_t, ctypes.POINTER(ForgetData)),
        }
        lib = mod._libfuse
        self.lib = lib
        sig = {
            "fuse_session_new": (ctypes.c_void_p, [ctypes.POINTER(FuseArgs), ctypes.POINTER(LowLevelOps),
                                                   ctypes.c_size_t, ctypes.c_void_p]),
            "fuse_session_mount": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
            "fuse_session_unmount": (None, [ctypes.c_void_p]),
            "fuse_session_destroy": (None, [ctypes.c_void_p]),
            "fuse_session_loop": (ctypes.c_int, [ctypes.c_void_p]),
            "fuse_session_exit": (None, [ctypes.c_void_p]),
            "fuse_set_signal_handlers": (ctypes.c_int, [ctypes.c_void_p]),
            "fuse_remove_signal_handlers": (None, [ctypes.c_void_p]),
            "fuse_reply_err": (ctypes.c_int, [c_req, ctypes.c_int]),
            "fuse_reply_none": (None, [c_req]),
            "fuse_reply_entry": (ctypes.c_int, [c_req, ctypes.POINTER(self.EntryParam)]),
            "fuse_reply_attr": (ctypes.c_int, [c_req, ctypes.POINTER(mod.c_stat), ctypes.c_double]),
            "fuse_reply_open": (ctypes.c_int, [c_req, fi_p]),
            "fuse_reply_buf": (ctypes.c_int, [c_req, ctypes.c_char_p, ctypes.c_size_t]),
            "fuse_reply_statfs": (ctypes.c_int, [c_req, ctypes.POINTER(mod.c_statvfs)]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        # The request loop's parts (public since 3.0), for blobfs.fuse.pollloop; None if absent.
        buf_p = ctypes.POINTER(FuseBuf)
        for name, restype, argtypes in (
                ("fuse_session_receive_buf", ctypes.c_int, [ctypes.c_void_p, buf_p]),
                ("fuse_session_process_buf", None, [ctypes.c_void_p, buf_p]),
                ("fuse_session_exited", ctypes.c_int, [ctypes.c_void_p]),
                ("fuse_session_fd", ctypes.c_int, [ctypes.c_void_p])):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        # Multithreaded loop: fuse_session_loop_mt_31(se, clone_fd) is exported by every
        # libfuse >= 3.2 under that name (the public name is a versioned macro).
        self.loop_mt = getattr(lib, "fuse_session_loop_mt_31", None)
        if self.loop_mt is not None:
            self.loop_mt.restype = ctypes.c_int
            self.loop_mt.argtypes = [ctypes.c_void_p, ctypes.c_int]


def abi_ok(mod: ModuleType) -> bool:
    """Whether the loaded libfuse is one whose low-level ABI this module matches."""
    major = int(getattr(mod, "fuse_version_major", 0))
    minor = int(getattr(mod, "fuse_version_minor", 0))
    lib = getattr(mod, "_libfuse", None)
    if major != 3 or minor > 16 or lib is None:
        return False
    return all(hasattr(lib, n) for n in ("fuse_session_new", "fuse_reply_open", "fuse_session_loop"))


__all__ = ["ForgetData", "FuseArgs", "FuseBuf", "LowLevelOps", "OPS_FIELDS", "Prototypes", "abi_ok"]
