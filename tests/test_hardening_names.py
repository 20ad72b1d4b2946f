"""Hostile item names through real mounts (issue #5).

Entry names come from other people's pickles and become file names under ``img/``. Through a
real mount: nothing escapes its folder, a listing never fails or shows a name twice, every
listed name can be stat'ed and read, and which entry wins a duplicate is the same on every
mount. Bad names are skipped with one problem line naming the offsets file and the entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

from blobfs.format.offsets_write import dumps_offsets
from blobfs.format.tarheaders import regular_members
from blobfs.model import cache
from mount_helpers import BLOBFS, libfuse_params, mounted, requires_fuse
from tar_helpers import header_block

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")
#: name -> words of its problem line (skipped) or None (served)
NAMES: dict[str, str | None] = {
    "..": "is not a file name", ".": "is not a file name", "": "empty name",
    "/etc/passwd": "contains '/'", "../../escape.png": "contains '/'", "a/b.png": "contains '/'",
    "nul\x00.png": "contains '\\x00'", "bell\x07.png": "contains '\\x07'",
    "new\nline.png": "contains '\\n'", "del\x7f.png": "contains '\\x7f'",
    "x" * 256: "too long", "y" * 251: "too long", "lone\udcff.png": "not valid UTF-8",
    "z" * 250: None,                  # + ".json" is exactly NAME_MAX
    "Case.png": None, "case.png": None, "CASE.PNG": None,   # case-only differences: 3 items
    NFC: None, NFD: None,             # two byte strings, two items (no normalization, as the SDK)
    " ": None, "-rf": None, "back\\slash.png": None, "\u202eevil.png": None, "..png": None,
    "dup.png": None,
}


def _project(blob_project: Path, dst: Path) -> tuple[Path, dict[str, tuple[str, int, int]]]:
    """ds2 gets every NAMES entry (each on its own member's range, cycling), a duplicate of
    ``dup.png`` inside the same file and another in a second offsets file of the same dataset.
    Returns the project and name -> (tar, start, end) that must win."""
    shutil.copytree(blob_project, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    shutil.copy(dst / "blob" / "small_images.tar", dst / "blob" / "zz_second.tar")
    ms = regular_members(dst / "blob" / "more_images.tar")
    rng = [(m.offset_data, m.offset_data + m.size) for m in ms]
    entries = [(n, *rng[i % len(rng)]) for i, n in enumerate(NAMES)]
    entries.insert(0, ("dup.png", *rng[5]))            # within one file: the later one wins...
    (dst / "ds2" / "more_images_offsets.pkl").write_bytes(dumps_offsets(entries))
    m2 = regular_members(dst / "blob" / "zz_second.tar")
    second = [("dup.png", m2[7].offset_data, m2[7].offset_data + m2[7].size)]
    # ...and a later offsets file (merge order = file name order) beats them both
    (dst / "ds2" / "zz_second_offsets.pkl").write_bytes(dumps_offsets(second))
    win = {n: ("more_images.tar", s, e) for n, s, e in entries if NAMES.get(n, "") is None}
    win["dup.png"] = ("zz_second.tar", *second[0][1:])
    return dst, win


def test_bad_names_are_skipped_with_one_line_each(blob_project, tmp_path):
    proj, win = _project(blob_project, tmp_path / "proj")
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    r = subprocess.run([*BLOBFS, "info", "--json", str(proj)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rep = json.loads(r.stdout)
    assert rep["datasets"][1]["items"] == len(win)
    for i, (name, why) in enumerate(NAMES.items(), start=1):   # entry #0 is the first dup.png
        lines = [p for p in rep["problems"] if p.startswith(f"{pkl}: entry #{i} ")]
        if why is None:
            assert lines == [], name
        else:
            assert len(lines) == 1 and why in lines[0] and lines[0].endswith("(skipped)"), (name, lines)
    shadow = [p for p in rep["problems"] if "duplicate item 'dup.png'" in p]
    assert len(shadow) == 2 and all("from more_images.tar" in p for p in shadow)


def _listing(root: Path) -> tuple[dict[str, str], list[str]]:
    """sha256 of every file under ``root`` by relative path (bytes), plus every raw listing."""
    files: dict[str, str] = {}
    raw: list[str] = []
    for top, dirs, names in os.walk(root):
        raw.extend(os.path.join(top, n) for n in dirs + names)
        for n in names:
            p = os.path.join(top, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return files, raw


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_hostile_names_through_a_mount(blob_project, tmp_path, libfuse):
    proj, win = _project(blob_project, tmp_path / "proj")
    snapshots = []
    for k in range(2):  # which entry wins is the same on every mount
        mp = tmp_path / f"mp{k}"
        mp.mkdir()
        with mounted(proj, mp, libfuse=libfuse) as m:
            img = m.path("ds2/img")
            names = os.listdir(img)
            assert len(names) == len(set(names))             # never a name twice
            assert sorted(names) == sorted(win)               # exactly the valid names
            with os.scandir(img) as it:
                assert sorted(e.name for e in it) == sorted(names)
            for n in names:
                p = img / n
                st = os.stat(p)                                # every listed name stats
                tar, start, end = win[n]
                assert st.st_size == end - start
                with open(proj / "blob" / tar, "rb") as f:
                    f.seek(start)
                    want = f.read(end - start)
                assert p.read_bytes() == want, n               # the winning entry's bytes
            # nothing resolves outside its folder
            for bad in ("..", "../../escape.png", "a/b.png"):
                target = img / bad
                assert os.path.realpath(target).startswith(str(mp)), bad
                assert not (img / bad).is_file() or bad == ".."
            assert os.path.samefile(img / "..", m.path("ds2"))
            for bad in ("nul", "x" * 256):
                with pytest.raises(OSError):
                    os.stat(img / bad)
            snapshots.append(_listing(m.path()))
    assert snapshots[0] == (snapshots[1][0], [p.replace("/mp1", "/mp0", 1) for p in snapshots[1][1]])
    assert sorted(os.listdir(tmp_path)) == ["mp0", "mp1", "proj"]   # nothing created beside it
    assert not Path("/escape.png").exists()


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_duplicate_winner_is_stable_with_the_index_cache(blob_project, tmp_path, libfuse):
    """The same winner with the on-disk index cache cold and warm (large files only are
    cached: 25,000 entries with duplicates)."""
    proj = tmp_path / "proj"
    (proj / "blob").mkdir(parents=True)
    (proj / "ds" / "ann").mkdir(parents=True)
    (proj / "meta.json").write_text('{"classes": [], "tags": []}')
    n = 25_000
    data = bytearray(bytes(range(256)) * (n // 8))
    data[:512] = header_block("t", len(data) - 512)  # a tar's first block, as opening checks
    (proj / "blob" / "t.tar").write_bytes(data)
    entries = [(f"i{i}.png", i, i + 7) for i in range(n)]
    entries[100] = ("i5.png", 1000, 1010)
    entries.append(("i7.png", 2000, 2005))
    (proj / "ds" / "t_offsets.pkl").write_bytes(dumps_offsets(entries))
    tar = (proj / "blob" / "t.tar").read_bytes()
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    for k in range(3):
        mp = tmp_path / f"mp{k}"
        mp.mkdir()
        with mounted(proj, mp, libfuse=libfuse, env=env) as m:
            img = m.path("ds/img")
            assert (img / "i5.png").read_bytes() == tar[1000:1010]
            assert (img / "i7.png").read_bytes() == tar[2000:2005]
            assert (img / "i9.png").read_bytes() == tar[9:16]
            names = os.listdir(img)
            assert len(names) == len(set(names)) == n + 1 - 2
        # a cache file that exists must load back (a torn/mismatched one is rebuilt every time)
        for idx in (tmp_path / "cache" / "blobfs").glob("*.idx") if (tmp_path / "cache").exists() else ():
            key = idx.name[:-4]
            assert cache.load(key, len(tar)) is not None, idx
