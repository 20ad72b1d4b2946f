"""Shared test fixtures: where the SDK-made reference data lives."""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: FUSE over io_uring is off in the kernel unless this is set (fs/fuse/dev_uring.c); the
#: ``-o uring`` mount tests turn it on for the session and restore it after. Mounts that do
#: not ask for io_uring in their FUSE_INIT reply (every other driver) are unaffected.
ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")  # blobfs.fuse.uring.ENABLE
#: The knob is one for the machine, so test sessions that overlap (a file run by hand while CI
#: runs) share it. Each holds a shared flock on URING_LIVE while it lives; the first records the
#: value it found there, and only the last to end restores it (both under URING_MUTEX). Before,
#: a session that ran alone restored "N" under another one's feet, whose io_uring mounts then
#: fell back to /dev/fuse and failed. A killed session's lock goes with its process.
URING_LIVE = Path(tempfile.gettempdir()) / "blobfs-tests-enable_uring.live"
URING_MUTEX = Path(tempfile.gettempdir()) / "blobfs-tests-enable_uring.mutex"
_uring_live: int | None = None


def _locked(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def pytest_configure(config: pytest.Config) -> None:
    global _uring_live
    if os.geteuid() != 0 or not ENABLE_URING.exists():
        return  # no such kernel support, or not root: the uring tests skip and say why
    mutex = _locked(URING_MUTEX)
    try:
        live = os.open(URING_LIVE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        value = ENABLE_URING.read_text().strip()
        try:
            fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(live, 0)  # no session alive: this one records what it found
            os.pwrite(live, value.encode(), 0)
        except BlockingIOError:
            pass  # another session recorded it and restores it if it ends last
        fcntl.flock(live, fcntl.LOCK_SH)
        _uring_live = live
        if value not in ("Y", "1"):
            ENABLE_URING.write_text("Y")
    except OSError:
        pass
    finally:
        os.close(mutex)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _uring_live is None:
        return
    mutex = _locked(URING_MUTEX)
    try:
        fcntl.flock(_uring_live, fcntl.LOCK_EX | fcntl.LOCK_NB)
        was = os.pread(_uring_live, 16, 0).decode().strip()
        if was and was not in ("Y", "1"):
            ENABLE_URING.write_text(was)
        os.ftruncate(_uring_live, 0)
    except (BlockingIOError, OSError):
        pass  # another session still runs: it restores the value
    finally:
        os.close(_uring_live)
        os.close(mutex)


#: ../shared/fixtures beside the checkout (CI clones main with shared/ beside it).
FIXTURES = Path(os.environ.get("BLOBFS_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "FORMAT.md").is_file():
        pytest.fail(f"SDK fixtures not found at {FIXTURES} (set BLOBFS_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def blob_project(fixtures_dir: Path) -> Path:
    return fixtures_dir / "sdk_blob_project"


@pytest.fixture(scope="session")
def classic_project(fixtures_dir: Path) -> Path:
    return fixtures_dir / "sdk_classic_project"
