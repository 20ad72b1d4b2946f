"""The plain fusepy binding (libfuse 2 only) still mounts the project correctly."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os

import pytest

from mount_helpers import libfuse_available, mounted, requires_fuse

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60), requires_fuse,
              pytest.mark.skipif(importlib.util.find_spec("fuse") is None, reason="fusepy not installed"),
              pytest.mark.skipif(not libfuse_available(2), reason="libfuse 2 not installed")]


def test_fusepy_mount_equals_expected(blob_project, fixtures_dir, tmp_path):
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    with mounted(blob_project, tmp_path, libfuse=2, env={"BLOBFS_FUSE_BINDING": "fusepy"}) as m:
        got = {}
        for d, _, fs in os.walk(tmp_path):
            for name in fs:
                p = os.path.join(d, name)
                got[os.path.relpath(p, tmp_path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        assert got == {rel: w["sha256"] for rel, w in expected.items()}
        with os.scandir(m.path("ds1/img")) as it:
            for e in it:
                assert e.inode() == os.stat(e.path).st_ino
        assert "fusepy, libfuse 2" in m.stderr()
