"""The project model and its classic view, on the SDK's fixtures and generated projects."""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
import stat
import struct
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

import blobfs
from blobfs.errors import InputError, ProjectError
from blobfs.format.offsets_write import write_offsets
from blobfs.model.discovery import dataset_name, find_datasets
from blobfs.model.opening import open_project


def view_files(project) -> dict[str, bytes]:
    return {path: project.read(path) for path in project.files()}


def test_view_equals_expected_mount(blob_project: Path, fixtures_dir: Path) -> None:
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())
    with blobfs.open_project(blob_project) as p:
        files = view_files(p)
        assert sorted(files) == sorted(expected["files"])
        for path, meta in expected["files"].items():
            assert len(files[path]) == meta["size"], path
            assert hashlib.sha256(files[path]).hexdigest() == meta["sha256"], path
        got = [{"name": ds.name, "dir": ds.relpath, "items": len(ds.items),
                "blob_items": sum(ds.items.is_blob(i) for i in range(len(ds.items))),
                "offsets_files": ds.offsets_files} for ds in p.datasets]
        assert got == expected["datasets"]
        assert p.problems == []


def test_view_equals_classic_fixture(blob_project: Path, classic_project: Path) -> None:
    with open_project(blob_project) as p:
        files = view_files(p)
    classic = {str(f.relative_to(classic_project)): f.read_bytes()
               for f in classic_project.rglob("*") if f.is_file()}
    assert files == classic


def test_classic_project_opens_as_itself(classic_project: Path) -> None:
    with open_project(classic_project) as p:
        assert [len(ds.items) for ds in p.datasets] == [62, 12]
        assert all(not ds.items.is_blob(0) for ds in p.datasets)
        assert p.read("ds1/img/photo_a.png") == (classic_project / "ds1/img/photo_a.png").read_bytes()


def test_hidden_and_errno(blob_project: Path) -> None:
    with open_project(blob_project) as p:
        v = p.view
        assert "blob" not in [n for n, _ in v.listdir("")]
        assert not any(n.endswith("_offsets.pkl") for n, _ in v.listdir("ds1"))
        for path, code in [("/blob", errno.ENOENT), ("/ds1/small_images_offsets.pkl", errno.ENOENT),
                           ("/ds1/img/nope.png", errno.ENOENT), ("/meta.json/x", errno.ENOTDIR),
                           ("/ds1/img/" + "a" * 300, errno.ENAMETOOLONG)]:
            with pytest.raises(OSError) as e:
                v.getattr(path)
            assert e.value.errno == code, path
        with pytest.raises(OSError) as e:
            v.read("/ds1/img", 10, 0)
        assert e.value.errno == errno.EISDIR
        a = v.getattr("/ds2/img/scan 00.jpg")
        assert a.mode & 0o222 == 0 and stat.S_ISREG(a.mode)
        assert a.ino == v.getattr("/ds2/img/scan 00.jpg").ino
        assert a.size == len(p.read("ds2/img/scan 00.jpg"))
        assert a.mtime_ns == os.stat(blob_project / "blob/more_images.tar").st_mtime_ns
        inos = {v.getattr("/" + f).ino for f in p.files()}
        assert len(inos) == len(list(p.files()))


def test_readdir_resumes_at_any_offset(blob_project: Path) -> None:
    with open_project(blob_project) as p:
        v = p.view
        for path in ("/ds1/img", "/ds1/ann", "/"):
            full = list(v.readdir(path, 0))
            assert full[0][0] == "." and full[1][0] == ".."
            for cut in range(len(full)):
                # A consumer that stops after `cut` entries resumes from the offset it kept.
                first = full[:cut]
                rest = list(v.readdir(path, first[-1][-1] if first else 0))
                assert [e[0] for e in first + rest] == [e[0] for e in full]


def with_extra_folder(tmp_path: Path, blob_project: Path, n: int) -> Path:
    """A copy of the SDK project whose ``ds1/extra`` holds ``n`` files (passed through)."""
    proj = tmp_path / "p"
    shutil.copytree(blob_project, proj)
    (proj / "ds1/extra").mkdir()
    for i in range(n):
        (proj / "ds1/extra" / f"m{i:05d}.json").write_text("{}")
    return proj


def _list_in_replies(views: Iterator, path: str, size: int,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], int, list[str]]:
    """List ``path`` as the low-level driver answers the kernel: READDIR replies of ``size``
    bytes, each call (answered by the next of ``views``) resuming at the last offset it got.
    Returns the names, the number of replies and every folder ``os.scandir`` opened."""
    from blobfs.fuse.lowlevel import pack_dirents

    scans: list[str] = []
    real_scandir = os.scandir

    def counted(folder: object = ".") -> object:
        scans.append(str(folder))
        return real_scandir(folder)

    monkeypatch.setattr(os, "scandir", counted)
    try:
        got, offset, replies = [], 0, 0
        while (reply := pack_dirents(next(views).readdir(path, offset), size)):
            replies += 1
            pos = 0
            while pos < len(reply):
                _ino, offset, length, _kind = struct.unpack_from("<QQII", reply, pos)
                got.append(reply[pos + 24 : pos + 24 + length].decode())
                pos += (24 + length + 7) & ~7
    finally:
        monkeypatch.undo()
    return got, replies, scans


def test_listing_a_big_real_folder_in_replies_scans_it_once(tmp_path: Path, blob_project: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel lists a folder in READDIR replies, each resuming at the offset of the last
    entry it kept, then asks once more past the end. Each reply resumes the same scan, and
    that last call needs none: a new scan per call is a second pass over the folder (at
    300,000 entries, a listing took three times as long)."""
    proj = with_extra_folder(tmp_path, blob_project, 2000)
    with open_project(proj) as p:
        got, replies, scans = _list_in_replies(itertools.repeat(p.view), "/ds1/extra", 4096, monkeypatch)
    assert got[:2] == [".", ".."] and sorted(got[2:]) == [f"m{i:05d}.json" for i in range(2000)]
    assert replies > 10
    assert scans == [str(proj / "ds1/extra")]


def test_another_process_resumes_a_real_folder_listing_where_it_stopped(tmp_path: Path,
                                                                         blob_project: Path) -> None:
    """Each daemon worker process has its own scans; READDIR calls of one listing go to any of
    them. One that has not scanned the folder resumes from the offset alone, with the same
    entries (hidden ones among them: links out of the project, a FIFO), none twice."""
    proj = tmp_path / "p"
    shutil.copytree(blob_project, proj)
    extra = proj / "ds1/extra"
    extra.mkdir()
    for i in range(500):
        (extra / f"m{i:04d}.json").write_text("{}")
        if i % 50 == 0:
            (extra / f"out{i:04d}").symlink_to("/etc/hostname")
    os.mkfifo(extra / "pipe")
    with open_project(proj) as a:
        whole = list(a.view.readdir("/ds1/extra", 0))
    assert sorted(e[0] for e in whole[2:]) == sorted(f"m{i:04d}.json" for i in range(500))
    for cut in (1, 2, 3, 77, 251, 501):
        with open_project(proj) as a, open_project(proj) as b:
            first = list(itertools.islice(a.view.readdir("/ds1/extra", 0), cut))
            rest = list(b.view.readdir("/ds1/extra", first[-1][3]))
        assert first + rest == whole, cut


def test_replies_alternating_between_processes_scan_once_in_each(tmp_path: Path, blob_project: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The READDIR calls of one listing land on the daemon's worker processes in any order.
    Each keeps its scan and moves it forward to wherever the next call it gets resumes, so a
    listing opens the folder once per process, not once per call that the other answered."""
    proj = with_extra_folder(tmp_path, blob_project, 3000)
    with open_project(proj) as a, open_project(proj) as b:
        views = itertools.cycle([a.view, a.view, b.view, a.view, b.view, b.view, b.view])
        got, replies, scans = _list_in_replies(views, "/ds1/extra", 2048, monkeypatch)
    assert replies > 50
    assert sorted(got[2:]) == [f"m{i:05d}.json" for i in range(3000)] and len(got) == 3002
    assert scans == [str(proj / "ds1/extra")] * 2


def test_file_object_api(blob_project: Path) -> None:
    with open_project(blob_project) as p:
        want = p.read("ds1/img/img_040.png")
        with p.open("ds1/img/img_040.png") as f:
            assert f.read(10) == want[:10]
            f.seek(-5, os.SEEK_END)
            assert f.read() == want[-5:]
            f.seek(0)
            assert f.read() == want
        paths = [x for x in p.files() if "/img/" in x]
        results: dict[str, bytes] = {}

        def worker(chunk: list[str]) -> None:
            for x in chunk:
                results[x] = p.read(x)

        threads = [threading.Thread(target=worker, args=(paths[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == dict(p.iter_bytes())


def test_dataset_folder_and_bare_tar_sources(blob_project: Path, tmp_path: Path) -> None:
    with open_project(blob_project / "ds2") as p:
        assert [n for n, _ in p.view.listdir("")] == ["ds2", "meta.json"]
        assert p.read("meta.json") == (blob_project / "meta.json").read_bytes()
        assert len(p.datasets[0].items) == 12
    tar = blob_project / "blob/more_images.tar"
    pkl = blob_project / "ds2/more_images_offsets.pkl"
    with open_project(tar, offsets=pkl, ann=blob_project / "ds2/ann") as p:
        assert p.read("more_images/ann/scan 00.jpg.json") == (blob_project / "ds2/ann/scan 00.jpg.json").read_bytes()
        assert p.read("meta.json") == (blob_project / "meta.json").read_bytes()
        via_tar = dict(p.iter_bytes())
    # Without an offsets file the tar's own headers give the same items.
    bare = tmp_path / "more_images.tar"
    shutil.copy(tar, bare)
    with open_project(bare) as p:
        assert {k.split("/")[-1]: v for k, v in p.iter_bytes()} == {k.split("/")[-1]: v for k, v in via_tar.items()}
        assert json.loads(p.read("meta.json"))["classes"] == []


def _make_project(root: Path, layout: dict[str, dict[str, bytes]]) -> None:
    """layout: dataset relpath -> {name: bytes}; one tar per dataset, empty annotations."""
    (root / "blob").mkdir(parents=True)
    (root / "meta.json").write_text('{"classes": [], "tags": []}')
    for rel, files in layout.items():
        stem = rel.replace("/", "_")
        src = root.parent / f"src_{stem}"
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
        tar_path = root / "blob" / f"{stem}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(files):
                tf.add(src / name, arcname=name)
        with tarfile.open(tar_path) as tf:
            entries = [(Path(m.name).name, m.offset_data, m.offset_data + m.size)
                       for m in tf if m.isreg()]
        ds = root / rel
        (ds / "ann").mkdir(parents=True)
        for name in files:
            (ds / "ann" / f"{name}.json").write_text("{}")
        write_offsets(ds / f"{stem}_offsets.pkl", entries)


def test_nested_datasets_and_discovery_quirks(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _make_project(root, {"A": {"a.png": b"A" * 10}, "A/datasets/B": {"b.png": b"B" * 20},
                         "train_img": {"t.png": b"T"}})
    found = find_datasets(root)
    # A folder whose path ends with "img" is not a dataset for the SDK (FORMAT.md §1 quirk).
    assert [(f.name, f.relpath) for f in found] == [("A", "A"), ("A/B", "A/datasets/B")]
    assert dataset_name("x/datasets/y/datasets/z") == "x/y/z"
    with open_project(root) as p:
        assert p.read("A/datasets/B/img/b.png") == b"B" * 20
        assert p.read("A/img/a.png") == b"A" * 10
        assert [n for n, _ in p.view.listdir("A")] == ["ann", "datasets", "img"]


def test_duplicates_last_wins_and_img_dir_shadows(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _make_project(root, {"ds": {"a.png": b"first", "b.png": b"bee"}})
    ds = root / "ds"
    tar = root / "blob/ds.tar"
    with tarfile.open(tar) as tf:
        m = {x.name: x for x in tf}
    # Same name twice in one file: the later entry (pointing at b.png's bytes) wins.
    write_offsets(ds / "ds_offsets.pkl", [
        ("a.png", m["a.png"].offset_data, m["a.png"].offset_data + 5),
        ("a.png", m["b.png"].offset_data, m["b.png"].offset_data + 3),
    ])
    (ds / "img").mkdir()
    (ds / "img" / "c.png").write_bytes(b"disk")
    with open_project(root) as p:
        assert p.read("ds/img/a.png") == b"bee"
        assert sorted(n for n, _ in p.view.listdir("ds/img")) == ["a.png", "c.png"]
        assert any("duplicate item 'a.png'" in x for x in p.problems)
    # An img/ file shadows a blob entry of the same name.
    (ds / "img" / "a.png").write_bytes(b"on disk")
    with open_project(root) as p:
        assert p.read("ds/img/a.png") == b"on disk"
        names = [n for n, _ in p.view.listdir("ds/img")]
        assert names.count("a.png") == 1


def test_symlinks_outside_project_are_hidden(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _make_project(root, {"ds": {"a.png": b"x"}})
    secret = tmp_path / "secret.json"
    secret.write_text("secret")
    os.symlink(secret, root / "ds/ann/leak.json")
    os.symlink(root / "ds/ann/a.png.json", root / "ds/ann/inside.json")
    os.mkfifo(root / "ds/ann/fifo.json")
    with open_project(root) as p:
        names = [n for n, _ in p.view.listdir("ds/ann")]
        assert "leak.json" not in names and "fifo.json" not in names
        assert "inside.json" in names
        for name in names:
            p.view.getattr(f"ds/ann/{name}")  # every listed name can be stat'ed
        with pytest.raises(OSError):
            p.read("ds/ann/leak.json")
        with pytest.raises(OSError):
            p.read("ds/ann/fifo.json")


def test_fatal_inputs(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no such file"):
        open_project(tmp_path / "missing")
    root = tmp_path / "proj"
    _make_project(root, {"ds": {"a.png": b"x"}})
    (root / "blob/ds.tar").rename(root / "blob/gone.tar")
    with pytest.raises(InputError, match="ds.tar: tar not found"):
        open_project(root)
    with open_project(root, lenient=True) as p:
        assert any("tar not found" in x for x in p.problems)
    import gzip
    (root / "blob/ds.tar").write_bytes(gzip.compress(b"x" * 100))
    with pytest.raises(InputError, match="gzip-compressed"):
        open_project(root)


def test_a_refused_tar_is_one_problem_however_many_datasets_lead_to_it(tmp_path: Path, blob_project: Path) -> None:
    """ds1 and ds2 both holding ``small_images_offsets.pkl``: a compressed (or missing)
    ``small_images.tar`` was opened, refused and reported once per dataset."""
    root = tmp_path / "proj"
    shutil.copytree(blob_project, root)
    shutil.copy(root / "ds1/small_images_offsets.pkl", root / "ds2/small_images_offsets.pkl")
    import gzip
    (root / "blob/small_images.tar").write_bytes(gzip.compress(b"x" * 100))
    with open_project(root, lenient=True) as p:
        assert [x for x in p.problems if "small_images.tar" in x] == \
            [f"{root / 'blob/small_images.tar'}: gzip-compressed; only plain uncompressed tars are supported"]
        assert {ds.name for ds in p.datasets} == {"ds1", "ds2"}
    (root / "blob/small_images.tar").unlink()
    with open_project(root, lenient=True) as p:
        assert [x for x in p.problems if "small_images.tar" in x] == [f"{root / 'blob/small_images.tar'}: tar not found"]


def test_index_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blobfs.model import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_ENTRIES", 0)
    root = tmp_path / "proj"
    _make_project(root, {"ds": {f"{i}.png": bytes([i]) * (i + 1) for i in range(30)}})
    with open_project(root) as p:
        first = dict(p.iter_bytes())
    files = list((tmp_path / "cache" / "blobfs").glob("*.idx"))
    assert len(files) == 1
    with open_project(root) as p:  # served from the cache file
        assert dict(p.iter_bytes()) == first
        assert p.datasets[0].items.find("7.png") >= 0 and p.datasets[0].items.find("x") == -1
    # A rewritten offsets file is a new key: the cache never serves stale ranges.
    tar = root / "blob/ds.tar"
    with tarfile.open(tar) as tf:
        m = next(x for x in tf if x.name == "3.png")
    write_offsets(root / "ds/ds_offsets.pkl", [("only.png", m.offset_data, m.offset_data + m.size)])
    with open_project(root) as p:
        assert dict(p.iter_bytes()) == {"ds/img/only.png": bytes([3]) * 4}
    # A cache file that was tampered with to widen a range is ignored.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    with open_project(root):
        pass
    (idx,) = (tmp_path / "cache2" / "blobfs").glob("*.idx")
    raw = bytearray(idx.read_bytes())
    head_end = raw.index(b"\n", len(b"blobfs-index\n")) + 1
    n_names = len("only.png")
    ends_at = head_end + n_names + 8 + 8  # names, name_ends[0], starts[0]
    raw[ends_at:ends_at + 8] = (10**12).to_bytes(8, "little")
    idx.write_bytes(bytes(raw))
    with open_project(root) as p:
        assert dict(p.iter_bytes()) == {"ds/img/only.png": bytes([3]) * 4}



def test_index_cache_problems_name_the_offsets_file_as_opened_now(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached problem line named the offsets file by the path of the run that wrote the
    cache: opened from another folder (or through a link) it named a path that was not
    there. A problem of another offsets file (its tar missing) was cached too, and said twice."""
    from blobfs.model import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_ENTRIES", 0)
    root = tmp_path / "proj"
    _make_project(root, {"ds": {f"{i}.png": bytes([i]) * (i + 1) for i in range(30)}})
    pkl = root / "ds/ds_offsets.pkl"
    with tarfile.open(root / "blob/ds.tar") as tf:
        entries = [(Path(m.name).name, m.offset_data, m.offset_data + m.size) for m in tf if m.isreg()]
    write_offsets(pkl, [*entries, ("far.png", 10**9, 10**9 + 1)])
    write_offsets(root / "ds/gone_offsets.pkl", entries[:1])  # blob/gone.tar does not exist
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    for path in (Path("proj"), root, Path("other/../proj")):
        with open_project(path, lenient=True) as p:  # as info and verify open it
            got = sorted(p.problems)
        opened = path / "ds/ds_offsets.pkl"
        assert got == sorted([f"{path / 'blob/gone.tar'}: tar not found",
                              f"{opened}: entry #30 'far.png': offset_end 1000000001 is past "
                              "the end of the tar (" + str((root / "blob/ds.tar").stat().st_size)
                              + " bytes) (skipped)"]), path
    # One cache file, written by the first open: the later ones were served from it.
    assert len(list((tmp_path / "cache" / "blobfs").glob("*.idx"))) == 1

def test_ann_path_follows_symlinks_only_inside_the_project(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    _make_project(root, {"ds": {"a.png": b"x", "b.png": b"y"}})
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": 1}')
    (root / "ds/ann/a.png.json").unlink()
    os.symlink(outside, root / "ds/ann/a.png.json")
    (root / "ds/ann/b.png.json").rename(root / "ds/real_b.json")
    os.symlink(root / "ds/real_b.json", root / "ds/ann/b.png.json")
    with open_project(root) as p:
        ds = p.datasets[0]
        assert ds.ann_path("a.png") is None
        assert ds.ann_path("b.png") == root / "ds/ann/b.png.json"
