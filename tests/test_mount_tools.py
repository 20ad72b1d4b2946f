"""What everyday tools (find, rsync, tar, cp, du) read from a mount beyond names and bytes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobfs.demo import make_demo
from mount_helpers import libfuse_params, mounted, requires_fuse

pytestmark = [pytest.mark.mount, pytest.mark.timeout(90), requires_fuse]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "project"
    make_demo(root)
    return root


def _sources(blob_project: Path, demo: Path) -> dict[str, Path]:
    return {
        "project": blob_project,     # blob/ hidden at the root; ds2/ has no img/ on disk
        "nested": demo,              # streets/datasets/rainy/: a dataset inside a dataset
        "dataset": blob_project / "ds2",  # one dataset's folder: a virtual root above it
    }


@pytest.mark.parametrize("libfuse", libfuse_params())
@pytest.mark.parametrize("which", ["project", "nested", "dataset"])
def test_folder_link_count_is_two_plus_its_folders(libfuse, which, blob_project, demo, tmp_path):
    """st_nlink of a folder is 2 + its sub-folders, as on disk: walkers that trust it stop
    looking for sub-folders after st_nlink - 2 of them (a too-small count hides img/)."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(_sources(blob_project, demo)[which], mp, libfuse=libfuse) as m:
        got, want = {}, {}
        for d, dirs, _ in os.walk(m.mountpoint):
            rel = os.path.relpath(d, m.mountpoint)
            got[rel], want[rel] = os.stat(d).st_nlink, 2 + len(dirs)
        assert any(d.endswith("img") for d in want), want
        assert got == want
