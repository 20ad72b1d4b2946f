"""unpack's fast paths (blobfs.write.itemcopy) write exactly what the view shows: bytes and
mtimes of blob images read in big spans, of files copied straight from real folders, and of
everything that still goes through the view (img/ files, synthesized annotations)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from click.testing import CliRunner

from blobfs.cli.write import pack_cmd, unpack_cmd
from blobfs.model.opening import open_project
from blobfs.write.itemcopy import READ


def unpack(*args: object, code: int = 0) -> str:
    res = CliRunner().invoke(unpack_cmd, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


def assert_equals_view(src: Path, out: Path, **kw: bool) -> int:
    """Every file the view lists is in ``out`` with the view's bytes and mtime, and nothing
    else; returns the file count."""
    with open_project(src, **kw) as p:
        view = p.view
        listed = {f"{d}/{f}" if d else f for d, _dirs, files in view.walk() for f in files}
        written = {q.relative_to(out).as_posix() for q in out.rglob("*") if q.is_file()}
        assert written == listed
        for rel in listed:
            assert (out / rel).read_bytes() == view.read_all("/" + rel), rel
            assert os.stat(out / rel).st_mtime_ns == view.getattr("/" + rel).mtime_ns, rel
    return len(listed)


def test_bare_tar_across_chunks_and_workers_with_an_item_larger_than_a_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4200):  # > 4 chunks of 1000: the forked workers run
        (src / f"{i:05d}.png").write_bytes(os.urandom(1 + i % 700))
    (src / "big.png").write_bytes(os.urandom(3 * READ + 123))  # read and written in pieces
    (src / "empty.png").write_bytes(b"")
    tar = tmp_path / "x.tar"
    assert CliRunner().invoke(pack_cmd, [str(src), "-o", str(tar)]).exit_code == 0
    out = tmp_path / "out"
    unpack(tar, out)
    assert assert_equals_view(tar, out) == 4202 + 1  # + meta.json
    imgs = {q.name: q.read_bytes() for q in out.rglob("*.png")}
    assert imgs == {q.name: q.read_bytes() for q in src.iterdir()}


def test_real_folders_symlinks_and_img_files(blob_project: Path, tmp_path: Path) -> None:
    """A project with a nested real folder, a symlink inside the project (followed, like the
    view does), one outside (hidden) and files in img/ next to blob items."""
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    os.chmod(proj / "ds1" / "ann", 0o755)
    extra = proj / "ds1" / "extra" / "deep"
    extra.mkdir(parents=True)
    (extra / "notes.txt").write_bytes(b"n" * 5000)
    os.utime(extra / "notes.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (proj / "ds1" / "extra" / "link.txt").symlink_to(extra / "notes.txt")
    (tmp_path / "outside.txt").write_bytes(b"secret")
    (proj / "ds1" / "extra" / "out.txt").symlink_to(tmp_path / "outside.txt")
    out = tmp_path / "out"
    # The link leading out is hidden, so not written: a problem of the source, said (exit 1).
    output = unpack(proj, out, code=1)
    assert f"{proj}/ds1/extra/out.txt: symlink leads outside the project" in output
    assert assert_equals_view(proj, out) > 60
    assert not (out / "ds1" / "extra" / "out.txt").exists()
    assert (out / "ds1" / "extra" / "link.txt").read_bytes() == b"n" * 5000
    assert not (out / "ds1" / "extra" / "link.txt").is_symlink()


def test_synthesized_annotations_go_through_the_view(blob_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    unpack(blob_project, out, "--synthesize-ann")
    assert assert_equals_view(blob_project, out, synthesize_ann=True) > 60


def test_real_folder_only_where_every_listed_file_is_real(blob_project: Path, tmp_path: Path) -> None:
    with open_project(blob_project) as p:
        view = p.view
        assert view.real_folder("/ds1/ann") == blob_project / "ds1" / "ann"
        assert view.real_folder("/ds1") == blob_project / "ds1"
        assert view.real_folder("/") == blob_project
        assert view.real_folder("/ds1/img") is None       # items
    with open_project(blob_project, synthesize_ann=True) as p:
        assert p.view.real_folder("/ds1/ann") is None     # synthesized files among real ones
    tar = blob_project / "blob" / "small_images.tar"
    with open_project(tar) as p:
        assert p.view.real_folder("/") is None            # virtual root with meta.json


def test_item_arrays_match_the_per_item_queries(blob_project: Path) -> None:
    with open_project(blob_project) as p:
        for ds in p.datasets:
            items = ds.items
            names, name_ends, starts, ends, srcs = items.arrays()
            assert len(name_ends) == len(starts) == len(ends) == len(srcs) == len(items)
            lo = 0
            for i, hi in enumerate(name_ends):
                assert names[lo:hi] == items.name_bytes(i)
                assert (starts[i], ends[i]) == items.range(i)
                assert (srcs[i] >= 0) == items.is_blob(i)
                lo = hi
