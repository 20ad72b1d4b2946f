"""Could the kernel answer Python's ``isatty()`` for blobfs? Asks this kernel, changes nothing.

Run by hand (root), never by pytest:

    python3 tests/bench/probe_bpf_lsm.py

Why: every Python ``open()`` before 3.14 asks ``isatty()``, an ioctl (``TCGETS``) that
fs/fuse/ioctl.c forwards to the daemon on every call, so each file costs one round trip; that
request is the 8-reader gap in the README's performance section. The daemon cannot refuse it,
but the kernel's security hook ``security_file_ioctl`` runs first (fs/ioctl.c), and a BPF LSM
program there (Documentation/bpf/prog_lsm.rst) could answer ``ENOTTY`` — the answer the daemon
gives — for the mount's own files, with no request at all.

That needs the "bpf" LSM active and a kernel that loads programs attached through a BPF
trampoline. This script loads, and closes at once without attaching, three minimal programs
(``r0 = 0; exit``), so nothing on the system changes:

* ``tp_btf/sched_switch``: BTF-typed, no trampoline (the control: BTF and the loader work);
* ``fentry/vfs_read``: a trampoline program;
* ``lsm/file_ioctl``: the program blobfs would need.

Each line says "loads" or the errno the kernel gave, with the verifier's last log line.
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from pathlib import Path

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
LSM_LIST = Path("/sys/kernel/security/lsm")
LOCKDOWN = Path("/sys/kernel/security/lockdown")
NR_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
#: (what, prog_type, expected_attach_type, BTF name, BTF kind) from include/uapi/linux/bpf.h
#: and include/uapi/linux/btf.h (kind 8 typedef, 12 function)
PROBES = [("tp_btf/sched_switch (control, no trampoline)", 26, 23, "btf_trace_sched_switch", 8),
          ("fentry/vfs_read (trampoline)", 26, 24, "vfs_read", 12),
          ("lsm/file_ioctl (what blobfs would need)", 29, 27, "bpf_lsm_file_ioctl", 12)]
#: BTF kinds followed by vlen records of this size, and kinds followed by one fixed record
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}


def btf_ids(wanted: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Type ids of (name, kind) in the kernel's BTF (include/uapi/linux/btf.h layout)."""
    data = BTF_PATH.read_bytes()
    _magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    types = data[hdr_len + type_off:hdr_len + type_off + type_len]
    strs = data[hdr_len + str_off:hdr_len + str_off + str_len]
    by_off = {strs.find(b"\0" + name.encode() + b"\0") + 1: (name, kind) for name, kind in wanted}
    found: dict[tuple[str, int], int] = {}
    pos, tid = 0, 1
    while pos < len(types):
        name_off, info = struct.unpack_from("<II", types, pos)
        kind = (info >> 24) & 0x1F
        key = by_off.get(name_off)
        if key is not None and key[1] == kind:
            found.setdefault(key, tid)
        pos += 12 + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * (info & 0xFFFF)
        tid += 1
    return found


def try_load(prog_type: int, attach_type: int, btf_id: int) -> tuple[int, str]:
    """Load ``r0 = 0; exit`` and close it: (0 or errno, the verifier's last log line)."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Dual MIT/GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = bytearray(152)  # union bpf_attr, BPF_PROG_LOAD part
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(code) // 8, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd = libc.syscall(ctypes.c_long(NR_BPF[platform.machine()]), BPF_PROG_LOAD, buf, len(attr))
    err = ctypes.get_errno()
    last = (log.value.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
    if fd >= 0:
        os.close(fd)
        return 0, last
    return err, last


def main() -> int:
    if platform.machine() not in NR_BPF:
        print(f"not on {platform.machine()}")
        return 2
    print(f"kernel {platform.release()}")
    for what, path in (("active LSMs", LSM_LIST), ("lockdown", LOCKDOWN)):
        try:
            print(f"{what}: {path.read_text().strip()}")
        except OSError:
            print(f"{what}: {path} not readable (securityfs not mounted?)")
    if not BTF_PATH.exists():
        print(f"{BTF_PATH}: missing, so no BTF-typed program can load")
        return 1
    ids = btf_ids({(name, kind) for _w, _p, _a, name, kind in PROBES})
    worked = True
    for what, prog_type, attach_type, name, kind in PROBES:
        btf_id = ids.get((name, kind))
        if btf_id is None:
            print(f"{what}: {name} not in the kernel's BTF")
            worked = False
            continue
        err, last = try_load(prog_type, attach_type, btf_id)
        said = "loads" if err == 0 else f"refused: {os.strerror(err)} (errno {err})"
        print(f"{what}: {said}" + (f"; verifier: {last}" if last else "; verifier log empty"))
        worked = worked and err == 0
    return 0 if worked else 1


if __name__ == "__main__":
    sys.exit(main())
