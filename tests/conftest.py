"""Shared test fixtures: where the SDK-made reference data lives."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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
