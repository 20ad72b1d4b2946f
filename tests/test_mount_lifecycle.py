"""Mount lifecycle for real: signals, stale mounts, background mode, errors, fstab, busy umount."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from blobfs.fuse.umount import STALE_ERRNOS, mount_entry
from mount_helpers import (BLOBFS, cleanup_mountpoint, daemon_pids, is_mounted, libfuse_params, main_daemon_pid,
                           mount_cmd, mounted, requires_fuse, wait_gone)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(90), requires_fuse]
REPO = Path(__file__).resolve().parent.parent


def _blobfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*BLOBFS, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def mount_flags(mountpoint: Path) -> set[str]:
    """The per-mount flags (``ro``, ``noexec``, ...) of the mount on top at ``mountpoint``."""
    flags: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == str(mountpoint):
                flags = set(parts[5].split(","))
    return flags


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_sigterm_with_a_reader_holding_a_file_open(blob_project, tmp_path, libfuse):
    with mounted(blob_project, tmp_path, libfuse=libfuse) as m:
        f = open(m.path("ds1/img/img_000.png"), "rb")
        try:
            assert f.read(8)
            assert m.stop(signal.SIGTERM) == 0
            assert not is_mounted(tmp_path)
        finally:
            try:
                f.close()
            except OSError:
                pass
        assert "Traceback" not in m.stderr()


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_sigint_unmounts_cleanly(blob_project, tmp_path, libfuse):
    with mounted(blob_project, tmp_path, libfuse=libfuse) as m:
        assert m.stop(signal.SIGINT) == 0
        assert not is_mounted(tmp_path)


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_sigkill_then_umount_then_mount_again(blob_project, tmp_path, libfuse):
    with cleanup_mountpoint(tmp_path):
        with mounted(blob_project, tmp_path, libfuse=libfuse, expect_exit=None) as m:
            pids = daemon_pids(tmp_path)
            assert m.stop(signal.SIGKILL) == -signal.SIGKILL
            # per-CPU workers die with the main process (PR_SET_PDEATHSIG), asynchronously
            assert wait_gone(pids)
            with pytest.raises(OSError) as e:
                os.listdir(tmp_path)
            assert e.value.errno in STALE_ERRNOS  # ENOTCONN; ECONNABORTED or ECANCELED mid-teardown of io_uring queues
            # mounting over the stale mount is refused with a hint, before anything changes
            r = _blobfs("mount", "--libfuse", str(libfuse), str(blob_project), str(tmp_path))
            assert r.returncode == 1 and "blobfs umount" in _one_line(r.stderr)
            r = _blobfs("umount", str(tmp_path))
            assert r.returncode == 0, r.stderr
            assert not is_mounted(tmp_path)
        r = _blobfs("mount", "--libfuse", str(libfuse), str(blob_project), str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(tmp_path)) == ["ds1", "ds2", "meta.json"]


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_background_mode_returns_promptly_with_captured_output(blob_project, tmp_path, libfuse):
    with cleanup_mountpoint(tmp_path):
        # capture_output: returns only if the daemon kept none of our pipes
        r = subprocess.run(mount_cmd(blob_project, tmp_path, libfuse=libfuse), capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert r.stdout == ""
        assert is_mounted(tmp_path) and "ds1" in os.listdir(tmp_path)
        pids = daemon_pids(tmp_path)
        main = main_daemon_pid(pids)
        assert os.getsid(main) == main  # detached: its own session
        for pid in pids:  # the main process and its per-CPU workers
            assert os.getsid(pid) == main
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        r = _blobfs("umount", str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert wait_gone(pids)


def test_background_mode_logs_to_file(blob_project, tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    log = tmp_path / "blobfs.log"
    with cleanup_mountpoint(mp):
        r = _blobfs("mount", "-o", f"log={log}", str(blob_project), str(mp))
        assert r.returncode == 0, r.stderr
        pid = daemon_pids(mp)[0]
        assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
        assert "mounted" in log.read_text()


def test_global_quiet_and_verbose_apply_to_mount(blob_project, tmp_path):
    # `blobfs -q mount` logs errors only, `blobfs -vv mount` debug lines too (the group's -q/-v).
    for i, (flag, absent, present) in enumerate((("-q", "mounted", None),
                                                 ("-vv", None, "ignored generic mount options: ro"))):
        mp = tmp_path / f"mp{i}"
        mp.mkdir()
        log = tmp_path / f"blobfs{i}.log"
        with cleanup_mountpoint(mp):
            r = _blobfs(flag, "mount", "-o", f"ro,workers=1,log={log}", str(blob_project), str(mp))
            assert r.returncode == 0, r.stderr
            assert _blobfs("umount", str(mp)).returncode == 0
            out = r.stderr + log.read_text()
            if absent:
                assert absent not in out, out
            if present:
                assert present in out, out


# -- mount errors: one line on stderr, non-zero, nothing mounted -----------------------------
def _hostile_project(blob_project: Path, dst: Path) -> Path:
    shutil.copytree(blob_project, dst)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/blobfs-pwned",))

    (dst / "ds1" / "small_images_offsets.pkl").write_bytes(pickle.dumps({"a.png": Evil()}))
    return dst


@pytest.mark.parametrize("case", ["missing_source", "hostile_pickle", "nonempty_mountpoint",
                                  "missing_mountpoint", "mountpoint_is_file", "unknown_option",
                                  "mountpoint_inside_source"])
def test_mount_errors_give_one_line(blob_project, tmp_path, case):
    src, mp, extra = blob_project, tmp_path / "mp", []
    mp.mkdir()
    if case == "missing_source":
        src = tmp_path / "nope"
    elif case == "hostile_pickle":
        src = _hostile_project(blob_project, tmp_path / "proj")
    elif case == "nonempty_mountpoint":
        (mp / "x").write_text("x")
    elif case == "missing_mountpoint":
        mp = tmp_path / "nope"
    elif case == "mountpoint_is_file":
        mp = tmp_path / "file"
        mp.write_text("x")
    elif case == "unknown_option":
        extra = ["-o", "ro,frobnicate"]
    elif case == "mountpoint_inside_source":
        src = shutil.copytree(blob_project, tmp_path / "proj")
        mp = src / "ds1" / "empty"
        mp.mkdir()
    with cleanup_mountpoint(mp):
        r = _blobfs("mount", *extra, str(src), str(mp))
        line = _one_line(r.stderr)
        assert r.returncode == 2, r.stderr
        assert not is_mounted(mp)
        if case == "unknown_option":
            assert "frobnicate" in line
        elif case in ("missing_source", "hostile_pickle"):
            assert str(src) in line
        else:
            assert str(mp) in line
    assert not os.path.exists("/tmp/blobfs-pwned")


def test_mountpoint_that_a_symlink_places_inside_the_source_is_refused(blob_project, tmp_path):
    # mount(2) follows the link: the daemon would serve a folder of its own source, and a
    # listing of that folder through the mount waits on the daemon itself (a hang).
    src = shutil.copytree(blob_project, tmp_path / "proj")
    real = src / "ds1" / "empty"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with cleanup_mountpoint(real), cleanup_mountpoint(link):
        r = _blobfs("mount", str(src), str(link))
        assert r.returncode == 2, r.stderr
        assert "inside the source" in _one_line(r.stderr)
        assert not is_mounted(real)


def test_source_inside_the_mountpoint_is_refused(blob_project, tmp_path):
    # -o nonempty over a folder holding the source: the mount hides the source from its own
    # daemon, which then waited on itself for the first file it read by path, and `blobfs
    # mount` (listing the new mount) hung in an unkillable wait. nouring: under FUSE over
    # io_uring that daemon cannot even be killed, so the failure would leave it behind.
    mp = tmp_path / "mp"
    mp.mkdir()
    src = shutil.copytree(blob_project, mp / "proj")
    with cleanup_mountpoint(mp):
        proc = subprocess.Popen([*BLOBFS, "mount", "-o", "nonempty,workers=1,nouring", str(src), str(mp)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("blobfs mount hung: its daemon waits on its own mount")  # cleanup kills both
        assert proc.returncode == 2, err
        line = _one_line(err)
        assert str(mp) in line and str(src) in line and "hide" in line
        assert not is_mounted(mp)


def test_symlinked_mountpoint_is_checked_and_unmounted_by_its_real_path(blob_project, tmp_path):
    real = tmp_path / "mp"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with cleanup_mountpoint(real), cleanup_mountpoint(link):
        r = _blobfs("mount", "-o", "workers=1", str(blob_project), str(link))
        assert r.returncode == 0, r.stderr
        assert is_mounted(real) and "ds1" in os.listdir(link)
        # nonempty would otherwise let a second daemon stack on the first
        r = _blobfs("mount", "-o", "nonempty", str(blob_project), str(link))
        assert r.returncode == 1 and "already mounted" in _one_line(r.stderr)
        r = _blobfs("umount", str(link))
        assert r.returncode == 0, r.stderr
        assert not is_mounted(real)


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_mounting_twice_is_refused(blob_project, tmp_path, libfuse):
    with mounted(blob_project, tmp_path, libfuse=libfuse):
        r = _blobfs("mount", "--libfuse", str(libfuse), str(blob_project), str(tmp_path))
        assert r.returncode == 1
        assert "already mounted" in _one_line(r.stderr)
        assert "ds1" in os.listdir(tmp_path)


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_noexec_reaches_the_kernel(blob_project, tmp_path, libfuse):
    # An fstab "noexec" (or "user", for which mount(8) adds it) was accepted and ignored, while
    # a pass-through file with execute bits stayed executable through the mount.
    src = shutil.copytree(blob_project, tmp_path / "proj")
    tool = src / "ds1" / "meta" / "tool.sh"
    tool.write_text("#!/bin/sh\necho ran\n")
    tool.chmod(0o755)
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(src, mp, libfuse=libfuse, args=("-o", "ro,user,noexec")) as m:
        assert mount_flags(mp) >= {"ro", "noexec"}, mount_flags(mp)
        assert not os.access(m.path("ds1/meta/tool.sh"), os.X_OK)
        with pytest.raises(PermissionError):
            subprocess.run([str(m.path("ds1/meta/tool.sh"))], capture_output=True, timeout=10)


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_source_path_with_comma_and_backslash(blob_project, tmp_path, libfuse):
    # The source path is libfuse's fsname=, inside one comma-separated -o string: unescaped, a
    # comma split it ("fuse: unknown option `b'", no mount) and a backslash was dropped.
    src = shutil.copytree(blob_project, tmp_path / "proj,b\\c")
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(src, mp, libfuse=libfuse):
        fstype, source = mount_entry(mp)
        assert source in (str(src), f"blobfs:{src}"), (fstype, source)
        assert "ds1" in os.listdir(mp)


# -- mount(8) and the fstab line -------------------------------------------------------------
def _wrapper(tmp_path: Path, libfuse: int) -> Path:
    """A ``blobfs`` executable for mount(8), which runs helpers with PATH removed."""
    exe = tmp_path / "bin" / "blobfs"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nBLOBFS_LIBFUSE={libfuse} PYTHONPATH={REPO} exec {sys.executable} -m blobfs \"$@\"\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount") or not shutil.which("mount.fuse3"),
                    reason="needs root, mount(8) and mount.fuse3")
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_fstab_line_through_mount_fstab(blob_project, tmp_path, libfuse):
    # mount(8) drops PATH before running mount.fuse3, which then finds a type "fuse.blobfs"
    # program only in the shell's default PATH; the "PROGRAM#SOURCE" spelling of type "fuse"
    # takes an absolute program, and gets the very same "SOURCE MOUNTPOINT -o OPTS" call.
    exe = _wrapper(tmp_path, libfuse)
    mp = tmp_path / "mnt"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{exe}#{blob_project} {mp} fuse ro,allow_other,nofail,noauto,_netdev,x-systemd.automount 0 0\n")
    with cleanup_mountpoint(mp):
        r = subprocess.run(["mount", "--fstab", str(fstab), str(mp)], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(mp)) == ["ds1", "ds2", "meta.json"]
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if f" {mp} " in ln)
        assert "allow_other" in line and " ro," in line and "fuse.blobfs" in line
        r = subprocess.run(["umount", str(mp)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount.fuse3"), reason="needs root and mount.fuse3")
def test_fstab_type_fuse_blobfs_via_mount_fuse3_and_shipped_helper(blob_project, tmp_path):
    # What mount(8) does for "fuse.blobfs": mount.fuse3 SOURCE MP -t fuse.blobfs -o OPTS runs
    # "blobfs SOURCE MP -o OPTS" (from PATH) — our CLI must route that to `mount`.
    exe = _wrapper(tmp_path, 3)
    for i, cmd in enumerate([
        ["mount.fuse3", str(blob_project), "{mp}", "-t", "fuse.blobfs", "-o", "rw,nofail,_netdev,user"],
        [str(REPO / "systemd" / "mount.fuse.blobfs"), str(blob_project), "{mp}", "-n", "-o", "ro,nofail,defaults"],
    ]):
        mp = tmp_path / f"mnt{i}"
        mp.mkdir()
        cmd = [c.replace("{mp}", str(mp)) for c in cmd]
        env = {**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}", "BLOBFS": str(exe)}
        with cleanup_mountpoint(mp):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                               stdin=subprocess.DEVNULL)
            assert r.returncode == 0, r.stderr
            assert "meta.json" in os.listdir(mp)
            assert _blobfs("umount", str(mp)).returncode == 0


# -- umount ----------------------------------------------------------------------------------
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_umount_busy_then_lazy(blob_project, tmp_path, libfuse):
    with mounted(blob_project, tmp_path, libfuse=libfuse) as m:
        holder = subprocess.Popen(["sleep", "60"], cwd=m.path("ds1/img"))
        try:
            r = _blobfs("umount", str(tmp_path))
            assert r.returncode == 1
            line = _one_line(r.stderr)
            assert "busy" in line and "--lazy" in line
            assert is_mounted(tmp_path)
            r = _blobfs("umount", "--lazy", str(tmp_path))
            assert r.returncode == 0, r.stderr
            assert not is_mounted(tmp_path)
            # detached, but the connection lives until the last user leaves; then the daemon ends
            assert m.proc.poll() is None
            holder.kill()
            holder.wait()
            assert m.proc.wait(timeout=10) == 0
        finally:
            holder.kill()
            holder.wait()


def test_mount_and_umount_errors_escape_control_characters(tmp_path):
    bad = tmp_path / "a\nb\x1b[31mc"
    for args in (("mount", str(bad), str(tmp_path)), ("mount", str(tmp_path), str(bad)), ("umount", str(bad))):
        r = _blobfs(*args)
        assert r.returncode == 2
        assert "a\\nb\\x1b[31mc" in _one_line(r.stderr), args


def test_umount_of_a_plain_directory_fails(tmp_path):
    r = _blobfs("umount", str(tmp_path))
    assert r.returncode == 1 and "not mounted" in _one_line(r.stderr)
    r = _blobfs("umount", str(tmp_path / "nope"))
    assert r.returncode == 2
