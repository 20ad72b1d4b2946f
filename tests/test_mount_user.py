"""An ordinary user mounts: no CAP_SYS_ADMIN, so libfuse's mount(2) fails with EPERM and it
mounts through the setuid ``fusermount`` instead (lib/mount.c ``fuse_kern_mount``), which
stamps the mount with the user's id and, without ``allow_other``, keeps every other user out
(root included: fs/fuse/dir.c ``fuse_allow_current_process``). Every other mount test runs as
root and never takes this path.

The daemon runs as ``nobody`` with one capability, CAP_DAC_READ_SEARCH, held as an ambient
capability: only so it can reach this test run's interpreter and checkout (in CI both sit under
root's home). It grants reading, not writing, so it cannot open ``/dev/fuse`` (read-write)
when the device is closed to the user, nor mount anything; ``fusermount`` is setuid, and exec
of a setuid program drops ambient capabilities (capabilities(7)).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from blobfs.fuse.preflight import FUSE_DEVICE
from mount_helpers import (BLOBFS, LIBFUSE_VERSIONS, cleanup_mountpoint, daemon_pids, is_mounted, libfuse_params,
                           mounted, requires_fuse, wait_gone)

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
ENV = {"PYTHONPATH": str(REPO), "HOME": "/tmp"}

pytestmark = [
    pytest.mark.mount, pytest.mark.timeout(120), requires_fuse,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                       reason="needs root and setpriv to run the daemon as another user"),
]
#: Every layout but ``-o overlay``, which needs root (tests/test_mount_overlay.py checks the refusal).
USER_LAYOUTS = [p for p, v in zip(libfuse_params(), LIBFUSE_VERSIONS) if v.api != "overlay"]

#: Run as the user: the sha256 of every file expected_mount.json lists, and the owner of each.
READER = r"""
import hashlib, json, os, sys
root, expected = sys.argv[1], json.load(open(sys.argv[2]))
out = {}
for rel in expected["files"]:
    path = os.path.join(root, rel)
    with open(path, "rb") as f:
        out[rel] = [hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_uid]
json.dump(out, sys.stdout)
"""


@contextlib.contextmanager
def fuse_device_mode(mode: int) -> Iterator[None]:
    """/dev/fuse at ``mode`` for the test, then as it was (udev-less machines leave it 0600,
    Debian's udev rules make it 0666)."""
    old = stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode)
    os.chmod(FUSE_DEVICE, mode)
    try:
        yield
    finally:
        os.chmod(FUSE_DEVICE, old)


@pytest.fixture
def user_dir(blob_project) -> Iterator[Path]:
    """A folder of the user's own, outside pytest's root-only temp tree (``fusermount`` checks
    the mount point as the user), holding a copy of the SDK project and an empty mount point."""
    top = Path(tempfile.mkdtemp(prefix="blobfs-user-", dir="/tmp"))
    try:
        shutil.copytree(blob_project, top / "proj", symlinks=True)
        (top / "mnt").mkdir()
        for path in [top, *top.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _as_nobody(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*AS_NOBODY, *cmd], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV}, stdin=subprocess.DEVNULL)


def _user_allow_other() -> bool:
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        return False
    return any(ln.strip() == "user_allow_other" for ln in lines)


@pytest.mark.parametrize("libfuse", USER_LAYOUTS)
def test_an_ordinary_user_mounts_reads_every_byte_and_unmounts(user_dir, fixtures_dir, libfuse):
    mnt = user_dir / "mnt"
    with fuse_device_mode(0o666), mounted(user_dir / "proj", mnt, libfuse=libfuse, env=ENV,
                                          as_user=AS_NOBODY) as m:
        entry = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if f" {mnt} " in ln]
        assert len(entry) == 1 and "fuse.blobfs" in entry[0], entry
        assert f"user_id={NOBODY}" in entry[0], entry[0]  # fusermount's stamp: the user's mount

        r = _as_nobody(sys.executable, "-c", READER, str(mnt), str(fixtures_dir / "expected_mount.json"))
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout)
        expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
        assert {rel: sha for rel, (sha, _) in seen.items()} == {rel: i["sha256"] for rel, i in expected.items()}
        assert {uid for _, uid in seen.values()} == {NOBODY}  # owners from the user's own files

        with pytest.raises(PermissionError):  # no allow_other: not even root may enter
            os.listdir(mnt)

        r = _as_nobody(*BLOBFS, "umount", str(mnt))
        assert r.returncode == 0, r.stderr
        assert m.proc.wait(timeout=20) == 0
    assert not is_mounted(mnt)


def test_allow_other_for_an_ordinary_user_follows_etc_fuse_conf(user_dir):
    mnt = user_dir / "mnt"
    with fuse_device_mode(0o666), cleanup_mountpoint(mnt):
        r = _as_nobody(*BLOBFS, "mount", "-o", "allow_other", str(user_dir / "proj"), str(mnt))
        if _user_allow_other():
            assert r.returncode == 0, r.stderr
            assert "ds1" in os.listdir(mnt)  # root is another user: let in by allow_other
            assert _as_nobody(*BLOBFS, "umount", str(mnt)).returncode == 0
        else:
            # fusermount refuses it; its reason reaches the user as the one line
            assert r.returncode == 1, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "user_allow_other" in lines[0], r.stderr
            assert not is_mounted(mnt)
        assert not daemon_pids(mnt) or wait_gone(daemon_pids(mnt))


def test_a_closed_fuse_device_is_named_in_the_one_line(user_dir):
    mnt = user_dir / "mnt"
    with fuse_device_mode(0o600), cleanup_mountpoint(mnt):
        r = _as_nobody(*BLOBFS, "mount", str(user_dir / "proj"), str(mnt))
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{FUSE_DEVICE} is mode 0600, closed to this user" in lines[0], lines[0]
        assert "0666" in lines[0], lines[0]
        assert not is_mounted(mnt)
        assert wait_gone(daemon_pids(mnt))
