"""``blobfs unpack``: blob project → classic project, equal to what the mount shows."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from blobfs.cli.write import pack_cmd, unpack_cmd
from blobfs.model.opening import open_project
from mount_helpers import mounted, requires_fuse

BLOBFS = [sys.executable, "-m", "blobfs"]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def invoke(*args) -> object:
    return CliRunner().invoke(unpack_cmd, [str(a) for a in args], catch_exceptions=False)


def test_sdk_blob_project_unpacks_to_the_sdk_classic_project(
        blob_project: Path, classic_project: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = invoke(blob_project, out)
    assert res.exit_code == 0, res.output
    got = tree(out)
    assert got == tree(classic_project)
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == \
        {k: v["sha256"] for k, v in expected.items()}
    diff = subprocess.run(["diff", "-r", str(out), str(classic_project)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout
    # Inputs untouched, nothing but the output in the destination folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_equals_the_view_with_its_mtimes(blob_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke(blob_project, out).exit_code == 0
    with open_project(blob_project) as p:
        view = p.view
        listed = {f"{d}/{f}" if d else f for d, _dirs, files in view.walk() for f in files}
        assert listed == set(tree(out))
        for rel in listed:
            st = view.getattr("/" + rel)
            assert (out / rel).read_bytes() == p.read(rel)
            assert os.stat(out / rel).st_mtime_ns == st.mtime_ns


@requires_fuse
@pytest.mark.mount
@pytest.mark.timeout(90)
def test_diff_with_the_mount_is_empty(blob_project: Path, tmp_path: Path) -> None:
    out, mp = tmp_path / "out", tmp_path / "mnt"
    mp.mkdir()
    assert invoke(blob_project, out).exit_code == 0
    with mounted(blob_project, mp, libfuse=3) as m:
        diff = subprocess.run(["diff", "-r", str(out), str(m.path())], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_bare_tar_and_synthesized_annotations(tmp_path: Path, classic_project: Path) -> None:
    """A tar made by pack unpacks to the images it holds; --synthesize-ann adds annotations."""
    images = classic_project / "ds1" / "img"
    tar = tmp_path / "imgs.tar"
    assert CliRunner().invoke(pack_cmd, [str(images), "-o", str(tar)]).exit_code == 0
    plain, synth = tmp_path / "plain", tmp_path / "synth"
    assert invoke(tar, plain).exit_code == 0
    got = tree(plain)
    imgs = {k.rpartition("/")[2]: v for k, v in got.items() if "/img/" in k}
    assert imgs == {p.name: p.read_bytes() for p in images.iterdir()}
    assert invoke(tar, synth, "--synthesize-ann").exit_code == 0
    anns = [k for k in tree(synth) if "/ann/" in k]
    assert len(anns) == len(imgs)
    with open_project(tar, synthesize_ann=True) as p:
        for rel in anns:
            assert (synth / rel).read_bytes() == p.read(rel)


def test_refuses_existing_output_unless_force(blob_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_bytes(b"mine")
    res = invoke(blob_project, out)
    assert res.exit_code == 2 and str(out) in res.output
    assert tree(out) == {"mine.txt": b"mine"}
    assert invoke(blob_project, out, "--force").exit_code == 0
    assert "mine.txt" not in tree(out) and (out / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    res = invoke(tmp_path / "nope", tmp_path / "out")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_truncated_tar_reports_problems(blob_project: Path, tmp_path: Path) -> None:
    """Entries past the end of a cut-short tar: the output is still what the mount shows (it
    skips them), and every skipped entry is reported with exit code 1."""
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    tar = proj / "blob" / "small_images.tar"
    os.chmod(tar, 0o644)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    proc = subprocess.run([*BLOBFS, "unpack", str(proj), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "warning" in proc.stderr
    with open_project(proj) as p:
        assert p.problems and all(line in proc.stderr for line in p.problems)
        assert {rel: p.read(rel) for rel in p.files()} == tree(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "proj"]


def test_subprocess_round_trip_via_pack_project(classic_project: Path, tmp_path: Path) -> None:
    blob, back = tmp_path / "blob", tmp_path / "back"
    for cmd in (["pack-project", str(classic_project), str(blob)], ["unpack", str(blob), str(back)]):
        proc = subprocess.run([*BLOBFS, *cmd], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    diff = subprocess.run(["diff", "-r", str(back), str(classic_project)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout


def test_many_files_through_the_workers(tmp_path: Path) -> None:
    """Enough files for the forked workers: every byte and mtime arrives."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5000):
        p = src / f"{i:05d}.png"
        p.write_bytes(os.urandom(16) * (1 + i % 50))
        os.utime(p, (1_650_000_000 + i, 1_650_000_000 + i))
    tar = tmp_path / "x.tar"
    assert CliRunner().invoke(pack_cmd, [str(src), "-o", str(tar)]).exit_code == 0
    out = tmp_path / "out"
    assert invoke(tar, out).exit_code == 0
    imgs = {k.rpartition("/")[2]: v for k, v in tree(out).items() if "/img/" in k}
    assert imgs == {p.name: p.read_bytes() for p in src.iterdir()}
    with open_project(tar) as p:
        for rel in p.files():
            assert os.stat(out / rel).st_mtime_ns == p.view.getattr("/" + rel).mtime_ns


def test_output_inside_the_source_is_refused(blob_project: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    res = invoke(proj, proj / "ds1" / "out")
    assert res.exit_code == 2 and "inside" in res.output
    assert not (proj / "ds1" / "out").exists()


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_jobs_option_gives_the_same_tree(tmp_path: Path, jobs: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4000):
        (src / f"{i:05d}.png").write_bytes(os.urandom(8) * (1 + i % 30))
    tar = tmp_path / "x.tar"
    assert CliRunner().invoke(pack_cmd, [str(src), "-o", str(tar)]).exit_code == 0
    assert invoke(tar, tmp_path / "default").exit_code == 0
    assert invoke(tar, tmp_path / "chosen", "-j", jobs).exit_code == 0
    assert tree(tmp_path / "chosen") == tree(tmp_path / "default")
    assert len(tree(tmp_path / "chosen")) >= 4000


def test_project_with_many_folders_round_trips_through_forked_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two datasets of 2500 images: their img/ and ann/ folders go to different workers (one
    worker per folder), and classic -> pack-project -> unpack gives back every byte."""
    from blobfs.cli.write import pack_project_cmd
    from blobfs.write import workers

    classic = tmp_path / "classic"
    (classic).mkdir()
    (classic / "meta.json").write_bytes(b'{"classes": [], "tags": [], "projectSettings": {}}')
    for ds in ("a", "b"):
        for i in range(2500):
            name = f"{ds}_{i:05d}.png"
            (classic / ds / "img").mkdir(parents=True, exist_ok=True)
            (classic / ds / "ann").mkdir(parents=True, exist_ok=True)
            (classic / ds / "img" / name).write_bytes(os.urandom(32) * (1 + i % 9))
            (classic / ds / "ann" / f"{name}.json").write_text(
                json.dumps({"description": "", "size": {"height": 1, "width": i + 1}, "tags": [],
                            "objects": []}))
    blob = tmp_path / "blob"
    assert CliRunner().invoke(pack_project_cmd, [str(classic), str(blob)]).exit_code == 0
    plans: list[int] = []
    real_deal = workers.deal

    def deal(chunks, w, key=None):
        plan = real_deal(chunks, w, key)
        plans.append(len(plan))
        return plan

    monkeypatch.setattr(workers, "deal", deal)
    monkeypatch.setattr(workers, "worker_count", lambda: 2)
    out = tmp_path / "out"
    assert invoke(blob, out).exit_code == 0
    assert plans == [2]  # forked: two workers, each with whole folders
    assert tree(out) == tree(classic)



@pytest.mark.timeout(90)
def test_entries_the_view_hides_are_reported_not_dropped_silently(
        blob_project: Path, tmp_path: Path) -> None:
    """A FIFO annotation, a FIFO or sub-folder in img/, a file without image extension and
    links leading out or nowhere: none of them is written (a FIFO is never opened: it would
    block), each gets one warning line, everything else is written and the exit code is 1."""
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    ds1 = proj / "ds1"
    (ds1 / "ann" / "img_023.jpg.json").unlink()
    odd = [ds1 / "ann" / "img_023.jpg.json", ds1 / "ann" / "extra.json", ds1 / "img" / "pipe.png",
           ds1 / "meta" / "pipe.json"]
    for p in odd:
        os.mkfifo(p)
    (ds1 / "img" / "sub").mkdir()
    (ds1 / "img" / "sub" / "deep.png").write_bytes(b"x")
    (ds1 / "img" / "notes.txt").write_bytes(b"x")
    (ds1 / "meta" / "out.json").symlink_to("/etc/hostname")
    (ds1 / "meta" / "dangling.json").symlink_to("nowhere.json")
    odd += [ds1 / "img" / "sub", ds1 / "img" / "notes.txt", ds1 / "meta" / "out.json",
            ds1 / "meta" / "dangling.json"]
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "unpack", str(proj), str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    for p in odd:
        assert sum(line.startswith(f"blobfs: warning: {p}:") for line in warnings) == 1, (p, proc.stderr)
    assert "FIFO" in proc.stderr and "outside the project" in proc.stderr
    assert "2 non-items of img/ left behind; 6 problems in the source" in proc.stderr
    assert invoke(blob_project, tmp_path / "plain").exit_code == 0
    expected = tree(tmp_path / "plain")
    del expected["ds1/ann/img_023.jpg.json"]
    assert tree(out) == expected


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_undecodable_image_skips_only_its_synthesized_annotation(tmp_path: Path, jobs: str) -> None:
    """--synthesize-ann with images whose header does not decode: their bytes are still
    unpacked, their annotations are not written, one warning each, exit 1; every other
    annotation is written (also through forked workers, whose warnings reach the parent)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buf, "PNG")
    src = tmp_path / "src"
    src.mkdir()
    bad = {"bad_0007.png", "bad_1500.jpg", "bad_2999.png"}
    for i in range(3000):
        (src / f"ok_{i:04d}.png").write_bytes(buf.getvalue())
    for name in bad:
        (src / name).write_bytes(b"not an image")
    tar = tmp_path / "x.tar"
    assert CliRunner().invoke(pack_cmd, [str(src), "-o", str(tar)]).exit_code == 0
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "unpack", "--synthesize-ann", "-j", jobs, str(tar), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == len(bad), proc.stderr
    for name in bad:
        assert sum(f"/x/ann/{name}.json: not written" in line for line in warnings) == 1
        assert (out / "x" / "img" / name).read_bytes() == b"not an image"
        assert not (out / "x" / "ann" / f"{name}.json").exists()
    anns = sorted(p.name for p in (out / "x" / "ann").iterdir())
    assert anns == [f"ok_{i:04d}.png.json" for i in range(3000)]
    assert json.loads((out / "x" / "ann" / "ok_0000.png.json").read_text())["size"] == \
        {"height": 2, "width": 3}
    assert "Traceback" not in proc.stderr and "Input/output error" not in proc.stderr


def test_non_items_of_img_are_named_but_no_problem(blob_project: Path, tmp_path: Path) -> None:
    """A sub-folder or a non-image file of img/ is no item by the format's rule (the SDK
    ignores it too): unpack leaves it behind with a warning line, but exits 0."""
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    (proj / "ds1" / "img" / "sub").mkdir()
    (proj / "ds1" / "img" / "notes.txt").write_bytes(b"x")
    proc = subprocess.run([*BLOBFS, "unpack", str(proj), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all("no item" in line for line in warnings), proc.stderr
    assert not (tmp_path / "out" / "ds1" / "img" / "notes.txt").exists()


@pytest.mark.parametrize("fails", ["open", "write"])
def test_full_disk_for_an_img_file_names_the_final_path(blob_project: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        fails: str) -> None:
    """An ordinary img/ file (copied through the view) that could not be written was named by
    its hidden temporary path (``.out.blobfs-tmp-*/ds1/img/photo_a.png``, gone once the run
    ends); the items and the other files already named the path under OUT_DIR."""
    import blobfs.write.unpack as unpack_mod
    real_open, real_write = os.open, os.write
    opened: set[int] = set()
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fake_open(path, flags, *a, **kw):
        fd = real_open(path, flags, *a, **kw)
        if isinstance(path, str) and path.endswith("/ds1/img/photo_a.png") and flags & os.O_CREAT:
            if fails == "open":
                os.close(fd)
                raise full
            opened.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in opened:
            raise full
        return real_write(fd, data)

    monkeypatch.setattr(unpack_mod.os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    out = tmp_path / "out"
    res = invoke(str(blob_project), str(out), "-j", "1")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        f"blobfs: {out}/ds1/img/photo_a.png: No space left on device; nothing written"]
    assert list(tmp_path.iterdir()) == []
