"""``-o uid=,gid=,umask=``: the owner, group and modes every entry shows, and what the kernel
lets each user do with them (``default_permissions`` checks access against exactly these)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from blobfs.model.ownership import Ownership
from blobfs.model.project import SourceSpec
from mount_helpers import libfuse_params, mounted, requires_fuse

OWNER, OTHER = 4242, 4343  #: ids no account of the test machine is likely to hold


@pytest.fixture(scope="module")
def tree(blob_project: Path) -> Iterator[Path]:
    """A copy of the SDK project with an executable pass-through file, beside an empty mount
    point, in a folder every user may enter (pytest's own temp tree is root's only)."""
    top = Path(tempfile.mkdtemp(prefix="blobfs-owner-", dir="/tmp"))
    try:
        shutil.copytree(blob_project, top / "proj", symlinks=True)
        tool = top / "proj" / "ds1" / "meta" / "tool.sh"
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o751)
        (top / "mnt").mkdir()
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _shown(root: str | Path) -> dict[str, os.stat_result]:
    out = {"": os.lstat(root)}
    for d, ds, fs in os.walk(root):
        for name in ds + fs:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def test_the_view_masks_the_modes_it_shows_and_never_adds_bits(tree: Path):
    view = SourceSpec(tree / "proj").open().view
    plain = {rel: view.getattr(rel) for rel in ("", "ds1", "ds1/img", "ds1/img/img_000.png", "meta.json",
                                                  "ds1/meta/tool.sh")}
    assert stat.S_IMODE(plain["ds1/meta/tool.sh"].mode) == 0o551  # the source's, write bits off
    view.show_as(Ownership(uid=OWNER, gid=OTHER, umask=0o027))
    try:
        for rel, before in plain.items():
            after = view.getattr(rel)
            assert (after.uid, after.gid) == (OWNER, OTHER), rel
            assert after.mode == before.mode & ~0o027, rel  # type bits kept, nothing gained
            assert (after.ino, after.size, after.mtime_ns) == (before.ino, before.size, before.mtime_ns)
        assert stat.S_IMODE(view.getattr("ds1/meta/tool.sh").mode) == 0o550
        assert stat.S_IMODE(view.getattr("ds1/img").mode) == 0o550  # folders keep x unless masked
        view.show_as(Ownership(umask=0o222))  # write bits are never shown anyway
        assert all(view.getattr(rel).mode == s.mode and view.getattr(rel).uid == s.uid
                   for rel, s in plain.items())
    finally:
        view.show_as(None)
    assert view.getattr("ds1/meta/tool.sh") == plain["ds1/meta/tool.sh"]


@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_every_entry_shows_the_owner_group_and_masked_modes(tree: Path, libfuse):
    view = SourceSpec(tree / "proj").open().view
    mnt = tree / "mnt"
    with mounted(tree / "proj", mnt, libfuse=libfuse, args=("-o", f"ro,uid={OWNER},gid=root,umask=0027")):
        shown = _shown(mnt)
    assert len(shown) > 50 and "ds1/meta/tool.sh" in shown
    for rel, s in shown.items():
        assert (s.st_uid, s.st_gid) == (OWNER, 0), rel
        assert s.st_mode == view.getattr(rel).mode & ~0o027, (rel, oct(s.st_mode))
    assert stat.S_IMODE(shown["ds1/meta/tool.sh"].st_mode) == 0o550
    assert stat.S_IMODE(shown["ds1/img"].st_mode) == 0o550
    assert stat.S_IMODE(shown["ds1/img/img_000.png"].st_mode) == 0o440


def _reads_as(uid: int, gid: int, path: Path) -> bool:
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(path)],
                       capture_output=True, timeout=30)
    assert r.returncode == 0 or b"Permission denied" in r.stderr, r.stderr
    return r.returncode == 0


@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to read as other users")
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_the_kernel_checks_access_against_the_shown_owner_and_modes(tree: Path, libfuse):
    mnt = tree / "mnt"
    img, tool = mnt / "ds1" / "img" / "img_000.png", mnt / "ds1" / "meta" / "tool.sh"
    # 0400 files in 0500 folders: the shown owner reads, no one else but root, not even in its group
    with mounted(tree / "proj", mnt, libfuse=libfuse, args=("-o", f"allow_other,uid={OWNER},gid={OWNER},umask=277")):
        assert stat.S_IMODE(img.stat().st_mode) == 0o400
        assert _reads_as(OWNER, OWNER, img) and _reads_as(OWNER, OWNER, tool)
        assert not _reads_as(OTHER, OWNER, img)
        assert not _reads_as(OTHER, OTHER, img) and not _reads_as(OTHER, OTHER, tool)
        assert img.read_bytes()  # root, through its capabilities (what allow_root would have been)
    # without a umask the modes stay world-readable: the owner changes, not who may read
    with mounted(tree / "proj", mnt, libfuse=libfuse, args=("-o", f"allow_other,uid={OWNER}")):
        assert img.stat().st_uid == OWNER
        assert _reads_as(OTHER, OTHER, img)
