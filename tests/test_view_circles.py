"""A symlink to a folder that leads round in a circle (``up -> ..``, a link to the project's
root, two links leading to each other's folders): the mount shows no symlinks, so the view
would show a folder holding itself, and every walk of the mount (``os.walk``, ``du``,
``rsync``, ``unpack``) would multiply the tree down to ELOOP. The view hides such a link by one
rule everywhere (listing, lookup, log line, ``verify``, ``unpack``); a link to a sibling folder
or to a folder below stays followed."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from blobfs.model.discovery import find_datasets
from blobfs.model.opening import open_project
from blobfs.write.options import UnpackOptions
from blobfs.write.unpack import unpack
from mount_helpers import BLOBFS

LOGGER = "blobfs.model.hidden"
ROUND = "symlink leads round in a circle (to a folder it lies in)"
#: Every folder of the loop project's view, none twice down a circle.
FOLDERS = {"", "a", "a/x", "b", "b/y", "shortcut", "ds1", "ds1/ann", "ds1/img", "ds1/img_info",
           "ds1/meta", "ds1/meta/sib", "ds2", "ds2/ann", "ds2/img"}


def _copy(blob_project: Path, dst: Path) -> Path:
    shutil.copytree(blob_project, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


@pytest.fixture
def loop_project(blob_project: Path, tmp_path: Path) -> Path:
    """ds1/meta: ``up -> ..`` (its dataset), ``root -> ../..`` (the project's root), ``sib ->
    ../img_info`` (a sibling: no circle), ``alias.json`` (a file link); ``a/x -> ../b`` and
    ``b/y -> ../a`` (each leads to the other's folder: a circle of two); ``shortcut ->
    ds1/img_info`` (a link from the root to a folder below it: no circle)."""
    proj = _copy(blob_project, tmp_path / "proj")
    meta = proj / "ds1/meta"
    (meta / "up").symlink_to("..")
    (meta / "root").symlink_to("../..")
    (meta / "sib").symlink_to("../img_info")
    (meta / "alias.json").symlink_to("img_001.png.json")
    (proj / "a").mkdir()
    (proj / "b").mkdir()
    (proj / "b/f.txt").write_bytes(b"in b")
    (proj / "a/x").symlink_to("../b")
    (proj / "b/y").symlink_to("../a")
    (proj / "shortcut").symlink_to("ds1/img_info")
    return proj


def _enoent(view, path: str) -> None:
    with pytest.raises(OSError) as e:
        view.getattr(path)
    assert e.value.errno == errno.ENOENT, path


def test_links_round_in_a_circle_are_hidden_others_followed(loop_project: Path) -> None:
    proj = loop_project
    with open_project(proj) as p:
        view = p.view
        assert {rel for rel, _dirs, _files in view.walk()} == FOLDERS  # finite, each once
        assert [n for n, _ in view.listdir("ds1/meta")] == ["alias.json", "img_001.png.json", "sib"]
        for path in ("ds1/meta/up", "ds1/meta/root", "ds1/meta/up/meta", "a/x/y", "b/y/x",
                     "a/x/y/x"):
            _enoent(view, path)
        assert [n for n, _ in view.listdir("a/x")] == ["f.txt"]  # b, without its link back
        assert view.listdir("b/y") == []  # a, without its link back
        # a sibling folder and a folder below: shown, their files readable through the view
        for path in ("ds1/meta/sib", "shortcut"):
            assert [n for n, _ in view.listdir(path)] == ["img_000.png.json", "photo_a.png.json"]
            assert view.read_all(f"{path}/photo_a.png.json") == \
                (proj / "ds1/img_info/photo_a.png.json").read_bytes()
        assert view.read_all("a/x/f.txt") == b"in b"
        # a file link: unchanged
        assert view.read_all("ds1/meta/alias.json") == (proj / "ds1/meta/img_001.png.json").read_bytes()


def test_listing_and_lookup_agree(loop_project: Path) -> None:
    """For every real entry of every folder the view passes through: listed iff found."""
    with open_project(loop_project) as p:
        view = p.view
        for rel, _dirs, _files in view.walk():
            if rel.endswith("img"):
                continue  # items, not the real folder
            listed = {n for n, _ in view.listdir(rel)}
            for name in os.listdir(loop_project / rel):
                path = f"{rel}/{name}" if rel else name
                try:
                    view.getattr(path)
                    found = True
                except OSError as e:
                    assert e.errno == errno.ENOENT, path
                    found = False
                assert (name in listed) == found, path


def test_log_line_names_the_kind(loop_project: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(loop_project) as p:
        p.view.listdir("ds1/meta")
        _enoent(p.view, "a/x/y")
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2, lines
    meta = lines[0]
    assert meta.startswith("ds1/meta: the mount hides 2 entries of this folder: ")
    assert "'up' (link leading round in a circle)" in meta
    assert "'root' (link leading round in a circle)" in meta
    assert lines[1] == "a/x: the mount hides 'y' (link leading round in a circle) of this folder, looked up by name"


def test_dataset_discovery_does_not_go_round(loop_project: Path) -> None:
    """A link to a folder above it in a dataset's own folder (where discovery descends, unlike
    meta/) found the same datasets again, 40 links deep."""
    (loop_project / "ds1/up").symlink_to("..")
    (loop_project / "ds2/sub").mkdir()
    (loop_project / "ds2/sub/root").symlink_to("../..")
    assert [f.relpath for f in find_datasets(loop_project)] == ["ds1", "ds2"]
    with open_project(loop_project) as p:
        assert [ds.relpath for ds in p.datasets] == ["ds1", "ds2"]
        assert {rel for rel, _dirs, _files in p.view.walk()} == FOLDERS | {"ds2/sub"}


def test_unpack_writes_a_bounded_tree_and_reports_the_links(
        loop_project: Path, blob_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "unpack", str(loop_project), str(out)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert sorted(warnings) == sorted(
        f"blobfs: warning: {loop_project / rel}: {ROUND}; not unpacked"
        for rel in ("ds1/meta/up", "ds1/meta/root", "a/x/y", "b/y/x")), proc.stderr
    assert "4 problems in the source" in proc.stderr
    plain = unpack(blob_project, tmp_path / "plain", UnpackOptions(jobs=1))
    assert plain.problems == ()
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {p.relative_to(tmp_path / "plain").as_posix()
                for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    expected |= {"ds1/meta/alias.json", "b/f.txt", "a/x/f.txt", "ds1/meta/sib/img_000.png.json",
                 "ds1/meta/sib/photo_a.png.json", "shortcut/img_000.png.json",
                 "shortcut/photo_a.png.json"}
    assert files == expected
    assert (out / "b/y").is_dir() and not any((out / "b/y").iterdir())


def test_verify_names_each_circle_once(loop_project: Path) -> None:
    r = subprocess.run([*BLOBFS, "verify", str(loop_project)], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    for rel in ("ds1/meta/up", "ds1/meta/root"):
        assert lines.count(f"{loop_project / rel}: {ROUND}; the mount hides it") == 1, r.stdout
    # the circle of two: one line, naming the link where the walk meets it (a before b)
    assert lines.count(f"{loop_project / 'a/x/y'}: {ROUND}; the mount hides it") == 1, r.stdout
    assert lines[-1].endswith(", 3 problem(s)"), r.stdout


def test_ls_leaves_the_link_out(loop_project: Path) -> None:
    r = subprocess.run([*BLOBFS, "ls", str(loop_project), "ds1/meta"], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stdout.split() == ["alias.json", "img_001.png.json", "sib/"], r
    r = subprocess.run([*BLOBFS, "ls", str(loop_project), "ds1/meta/up"], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    # one line saying why, as verify does (it was "No such file or directory")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"blobfs: {loop_project / 'ds1/meta/up'}: {ROUND}; the mount hides it"], r


def test_file_links_leading_to_each_other_are_hidden_like_a_circle(
        blob_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``p.json -> q.json -> p.json``: the OS says ELOOP; the listing hid them, the lookup
    answered ELOOP: now both hide them, the log line and ``verify`` name the circle."""
    proj = _copy(blob_project, tmp_path / "proj")
    (proj / "ds1/meta/p.json").symlink_to("q.json")
    (proj / "ds1/meta/q.json").symlink_to("p.json")
    (proj / "ds1/meta/z.json").write_bytes(b"{}")  # listed after them, whatever the order
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(proj) as p:
        assert {n for n, _ in p.view.listdir("ds1/meta")} == {"img_001.png.json", "z.json"}
        _enoent(p.view, "ds1/meta/p.json")
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and lines[0].startswith(
        "ds1/meta: the mount hides 2 entries of this folder: "), lines
    assert "'p.json' (link leading round in a circle)" in lines[0], lines
    assert "'q.json' (link leading round in a circle)" in lines[0], lines
    r = subprocess.run([*BLOBFS, "verify", str(proj)], capture_output=True, text=True)
    assert r.returncode == 1, r
    assert sorted(x for x in r.stdout.splitlines() if "ds1/meta/" in x) == [
        f"{proj}/ds1/meta/{n}.json: symlink leads round in a circle; the mount hides it"
        for n in "pq"], r.stdout


def test_links_leading_to_each_other_in_img_and_dataset_folders(
        blob_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same ELOOP links where the project is opened (an image-named pair in ``img/``, a
    folder pair beside the datasets): opening the project raised ELOOP with a traceback from
    ``verify``, ``ls`` and the mount; now the images are skipped as problems, the folders are
    no datasets, and the items are all there."""
    proj = _copy(blob_project, tmp_path / "proj")
    (proj / "ds1/img/a.png").symlink_to("b.png")
    (proj / "ds1/img/b.png").symlink_to("a.png")
    (proj / "dx").symlink_to("dy")
    (proj / "dy").symlink_to("dx")
    (proj / "ds2/ann/c.json").symlink_to("d.json")  # ann/: scanned by the dataset, too
    (proj / "ds2/ann/d.json").symlink_to("c.json")
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(blob_project) as p:
        want = {ds.relpath: sorted(ds.items.names()) for ds in p.datasets}
    with open_project(proj) as p:
        assert {ds.relpath: sorted(ds.items.names()) for ds in p.datasets} == want
        assert sorted(x.rpartition(": ")[2] for x in p.problems if "/img/" in x) == \
            ["symlink leads round in a circle (skipped)"] * 2
        _enoent(p.view, "ds1/img/a.png")
        _enoent(p.view, "dx")
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines == ["ds1/img: the mount hides 'a.png' (link leading round in a circle) of this "
                     "folder, looked up by name",
                     ".: the mount hides 'dx' (link leading round in a circle) of this folder, "
                     "looked up by name"], lines
    r = subprocess.run([*BLOBFS, "verify", str(proj)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r
    assert sorted(x.removeprefix(f"{proj}/") for x in r.stdout.splitlines() if "circle" in x) == [
        "ds1/img/a.png: symlink leads round in a circle (skipped)",
        "ds1/img/b.png: symlink leads round in a circle (skipped)",
        "ds2/ann/c.json: symlink leads round in a circle; the mount hides it",
        "ds2/ann/d.json: symlink leads round in a circle; the mount hides it",
        "dx: symlink leads round in a circle; the mount hides it",
        "dy: symlink leads round in a circle; the mount hides it",
    ], r.stdout
