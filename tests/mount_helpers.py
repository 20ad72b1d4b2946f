"""Real FUSE mounts for tests: mount in a temp dir, wait until listable, ALWAYS clean up.

Modelled on pyfuse3's test suite (``wait_for_mount`` / ``umount``): the daemon runs as a
subprocess, the fixture polls until the mount is listable or the process died (with a
timeout), and on the way out unmounts, waits for the daemon, terminates it, kills it, and
checks its exit status and stderr. Nothing is left mounted or running, even when a test fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

#: How the tests run blobfs (the installed console script may be absent in a checkout).
BLOBFS = [sys.executable, "-m", "blobfs"]
class Libfuse(int):
    """A libfuse major version, and the API blobfs drives it through (None: the default,
    which on libfuse 3 is blobfs's own low-level driver; "highlevel": mfusepy's ``FUSE``)."""

    api: str | None

    def __new__(cls, version: int, api: str | None = None) -> "Libfuse":
        obj = super().__new__(cls, version)
        obj.api = api
        return obj

    @property
    def id(self) -> str:
        return f"libfuse{int(self)}" + (f"-{self.api}" if self.api else "")


def mount_api_args(libfuse: int | None) -> list[str]:
    api = getattr(libfuse, "api", None)
    if api == "uring":
        return ["-o", "uring"]
    if api == "overlay":
        return ["-o", "overlay,allow_other"]
    if api is None and libfuse is not None and int(libfuse) == 3:
        # The low-level driver would pick io_uring by itself here (conftest turns the
        # kernel's enable_uring on); keep this layout on /dev/fuse.
        return ["-o", "nouring"]
    return ["-o", f"fuse_api={api}"] if api else []


#: Every mount test runs under each: libfuse 2 (mfusepy), libfuse 3 through the low-level
#: driver (the default) on ``/dev/fuse`` (``-o nouring``), libfuse 3 through mfusepy's
#: high-level ``FUSE``, the low-level driver serving through FUSE over io_uring
#: (``-o uring``; conftest turns the kernel's ``enable_uring`` on for the session, so mounts
#: that name no layout use it too), and that default under overlayfs (``-o overlay``, which
#: needs ``allow_other``: the same semantics must hold through the overlay).
LIBFUSE_VERSIONS = (Libfuse(2), Libfuse(3), Libfuse(3, "highlevel"), Libfuse(3, "uring"), Libfuse(3, "overlay"))
MOUNT_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0


def fuse_available() -> str | None:
    """Why real mounts cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "no fusermount"
    return None


requires_fuse = pytest.mark.skipif(fuse_available() is not None, reason=fuse_available() or "")


def libfuse_available(version: int) -> bool:
    from ctypes.util import find_library

    return find_library("fuse3" if version == 3 else "fuse") is not None


def uring_unavailable() -> str | None:
    """Why ``-o uring`` would fall back to /dev/fuse here, or None."""
    from blobfs.fuse.uring import kernel_offers

    return kernel_offers()


def overlay_unavailable() -> str | None:
    """Why ``-o overlay`` cannot mount here, or None."""
    if os.geteuid() != 0:
        return "-o overlay needs root"
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    if release < (6, 5):
        return "-o overlay needs Linux >= 6.5 (data-only overlayfs layers)"
    return None


def libfuse_params() -> list:
    """pytest params for the libfuse versions; a missing library skips, not passes."""
    params = []
    for v in LIBFUSE_VERSIONS:
        why = None if libfuse_available(v) else f"libfuse {v} not installed"
        if why is None and v.api == "uring":
            why = uring_unavailable()
        if why is None and v.api == "overlay":
            why = overlay_unavailable()
        params.append(pytest.param(v, id=v.id, marks=pytest.mark.skipif(why is not None, reason=why or "")))
    return params


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split(" - ")[0].split()
            if len(parts) >= 5 and parts[4].replace("\\040", " ") == target:
                return True
    return False


def force_unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Lazy-unmount with whatever works; never raises (cleanup path)."""
    for cmd in (["fusermount3", "-u", "-z", "-q"], ["fusermount", "-u", "-z", "-q"], ["umount", "-l"]):
        if not is_mounted(mountpoint):
            return
        if shutil.which(cmd[0]):
            subprocess.run([*cmd, str(mountpoint)], capture_output=True, timeout=30)


def read_expected(root: Path, fixtures_dir: Path) -> int:
    """Read every file ``expected_mount.json`` lists under ``root``, compare its sha256;
    returns how many were compared."""
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())
    for rel, info in expected["files"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == info["sha256"], rel
    return len(expected["files"])


def main_daemon_pid(pids: list[int]) -> int:
    """Of a mount's daemon processes, the main one (the per-CPU workers are its children)."""
    def ppid(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    mains = [p for p in pids if ppid(p) not in pids]
    assert len(mains) == 1, (pids, mains)
    return mains[0]


def wait_for_daemon_processes(mountpoint: str | os.PathLike[str], n: int, timeout: float = 10) -> list[int]:
    """The mount's daemon processes once there are ``n`` of them (workers fork after FUSE_INIT)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = daemon_pids(mountpoint)
        if len(pids) == n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"expected {n} daemon processes, found {daemon_pids(mountpoint)}")


def kill_worker_and_expect_unmount(m: "Mount", worker: int) -> None:
    """SIGKILL one worker process: the daemon must unmount and exit 1 with one line naming it
    (the requests that worker held are lost; readers must not hang)."""
    os.kill(worker, signal.SIGKILL)
    assert m.proc.wait(timeout=20) == 1
    assert not is_mounted(m.mountpoint)
    err = m.stderr()
    assert f"worker process {worker} killed by signal 9" in err, err
    assert "Traceback" not in err


def daemon_pids(mountpoint: str | os.PathLike[str]) -> list[int]:
    """Pids of blobfs processes whose command line names ``mountpoint``."""
    want = os.path.abspath(mountpoint).encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"blobfs" in b" ".join(args) and want in args:
            pids.append(int(d))
    return pids


def wait_gone(pids: list[int], timeout: float = EXIT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in pids):
            return True
        time.sleep(0.05)
    return False


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def wait_for_mount(mountpoint: Path, proc: subprocess.Popen | None, timeout: float = MOUNT_TIMEOUT,
                   *, listable: bool = True) -> None:
    """Until ``mountpoint`` is a listable mount (``listable=False``: mounted at all, for a mount
    this process may not enter); fails early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"blobfs exited with {proc.returncode} before mounting")
        if is_mounted(mountpoint):
            if not listable:
                return
            try:
                os.listdir(mountpoint)
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"{mountpoint} not mounted within {timeout} s")


@dataclass
class Mount:
    """A running foreground daemon and its mount point."""

    mountpoint: Path
    proc: subprocess.Popen
    libfuse: int
    stderr_path: Path
    expect_exit: int | None = 0  #: checked at cleanup; None = do not check
    checked: bool = field(default=False)

    def path(self, rel: str = "") -> Path:
        return self.mountpoint / rel if rel else self.mountpoint

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        """Send ``sig`` and wait for the daemon; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def _finish(proc: subprocess.Popen, mountpoint: Path) -> int:
    # Unmount first: the daemon's loop then ends normally (the kernel answers ENODEV).
    if is_mounted(mountpoint) and proc.poll() is None:
        for cmd in (["fusermount3", "-u", "-q"], ["fusermount", "-u", "-q"]):
            if shutil.which(cmd[0]) and is_mounted(mountpoint):
                subprocess.run([*cmd, str(mountpoint)], capture_output=True, timeout=30)
    try:
        return proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        return proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=EXIT_TIMEOUT)
    finally:
        force_unmount(mountpoint)


@contextmanager
def mounted(source: str | os.PathLike[str], mountpoint: Path, *, libfuse: int, args: tuple[str, ...] = (),
            env: dict[str, str] | None = None, expect_exit: int | None = 0,
            as_user: tuple[str, ...] = ()) -> Iterator[Mount]:
    """Run ``blobfs mount -f`` on ``mountpoint`` (must exist) and yield once it is listable.
    ``as_user``: a command prefix (``setpriv ...``) the daemon runs under; such a mount is
    only waited for until it is in the mount table (without allow_other this process may not
    list it)."""
    mountpoint = Path(mountpoint)
    errf = tempfile.NamedTemporaryFile(prefix="blobfs-stderr-", suffix=".log", delete=False)
    cmd = [*as_user, *BLOBFS, "mount", "-f", "--libfuse", str(int(libfuse)), *mount_api_args(libfuse), *args,
           str(source), str(mountpoint)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                            env={**os.environ, **(env or {})})
    m = Mount(mountpoint, proc, libfuse, Path(errf.name), expect_exit)
    try:
        try:
            wait_for_mount(mountpoint, proc, listable=not as_user)
        except AssertionError as e:
            raise AssertionError(f"{e}; stderr:\n{m.stderr()}") from None
        yield m
    finally:
        rc = _finish(proc, mountpoint)
        errf.close()
        err = m.stderr()
        os.unlink(errf.name)
        assert not is_mounted(mountpoint), f"{mountpoint} still mounted"
        if m.expect_exit is not None:
            assert rc == m.expect_exit, f"daemon exit status {rc}, stderr:\n{err}"
            assert "Traceback" not in err, err


def mount_cmd(source: str | os.PathLike[str], mountpoint: str | os.PathLike[str], *args: str,
              libfuse: int | None = None) -> list[str]:
    """The background ``blobfs mount`` command line."""
    extra = ["--libfuse", str(int(libfuse)), *mount_api_args(libfuse)] if libfuse else []
    return [*BLOBFS, "mount", *extra, *args, str(source), str(mountpoint)]


@contextmanager
def cleanup_mountpoint(mountpoint: Path) -> Iterator[Path]:
    """For tests that mount by other means (background mode, mount(8)): always clean up."""
    try:
        yield mountpoint
    finally:
        pids = daemon_pids(mountpoint)
        force_unmount(mountpoint)
        if not wait_gone(pids):
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_gone(pids)
        assert not is_mounted(mountpoint), f"{mountpoint} still mounted"
