"""The libfuse 3 low-level driver: cached listings, nodeids without a table for images, FORGET.

The whole mount suite already runs through this driver (it is the libfuse 3 default, see
``mount_helpers.LIBFUSE_VERSIONS``); these tests cover what only it does.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from blobfs.fuse.nodes import ROOT_ID, NodeTable
from blobfs.model.numbering import real_ino
from blobfs.model.opening import open_project
from mount_helpers import BLOBFS, Libfuse, is_mounted, libfuse_available, mounted, read_expected, requires_fuse

needs_fuse3 = pytest.mark.skipif(not libfuse_available(3), reason="libfuse 3 not installed")
LOWLEVEL = Libfuse(3)


def _opcodes(log: str, name: str) -> int:
    return len(re.findall(rf"opcode: {name} \(", log))


# -- node table (no FUSE) ---------------------------------------------------------------------
def test_item_path_inverts_every_image_inode(blob_project):
    view = open_project(blob_project).view
    seen = 0
    for rel, _dirs, files in view.walk():
        if not rel.endswith("/img"):
            continue
        for name in files:
            path = f"{rel}/{name}"
            assert view.ids.item_path(view.getattr(path).ino) == path
            seen += 1
    assert seen > 0
    assert view.ids.item_path(view.getattr("meta.json").ino) is None
    assert view.ids.item_path((2 << 56) | (999 << 32) | 1) is None  # no such dataset


def test_a_real_file_never_shows_a_virtual_inode_number(blob_project):
    """A passed-through file whose st_ino happened to equal an image's inode number or an
    annotation's node id would have its LOOKUP answered with that node id and be served
    the image's bytes (NFS, 9p or a FUSE source can hand out any 64-bit number)."""
    view = open_project(blob_project).view
    virtual = [view.getattr(p).ino for p in ("ds1/img/img_000.png", "ds1/img")]
    virtual += [view.ids.item_json_node(f"ds1/{sub}/img_000.png.json") for sub in ("ann", "img_info", "meta")]
    virtual.append((5 << 56) | 7)  # a node log id
    for ino in virtual:
        assert (1 << 56) <= ino < (8 << 56)
        shown = real_ino(ino)
        assert not (1 << 56) <= shown < (8 << 56) and view.ids.node_path(shown) is None
        assert real_ino(shown) == shown  # moved once, never moved back in
    for ino in (1, 2, 12345678, (1 << 56) - 1, 8 << 56, (1 << 64) - 1):
        assert real_ino(ino) == ino
    img_info = next(f for rel, _d, files in view.walk() if rel.endswith("img_info") for f in files)
    assert img_info  # the fixture passes img_info/ through; its numbers are the disk's own
    rel = next(r for r, _d, _f in view.walk() if r.endswith("img_info"))
    assert view.getattr(f"{rel}/{img_info}").ino == os.stat(
        Path(blob_project) / rel / img_info).st_ino


def test_item_json_node_names_every_item_json_file_and_nothing_else(blob_project):
    project = open_project(blob_project)
    view = project.view
    seen = {"ann": 0, "img_info": 0, "meta": 0}
    for rel, _dirs, files in view.walk():
        for name in files:
            path = f"{rel}/{name}" if rel else name
            nid = view.ids.item_json_node(path)
            sub = rel.rpartition("/")[2]
            if sub not in seen:
                assert nid is None, path  # images, meta.json
                continue
            assert nid is not None and nid >> 56 == {"ann": 4, "img_info": 6, "meta": 7}[sub], path
            assert view.ids.node_path(nid) == path
            assert view.getattr(path).size > 0
            seen[sub] += 1
    assert seen["ann"] == sum(len(ds.items) for ds in project.datasets)  # one per item (SDK)
    assert seen["img_info"] == 2 and seen["meta"] == 1  # the fixture's: ds1 only
    for path in ("ds1/ann/not an item.json", "ds1/ann", "ds1/ann/img_000.png",
                 "nosuchds/ann/img_000.png.json", "ds1/img/img_000.png.json",
                 "ds1/other/img_000.png.json", "ann/img_000.png.json"):
        assert view.ids.item_json_node(path) is None, path
    # Only the path is named: a JSON file the item does not have still has no node.
    assert view.ids.item_json_node("ds1/meta/img_000.png.json") >> 56 == 7
    for top in (4, 6, 7):
        assert view.ids.node_path((top << 56) | (999 << 32) | 1) is None  # no such dataset
        assert view.ids.node_path((top << 56) | (1 << 32) | 999) is None  # no such item


def test_node_table_keeps_no_entry_for_item_json_files(blob_project):
    view = open_project(blob_project).view
    t = NodeTable(view.ids.node_path, view.ids.item_json_node)
    for path in ("ds2/ann/scan 01.png.json", "ds1/img_info/photo_a.png.json", "ds1/meta/img_001.png.json"):
        nid = t.ref(path, view.getattr(path).ino)
        assert t.ref(path, view.getattr(path).ino) == nid
        assert len(t) == 1 and t.path(nid) == path  # only the root has an entry
        t.forget(nid, 2)
        assert t.path(nid) == path
    folder = t.ref("ds2/ann", view.getattr("ds2/ann").ino)  # everything else: counted entries
    assert len(t) == 2 and t.path(folder) == "ds2/ann"


def test_node_table_counts_lookups_and_drops_forgotten_nodes():
    items = {(2 << 56) | 5: "ds/img/a.png"}
    t = NodeTable(items.get)
    assert t.path(ROOT_ID) == ""
    assert t.ref("ds/img/a.png", (2 << 56) | 5) == (2 << 56) | 5  # images: no entry
    assert len(t) == 1
    a = t.ref("ds/ann", 77)
    assert t.ref("ds/ann", 77) == a and t.path(a) == "ds/ann"
    t.forget(a, 1)
    assert t.path(a) == "ds/ann"  # one lookup still outstanding
    t.forget(a, 1)
    assert t.path(a) is None
    b = t.ref("ds/ann", 77)
    assert b != a  # nodeids are never reused, so a late FORGET cannot hit the new node
    t.forget(ROOT_ID, 10)
    assert t.path(ROOT_ID) == ""


# -- through a mount --------------------------------------------------------------------------
@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@needs_fuse3
def test_warm_listing_never_reaches_the_daemon(blob_project, tmp_path):
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-d",)) as m:
        imgs = sorted(p for p in m.mountpoint.glob("*/img"))
        assert imgs
        first = [sorted(os.listdir(p)) for p in imgs]
        before = _opcodes(m.stderr(), "READDIR")
        assert before >= len(imgs)  # the first listing did go to the daemon
        assert _opcodes(m.stderr(), "OPENDIR") >= len(imgs)
        again = [sorted(os.listdir(p)) for p in imgs]
        assert again == first
        # FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE: the kernel answered from its cache.
        assert _opcodes(m.stderr(), "READDIR") == before


@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@needs_fuse3
def test_reads_after_the_kernel_forgets_every_inode(blob_project, fixtures_dir, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop the kernel's inode cache")
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())
    files = {rel: info["sha256"] for rel, info in expected["files"].items()}
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-d",)) as m:
        for _ in range(2):
            for rel, digest in files.items():
                assert hashlib.sha256((m.mountpoint / rel).read_bytes()).hexdigest() == digest, rel
            # Evict dentries and inodes: the kernel sends FORGET for every node it drops, and
            # the next pass has to look every path up again through fresh nodeids.
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
        assert _opcodes(m.stderr(), "FORGET") + _opcodes(m.stderr(), "BATCH_FORGET") > 0


@pytest.mark.parametrize("value", ["bogus", "LowLevel2"])
def test_bad_fuse_api_option_is_a_usage_error(blob_project, tmp_path, value):
    r = subprocess.run([*BLOBFS, "mount", "-o", f"fuse_api={value}", str(blob_project), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "fuse_api" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- the request loop: adaptive polling (default) and libfuse's own (spin_us=0) ---------------
@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@needs_fuse3
@pytest.mark.parametrize("spin", ["0", "50", "1000000"])
def test_every_loop_serves_the_fixture(blob_project, fixtures_dir, tmp_path, spin):
    # 0: libfuse's fuse_session_loop; 50: the default polling window; 1000000: the daemon is
    # still polling when the next request comes, so no request waits on poll(2).
    # workers=1: one daemon process (tests/test_mount_workers.py covers several)
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-o", f"workers=1,spin_us={spin}")) as m:
        assert read_expected(m.mountpoint, fixtures_dir) > 0
        assert m.stop(signal.SIGTERM) == 0
        assert not is_mounted(tmp_path)
        assert "Traceback" not in m.stderr()


@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@needs_fuse3
def test_polling_loop_wakes_from_poll_for_a_late_request(blob_project, fixtures_dir, tmp_path):
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-o", "spin_us=1000")) as m:
        names = sorted(os.listdir(next(m.mountpoint.glob("*/img"))))
        assert names
        time.sleep(0.3)  # far past the 1 ms window: the loop now sleeps in poll(2)
        assert read_expected(m.mountpoint, fixtures_dir) > 0  # fresh LOOKUPs wake it


@pytest.mark.mount
@pytest.mark.timeout(120)
@requires_fuse
@needs_fuse3
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_loop_while_it_polls(blob_project, tmp_path, sig):
    # A 1 s window: the signal lands while the loop spins on EAGAIN, not inside poll(2).
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-o", "spin_us=1000000")) as m:
        os.listdir(m.mountpoint)
        t0 = time.monotonic()
        assert m.stop(sig) == 0
        assert time.monotonic() - t0 < 10
        assert not is_mounted(tmp_path)
