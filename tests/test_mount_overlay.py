"""``-o overlay``: overlayfs stacked on the FUSE mount so the kernel answers ioctls itself.

Every mount test of the suite also runs under it (``mount_helpers.LIBFUSE_VERSIONS``,
``libfuse3-overlay``); these cover what is particular to it.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from blobfs.fuse import wire
from blobfs.fuse.options import MountUsageError, build_options
from blobfs.fuse.umount import mount_entry
from mount_helpers import (BLOBFS, Libfuse, cleanup_mountpoint, daemon_pids, is_mounted, mount_cmd, mounted,
                           overlay_unavailable, read_expected, requires_fuse, uring_unavailable, wait_gone)

_mount_test = pytest.mark.mount, pytest.mark.timeout(120), requires_fuse
URING = Libfuse(3, "uring")
OVERLAY = ("-o", "overlay,allow_other")


def _mount_test_overlay(f):  # type: ignore[no-untyped-def]
    why = overlay_unavailable()
    for mark in (*_mount_test, pytest.mark.skipif(why is not None, reason=why or "")):
        f = mark(f)
    return f


def _blobfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BLOBFS, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _private_dirs(pid: int | None = None) -> set[str]:
    """The overlay mounts' private directories in /run; with ``pid``, only those of the mount
    run by that process (another test session's mount may be setting up at the same time)."""
    prefix = f"blobfs-overlay-{pid}-" if pid is not None else "blobfs-overlay-"
    return {n for n in os.listdir("/run") if n.startswith(prefix)} if os.path.isdir("/run") else set()


# -- options ---------------------------------------------------------------------------------
def test_overlay_option_and_what_it_cannot_be_combined_with(tmp_path):
    assert build_options("s", "m", o=["overlay,allow_other"]).overlay is True
    assert build_options("s", "m").overlay is False
    for o, word in [
        ("overlay", "allow_other"),  # overlayfs would let every user in: it must be asked for
        ("overlay,allow_other,auto_unmount", "auto_unmount"),
        ("overlay,allow_other,libfuse=2", "low-level"),
        ("overlay,allow_other,fuse_api=highlevel", "low-level"),
    ]:
        with pytest.raises(MountUsageError, match=word):
            build_options("s", "m", o=[o])
    with pytest.raises(MountUsageError, match="low-level"):
        build_options("s", "m", o=["overlay,allow_other"], libfuse=2)


def test_cli_overlay_usage_errors_exit_2_before_anything_changes(blob_project, tmp_path):
    before = _private_dirs()
    r = _blobfs("mount", "-o", "overlay", str(blob_project), str(tmp_path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "allow_other" in r.stderr, r.stderr
    assert not is_mounted(tmp_path) and _private_dirs() == before


# -- real mounts -----------------------------------------------------------------------------
@_mount_test_overlay
@pytest.mark.skipif(uring_unavailable() is not None, reason=uring_unavailable() or "")
@pytest.mark.parametrize("overlay", [True, False], ids=["overlay", "plain"])
def test_python_open_sends_no_ioctl_through_the_overlay(blob_project, fixtures_dir, tmp_path, overlay):
    # -o debug logs every request the daemon answers; Python's open() asks isatty() per file
    args = ("-o", "workers=1,debug", *(OVERLAY if overlay else ()))
    with mounted(blob_project, tmp_path, libfuse=URING, args=args) as m:
        files = sorted(p for p in m.mountpoint.rglob("*") if p.is_file())
        for p in files:
            with open(p, "rb") as f:
                assert len(f.read()) == p.stat().st_size
        err = m.stderr()
    ioctls = err.count(f"opcode {wire.IOCTL}, nodeid")
    reads = err.count(f"opcode {wire.READ}, nodeid")
    assert reads >= len(files) > 30, err[-2000:]  # the log saw the reads either way
    assert ioctls == (0 if overlay else len(files)), (ioctls, len(files))


@_mount_test_overlay
def test_the_mount_table_shows_the_overlay_only(blob_project, fixtures_dir, tmp_path):
    # Checked when `blobfs mount` has returned: the FUSE mount under the overlay is detached
    # just after the overlay stacks, so a poll for "listable" can see both for a moment.
    mp, log = tmp_path / "mp", tmp_path / "daemon.log"
    mp.mkdir()
    with cleanup_mountpoint(mp):
        p = subprocess.Popen(mount_cmd(blob_project, mp, *OVERLAY, "-o", f"log={log}"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and not out and not err, (p.returncode, out, err)
        entry = mount_entry(mp)
        assert entry == ("overlay", f"blobfs:{blob_project.resolve()}"), entry
        mine = f"/blobfs-overlay-{p.pid}-"
        with open("/proc/self/mountinfo") as f:
            private = [ln for ln in f if mine in ln.split(" - ")[0].split()[4]]
        assert private == []  # the FUSE mount under it is detached
        assert _private_dirs(p.pid) == set()  # and its private directories are gone
        with pytest.raises(OSError) as e:
            (mp / "x").write_bytes(b"")
        assert e.value.errno == 30  # EROFS
        assert read_expected(mp, fixtures_dir) > 0
        assert "under overlayfs" in log.read_text()
        r = _blobfs("umount", str(mp))
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mp)


@_mount_test_overlay
@pytest.mark.parametrize("how", ["blobfs umount", "umount"])
def test_unmounting_the_overlay_ends_the_daemon(blob_project, tmp_path, how):
    with cleanup_mountpoint(tmp_path):
        r = subprocess.run(mount_cmd(blob_project, tmp_path, *OVERLAY), capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids = daemon_pids(tmp_path)
        assert pids and sorted(os.listdir(tmp_path)) == ["ds1", "ds2", "meta.json"]
        cmd = [*BLOBFS, "umount"] if how == "blobfs umount" else ["umount"]
        r = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(tmp_path)
        assert wait_gone(pids)


@_mount_test_overlay
def test_blobfs_umount_still_refuses_a_foreign_overlay(tmp_path):
    lower, mp = tmp_path / "lower", tmp_path / "mp"
    (lower / "a").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    mp.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}:{tmp_path / 'b'}", str(mp)],
                   check=True, timeout=30)
    try:
        r = _blobfs("umount", str(mp))
        assert r.returncode == 2 and "not a FUSE mount (overlay)" in r.stderr, r.stderr
        assert is_mounted(mp)
    finally:
        subprocess.run(["umount", str(mp)], timeout=30)
    assert not is_mounted(mp)


@_mount_test_overlay
def test_foreground_sigkill_leaves_a_stale_overlay_that_umount_clears(blob_project, tmp_path):
    # -f -o overlay runs the daemon as a child of the process the user started; killing that
    # process must not leave a live daemon behind (it dies with its parent)
    with cleanup_mountpoint(tmp_path):
        with mounted(blob_project, tmp_path, libfuse=Libfuse(3), args=OVERLAY, expect_exit=None) as m:
            pids = daemon_pids(tmp_path)
            assert len(pids) >= 2
            assert m.stop(signal.SIGKILL) == -signal.SIGKILL
            assert wait_gone(pids)
            with pytest.raises(OSError):
                os.listdir(tmp_path)
            r = _blobfs("umount", str(tmp_path))
            assert r.returncode == 0, r.stderr
        assert not is_mounted(tmp_path)


def test_overlay_mount_without_root_is_a_usage_error(blob_project, tmp_path):
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root to drop to nobody")
    tmp_path.chmod(0o777)
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *BLOBFS, "mount", *OVERLAY,
                        str(blob_project), str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(repo), "HOME": "/tmp"}, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert "needs root" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@_mount_test_overlay
def test_foreground_overlay_hands_systemd_the_daemon_pid_from_the_main_process(blob_project, tmp_path):
    # blobfs@.service runs `blobfs mount -f` with NotifyAccess=main: the message must come from
    # the process systemd started, and name the daemon it forked as the new main pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    addr = str(tmp_path / "notify.sock")
    sock.bind(addr)
    sock.settimeout(20)
    mp = tmp_path / "mp"
    mp.mkdir()
    with sock, mounted(blob_project, mp, libfuse=Libfuse(3), args=OVERLAY, env={"NOTIFY_SOCKET": addr}) as m:
        msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        creds = [struct.unpack("iII", data[:12]) for level, kind, data in anc
                 if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        assert creds and creds[0][0] == m.proc.pid, (creds, m.proc.pid)
        fields = dict(line.split("=", 1) for line in msg.decode().split("\n") if line)
        assert fields.get("READY") == "1", msg
        daemon = int(fields["MAINPID"])
        assert daemon != m.proc.pid and daemon in daemon_pids(mp)
        with open(f"/proc/{daemon}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == m.proc.pid  # its parent stays


# -- failure paths -----------------------------------------------------------------------------
# mount(2) of overlayfs refused, the way a kernel without overlayfs (ENODEV) or without data-only
# layers (EINVAL, Linux < 6.5) refuses it: an LD_PRELOAD shim in front of libc's mount() that
# fails only for the "overlay" type. The FUSE mount (libfuse's mount() call) goes through.
_REFUSE_OVERLAY_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
int mount(const char *src, const char *target, const char *type, unsigned long flags, const void *data) {
    static int (*real)(const char *, const char *, const char *, unsigned long, const void *);
    if (type && strcmp(type, "overlay") == 0) {
        errno = atoi(getenv("REFUSE_OVERLAY_ERRNO"));
        return -1;
    }
    if (!real) real = dlsym(RTLD_NEXT, "mount");
    return real(src, target, type, flags, data);
}
"""


@pytest.fixture(scope="module")
def refuse_overlay_shim(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shim")
    (d / "refuse.c").write_text(_REFUSE_OVERLAY_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(d / "refuse.so"), str(d / "refuse.c"), "-ldl"],
                   check=True, timeout=60)
    return d / "refuse.so"


@_mount_test_overlay
@pytest.mark.parametrize("err, why", [("19", "this kernel has no overlayfs"), ("22", "Linux >= 6.5")],
                         ids=["ENODEV", "EINVAL"])
def test_a_refused_overlay_stops_the_daemon_and_leaves_nothing(blob_project, tmp_path, refuse_overlay_shim, err, why):
    before = _private_dirs()
    with cleanup_mountpoint(tmp_path):
        env = {**os.environ, "LD_PRELOAD": str(refuse_overlay_shim), "REFUSE_OVERLAY_ERRNO": err}
        r = subprocess.run(mount_cmd(blob_project, tmp_path, *OVERLAY), capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL, env=env)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot stack overlayfs" in lines[0] and why in lines[0], r.stderr
        assert not is_mounted(tmp_path)
        assert daemon_pids(tmp_path) == [] or wait_gone(daemon_pids(tmp_path))
        with open("/proc/self/mountinfo") as f:
            assert not [ln for ln in f if "/blobfs-overlay-" in ln.split()[4]]  # the private FUSE mount is gone
        assert _private_dirs() <= before  # nothing new (a sweep may have removed older leftovers)


@_mount_test_overlay
def test_the_next_overlay_mount_releases_what_a_killed_one_left(blob_project, tmp_path):
    # SIGKILL of `blobfs mount` while its daemon mounts leaves the private directories (and,
    # killed after the daemon reported, its private FUSE mount): nothing could remove them then
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with cleanup_mountpoint(first), cleanup_mountpoint(second):
        proc = subprocess.Popen(mount_cmd(blob_project, first, *OVERLAY), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mine = f"blobfs-overlay-{proc.pid}-"
        try:
            deadline = time.monotonic() + 30
            while not any(n.startswith(mine) for n in _private_dirs()):
                assert proc.poll() is None and time.monotonic() < deadline, "no private directory appeared"
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        left = [n for n in _private_dirs() if n.startswith(mine)]
        assert left  # what the killed mount left behind
        pids = daemon_pids(first)
        r = subprocess.run(mount_cmd(blob_project, second, *OVERLAY), capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert not [n for n in _private_dirs() if n.startswith(mine)]
        with open("/proc/self/mountinfo") as f:
            assert not [ln for ln in f if "/blobfs-overlay-" in ln.split()[4]]
        if is_mounted(first):  # killed after stacking: the overlay holds the file system and works
            assert sorted(os.listdir(first)) == ["ds1", "ds2", "meta.json"]
        else:  # killed before: its daemon is gone (it could not report, or lost its mount)
            assert wait_gone(pids)
        assert sorted(os.listdir(second)) == ["ds1", "ds2", "meta.json"]
