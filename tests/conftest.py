"""Shared test fixtures: where the SDK-made reference data lives."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: FUSE over io_uring is off in the kernel unless this is set (fs/fuse/dev_uring.c); the
#: ``-o uring`` mount tests turn it on for the session and restore it after. Mounts that do
#: not ask for io_uring in their FUSE_INIT reply (every other driver) are unaffected.
ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")  # blobfs.fuse.uring.ENABLE
_uring_was: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _uring_was
    try:
        value = ENABLE_URING.read_text().strip()
        if value not in ("Y", "1") and os.geteuid() == 0:
            ENABLE_URING.write_text("Y")
            _uring_was = value
    except OSError:
        pass  # no such kernel support, or not root: the uring tests skip and say why


def pytest_unconfigure(config: pytest.Config) -> None:
    if _uring_was is not None:
        try:
            ENABLE_URING.write_text(_uring_was)
        except OSError:
            pass
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
