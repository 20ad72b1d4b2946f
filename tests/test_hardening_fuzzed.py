"""Cases a fuzz run over mutants of the SDK fixture found (issue #5's contract).

Hostile JSON, coordinates and folder names printed tracebacks in ``verify`` and ``preview``;
offsets files that are no regular file were taken silently for datasets without items. Every
case runs the real ``blobfs`` command in a subprocess, as test_hardening_input.py does: no
traceback, the problem named in one line, and the rest still served or drawn.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mount_helpers import BLOBFS, force_unmount, is_mounted, requires_fuse
from offsets_helpers import pickle_offsets
from test_hardening_input import copy_project, info_json, one_line, run

#: Deeper than any recursion limit CPython's json decoder can take (it recurses per level).
DEEP = 100_000


def _deep_array() -> str:
    return "[" * DEEP + "]" * DEEP


def _deep_object() -> str:
    return '{"a":' * DEEP + "1" + "}" * DEEP


def _preview(proj: Path, out: Path, *args: str):
    r = run("preview", str(proj), "-o", str(out), "--sample", "first", "--limit", "100", "--thumb", "48",
            *args, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def test_deeply_nested_annotation_is_one_problem_for_verify(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    ann = proj / "ds2" / "ann"
    (ann / "scan 00.jpg.json").write_text(_deep_array())
    (ann / "scan 01.png.json").write_text(_deep_object())
    for args in ((), ("--decode",)):
        r = run("verify", *args, str(proj), timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        for name in ("scan 00.jpg.json", "scan 01.png.json"):
            got = [ln for ln in r.stdout.splitlines() if ln.startswith(f"{ann / name}:")]
            assert len(got) == 1 and "nested too deeply" in got[0], (name, r.stdout)


def test_deeply_nested_meta_json_verify_and_preview(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    (proj / "meta.json").write_text(_deep_array())
    r = run("verify", str(proj), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert any(ln.startswith(f"{proj / 'meta.json'}:") and "nested too deeply" in ln for ln in r.stdout.splitlines())
    out = tmp_path / "sheet.png"
    r = _preview(proj, out)
    assert r.returncode == 0, r.stderr
    assert "meta.json" in r.stderr and "class colours" in r.stderr  # said, then drawn without them
    with Image.open(out) as im:
        assert im.width > 0


def test_deeply_nested_annotation_is_skipped_by_preview(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    victim = proj / "ds2" / "ann" / "scan 00.jpg.json"
    victim.write_text(_deep_array())
    r = _preview(proj, tmp_path / "sheet.png", "ds2")
    assert r.returncode == 0, r.stderr
    assert any("scan 00.jpg.json" in ln and "annotation not drawn" in ln for ln in r.stderr.splitlines()), r.stderr


def _rect(points: list) -> dict:
    return {"classTitle": "x", "geometryType": "rectangle",
            "points": {"exterior": points, "interior": []}}


def test_out_of_range_coordinates_skip_the_object_not_the_sheet(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    ann_dir = proj / "ds1" / "ann"
    anns = sorted(ann_dir.glob("*.json"))
    assert len(anns) >= 3
    bad = {
        # What the fuzz run found: Pillow takes C longs and failed only when drawing.
        anns[0]: [_rect([[-99999999999, -1e300], [99999999999999999999999, 1e300]])],
        anns[1]: [{"classTitle": "x", "geometryType": "polygon",
                   "points": {"exterior": [[0, 0], [1e30, 5], [5, 1e30]], "interior": []}}],
        anns[2]: [{"classTitle": "x", "geometryType": "point", "points": {"exterior": [[1e20, 3]], "interior": []}}],
    }
    for path, objects in bad.items():
        doc = json.loads(path.read_bytes())
        doc["objects"] = objects + doc["objects"]
        path.write_text(json.dumps(doc))
    out = tmp_path / "sheet.png"
    r = _preview(proj, out, "ds1")
    assert r.returncode == 0, r.stderr
    warned = r.stderr.splitlines()
    for path in bad:
        assert any(path.name.removesuffix(".json") in ln and "out of range" in ln for ln in warned), (path, r.stderr)
    with Image.open(out) as im:
        assert im.width > 0


def test_dataset_folder_with_a_newline_in_its_name(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    shutil.move(proj / "ds2", proj / "ds\n2")
    out = tmp_path / "sheet.png"
    r = _preview(proj, out)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.width > 0


def test_offsets_file_that_is_no_regular_file_is_reported(blob_project, tmp_path):
    """A FIFO would block open(2) and /dev/zero never ends: never read, always reported (before,
    the dataset silently showed no items)."""
    for kind in ("fifo", "dev_zero", "folder"):
        proj = copy_project(blob_project, tmp_path / kind)
        pkl = proj / "ds2" / "more_images_offsets.pkl"
        pkl.unlink()
        {"fifo": lambda: os.mkfifo(pkl), "dev_zero": lambda: pkl.symlink_to("/dev/zero"),
         "folder": lambda: pkl.mkdir()}[kind]()
        code, rep = info_json(proj)
        assert code == 1, rep
        assert [p for p in rep["problems"] if str(pkl) in p and "not a regular file" in p], rep["problems"]
        assert [d["items"] for d in rep["datasets"]] == [62, 0]
        r = run("ls", str(proj), timeout=30)  # strict commands stop, as for an unusable tar
        assert r.returncode == 2 and str(pkl) in one_line(r) and "not a regular file" in one_line(r)


# -- the write side and the CLI surface (a second fuzz run) ---------------------------------------
def test_output_holding_the_source_is_refused_even_with_force(blob_project, classic_project, tmp_path):
    """``unpack --force SRC W`` with SRC inside W replaced W, source and all, and exited 0."""
    work = tmp_path / "w"
    src = copy_project(blob_project, work / "a" / "pj")
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for out in (work, work / "a", src):
        r = run("unpack", "--force", str(src), str(out))
        assert r.returncode == 2 and "source" in one_line(r), (out, r.stderr)
    csrc = copy_project(classic_project, work / "cp")
    r = run("pack-project", "--force", str(csrc), str(work))
    assert r.returncode == 2 and "holds the source" in one_line(r)
    assert sorted(p.relative_to(work) for p in work.rglob("*") if not p.is_relative_to(csrc)) == before


def test_umount_refuses_what_is_not_a_fuse_mount(tmp_path):
    """Its last fallback is umount(8), which unmounts anything."""
    mp = tmp_path / "t"
    mp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mp)], check=True)
    try:
        r = run("umount", str(mp))
        assert r.returncode == 2 and "not a FUSE mount (tmpfs)" in one_line(r)
        assert is_mounted(mp)
    finally:
        subprocess.run(["umount", str(mp)], check=False)


FOREIGN_FS = """
import sys, errno, stat, mfusepy
class Empty(mfusepy.Operations):
    def getattr(self, path, fh=None):
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOENT)
        return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
    def readdir(self, path, fh):
        return [".", ".."]
mfusepy.FUSE(Empty(), sys.argv[1], foreground=True, ro=True, fsname="elsewhere", subtype="otherfs")
"""


@requires_fuse
@pytest.mark.mount
def test_umount_refuses_another_fuse_filesystem(tmp_path):
    """A live sshfs or ratarmount mount is a FUSE mount too: it is not blobfs's to end."""
    mp = tmp_path / "other"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", FOREIGN_FS, str(mp)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(mp):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the foreign filesystem did not mount"
            time.sleep(0.05)
        r = run("umount", str(mp))
        assert r.returncode == 2 and "a fuse.otherfs mount, not blobfs" in one_line(r), r.stderr
        assert is_mounted(mp) and proc.poll() is None
    finally:
        force_unmount(mp)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize("args", [("umount", ""), ("mount", "SRC", ""), ("mount", "", "MP"), ("info", ""),
                                  ("pack", "", "-o", "x.tar"), ("unpack", "SRC", ""), ("preview", "SRC", "-o", "")])
def test_an_empty_path_is_a_usage_error(blob_project, tmp_path, args):
    """"" is the current folder to every os call (`blobfs umount ""` unmounted the shell's cwd)."""
    mp = tmp_path / "mp"
    mp.mkdir()
    real = [str(blob_project) if a == "SRC" else str(mp) if a == "MP" else a for a in args]
    r = subprocess.run([*BLOBFS, *real], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "an empty path" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["mp"] and not is_mounted(mp)


def test_index_refuses_what_is_no_regular_file_and_reports_write_failures(blob_project, tmp_path):
    fifo = tmp_path / "f.tar"
    os.mkfifo(fifo)
    for tar in (fifo, Path("/dev/null")):
        r = run("index", str(tar), "-o", str(tmp_path), timeout=30)  # a FIFO hung here
        assert r.returncode == 2 and "not a regular file" in one_line(r)
    tar = blob_project / "blob" / "small_images.tar"
    r = run("index", str(tar), "-o", str(tmp_path / "no" / "such"))
    assert r.returncode == 2 and "no/such: output folder does not exist" in one_line(r)  # as pack


def test_copy_file_refuses_a_fifo_instead_of_blocking(tmp_path):
    """pack-project lists regular files, then copies them: one swapped for a FIFO in between
    blocked open(2) forever."""
    from blobfs.errors import InputError
    from blobfs.write.pack_project import copy_file

    fifo = tmp_path / "swapped.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="no longer a regular file"):
        copy_file(str(fifo), str(tmp_path / "out.json"), fifo, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_preview_never_writes_over_the_source_nor_leaves_a_partial_sheet(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    victim = proj / "ds1" / "img" / "photo_a.png"
    before = victim.read_bytes()
    r = _preview(proj, victim)
    assert r.returncode == 2 and "inside the source" in one_line(r) and victim.read_bytes() == before
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        r = _preview(proj, full / "sheet.png")
        assert r.returncode == 1 and "No space left" in one_line(r)
        assert os.listdir(full) == []  # no truncated sheet, no temporary
    finally:
        subprocess.run(["umount", str(full)], check=False)
    old = tmp_path / "sheet.png"
    old.write_bytes(b"an older sheet")
    r = _preview(proj, old)  # an existing sheet is replaced, whole
    assert r.returncode == 0
    with Image.open(old) as im:
        im.load()
    assert [p.name for p in tmp_path.iterdir() if "blobfs-tmp" in p.name] == []


def test_pack_project_never_walks_into_its_own_output(classic_project, tmp_path):
    """A symlink in the source reaching the output's folder made the walk copy the copy until
    the path was too long (a traceback after 300 levels)."""
    src = copy_project(classic_project, tmp_path / "cp")
    (src / "ds1" / "loop").symlink_to("../..")  # tmp_path: holds cp and, while writing, the output
    r = subprocess.run([*BLOBFS, "pack-project", "cp", "pout"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "leads into the output being written" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp", "pout"]
    depth = max(len(p.relative_to(tmp_path / "pout").parts) for p in (tmp_path / "pout").rglob("*"))
    assert depth < 10


def test_a_bare_file_that_is_no_tar_is_unreadable_input_for_every_command(tmp_path):
    """A bare file that is no tar was reported twice by verify (when opened and by the header
    check), and verify and info exited 1 where index exited 2: nothing of such a source can be
    read or checked, so all three exit 2 with one line naming the file."""
    notar = tmp_path / "x.tar"
    notar.write_bytes(b"hello\n" * 200)
    for cmd in ("verify", "info", "index", "ls"):
        r = run(cmd, str(notar))
        line = one_line(r)
        assert r.returncode == 2 and line.startswith(f"blobfs: {notar}:"), (cmd, r.stderr)
        assert "not a tar file" in line and r.stdout == "", cmd
    # In a project the same tar is one problem among the others: refused when the project is
    # opened (its first block is no header), so info, which walks no headers, names it too.
    proj = tmp_path / "proj"
    (proj / "blob").mkdir(parents=True)
    (proj / "ds" / "ann").mkdir(parents=True)
    (proj / "meta.json").write_text("{}")
    (proj / "blob" / "x.tar").write_bytes(notar.read_bytes())
    (proj / "ds" / "x_offsets.pkl").write_bytes(pickle_offsets([("a.png", 512, 600)]))
    r = run("verify", str(proj))
    assert r.returncode == 1 and "not a tar file" in r.stdout, (r.stdout, r.stderr)
    code, rep = info_json(proj)
    assert code == 1 and any("x.tar: not a tar file" in p for p in rep["problems"]), rep
