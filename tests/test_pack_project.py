"""``blobfs pack-project``: classic project → blob project, round-tripped through the model,
``unpack`` and the SDK's rules, on the SDK's fixture and on generated projects."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from blobfs.cli.write import pack_project_cmd, unpack_cmd
from blobfs.format.names import is_image_name
from blobfs.format.offsets_write import dumps_offsets
from blobfs.model.opening import open_project
from offsets_helpers import sdk_entries
from sdk_rules import read_project

BLOBFS = [sys.executable, "-m", "blobfs"]
LONG = "long_" + "y" * 110 + ".png"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root: relative path → bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def dirs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def invoke(cmd, *args) -> object:
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def ann(w: int = 4, h: int = 3) -> bytes:
    return json.dumps({"description": "", "size": {"height": h, "width": w}, "tags": [],
                       "objects": [], "customBigData": {}}, indent=4).encode()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def make_classic(root: Path) -> dict[str, bytes]:
    """A classic project: nested dataset, unicode and long names, side files, sizes 0..200 KB."""
    files: dict[str, bytes] = {"meta.json": b'{"classes": [], "tags": [], "projectSettings": {}}',
                               "key_id_map.json": b"{}"}
    layout = {
        "train": ["a.png", "b.jpg", "café 图.png", LONG, "huge.png", "tiny.png"],
        "train/datasets/nested": ["n1.png", "n2.jpeg"],
        "val": ["v.png"],
    }
    sizes = {"huge.png": 200_000, "tiny.png": 10}
    for ds, names in layout.items():
        for i, name in enumerate(names):
            files[f"{ds}/img/{name}"] = os.urandom(sizes.get(name, 3000 + 500 * i))
            files[f"{ds}/ann/{name}.json"] = ann(i + 1, 2)
    files["train/img_info/a.png.json"] = b'{"id": 1}'
    files["train/meta/b.jpg.json"] = b'{"k": "v"}'
    files["train/img/notes.txt"] = b"not an image: stays a plain file"
    files["val/README"] = b"other file"
    write_tree(root, files)
    (root / "val" / "empty_folder").mkdir()
    return files


def visible(files: dict[str, bytes]) -> dict[str, bytes]:
    """What a classic view shows: not the non-image files inside img/ (the SDK ignores them;
    pack-project keeps them on disk all the same)."""
    return {k: v for k, v in files.items()
            if k.rpartition("/")[0].rpartition("/")[2] != "img" or is_image_name(k)}


def assert_sdk_offsets(out: Path) -> None:
    """Every offsets file is what save_blob_offsets_pkl writes for its tar (FORMAT.md §6)."""
    for pkl in out.rglob("*_offsets.pkl"):
        tar = out / "blob" / (pkl.name[: -len("_offsets.pkl")] + ".tar")
        assert pkl.read_bytes() == dumps_offsets(sdk_entries(tar))


def test_fixture_round_trip(classic_project: Path, tmp_path: Path) -> None:
    out, back = tmp_path / "blobproj", tmp_path / "back"
    res = invoke(pack_project_cmd, classic_project, out)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "blob").iterdir()) == ["ds1.tar", "ds2.tar"]
    assert (out / "ds1" / "ds1_offsets.pkl").is_file() and not (out / "ds1" / "img").exists()
    assert_sdk_offsets(out)
    original = tree(classic_project)
    # Annotations and side files are copied byte for byte.
    for rel in original:
        if "/img/" not in rel:
            assert (out / rel).read_bytes() == original[rel]
    # The model's view of the blob project is the original classic project.
    with open_project(out) as p:
        assert not p.problems
        assert sorted(p.files()) == sorted(original)
        for rel, data in original.items():
            assert p.read(rel) == data
    # The SDK's rules see the same datasets and items, blob bytes included.
    sdk_in, sdk_out = read_project(classic_project), read_project(out)
    assert sdk_out.counts() == sdk_in.counts() and not sdk_out.warnings
    for ds in sdk_out.datasets:
        for name, (tar, start, end) in ds.blob_items.items():
            with open(out / tar, "rb") as f:
                f.seek(start)
                assert f.read(end - start) == original[f"{ds.dir}/img/{name}"]
    # ... and unpack gives back the original, file for file.
    assert invoke(unpack_cmd, out, back).exit_code == 0
    assert tree(back) == original


def test_size_options_that_cannot_give_a_useful_result_are_usage_errors(tmp_path: Path) -> None:
    # --max-blob-size 0 (often "no limit" elsewhere) made one tar per image; --min-size above
    # --max-size packed nothing: both exited 0.
    src = tmp_path / "classic"
    make_classic(src)
    for args, hint in ((("--max-blob-size", "0"), "--max-blob-size"),
                       (("--max-blob-size", "10239"), "--max-blob-size"),
                       (("--min-size", "10M", "--max-size", "1K"), "--min-size")):
        res = invoke(pack_project_cmd, src, tmp_path / "out", *args)
        assert res.exit_code == 2 and hint in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "out").exists()
    res = invoke(pack_project_cmd, src, tmp_path / "out", "--max-blob-size", "10K",
                 "--min-size", "1K", "--max-size", "1K")  # the edges themselves are fine
    assert res.exit_code == 0, res.output


def test_generated_round_trip_sizes_and_split(tmp_path: Path) -> None:
    src, out, back = tmp_path / "classic", tmp_path / "blobproj", tmp_path / "back"
    files = make_classic(src)
    res = invoke(pack_project_cmd, src, out, "--min-size", "100", "--max-size", "100K",
                 "--max-blob-size", "10K")
    assert res.exit_code == 0, res.output
    # Outside the size range: ordinary img/ files. Non-images in img/ stay too.
    for rel in ("train/img/huge.png", "train/img/tiny.png", "train/img/notes.txt"):
        assert (out / rel).read_bytes() == files[rel]
    assert not (out / "train/img/a.png").exists()
    tars = sorted(p.name for p in (out / "blob").iterdir())
    assert tars == ["train-000.tar", "train-001.tar", "train-002.tar", "train__nested.tar", "val.tar"]
    for t in tars:
        assert os.path.getsize(out / "blob" / t) <= 10 * 1024
        with tarfile.open(out / "blob" / t) as tf:
            assert all(m.isfile() and "/" not in m.name for m in tf.getmembers())
    assert (out / "train/datasets/nested/train__nested_offsets.pkl").is_file()
    assert_sdk_offsets(out)
    assert read_project(out).counts() == read_project(src).counts()
    assert invoke(unpack_cmd, out, back).exit_code == 0
    assert tree(back) == visible(files)
    assert "val/empty_folder" in dirs(back)


def test_long_and_unicode_names_in_one_tar(tmp_path: Path) -> None:
    src, out = tmp_path / "classic", tmp_path / "blobproj"
    files = make_classic(src)
    assert invoke(pack_project_cmd, src, out).exit_code == 0
    with tarfile.open(out / "blob" / "train.tar") as tf:
        names = tf.getnames()
        assert LONG in names and "café 图.png" in names
        assert tf.extractfile(LONG).read() == files[f"train/img/{LONG}"]
    listed = subprocess.run(["tar", "tf", str(out / "blob" / "train.tar")], capture_output=True,
                            text=True, check=True)
    assert listed.stdout.splitlines() == names
    with open_project(out) as p:
        assert {path: p.read(path) for path in p.files()} == visible(files)


def test_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "classic"
    make_classic(src)
    assert invoke(pack_project_cmd, src, tmp_path / "one").exit_code == 0
    assert invoke(pack_project_cmd, src, tmp_path / "two").exit_code == 0
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert invoke(pack_project_cmd, src, tmp_path / "three", "--jobs", "1").exit_code == 0
    assert tree(tmp_path / "three") == tree(tmp_path / "one")


def test_refuses_existing_output_unless_force(tmp_path: Path) -> None:
    src, out = tmp_path / "classic", tmp_path / "out"
    make_classic(src)
    out.mkdir()
    (out / "keep.txt").write_bytes(b"mine")
    res = invoke(pack_project_cmd, src, out)
    assert res.exit_code == 2 and str(out) in res.output and "--force" in res.output
    assert tree(out) == {"keep.txt": b"mine"}
    assert invoke(pack_project_cmd, src, out, "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "blob" / "train.tar").is_file()
    # An existing empty folder is not clobbered by filling it.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke(pack_project_cmd, src, empty).exit_code == 0
    assert (empty / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".blobfs-" in p.name]


def test_refuses_non_classic_input(blob_project: Path, tmp_path: Path) -> None:
    res = invoke(pack_project_cmd, blob_project, tmp_path / "o")
    assert res.exit_code == 2 and "blob/" in res.output
    (tmp_path / "nometa").mkdir()
    res = invoke(pack_project_cmd, tmp_path / "nometa", tmp_path / "o")
    assert res.exit_code == 2 and "meta.json" in res.output
    assert not (tmp_path / "o").exists()


def test_missing_input_says_it_is_missing(tmp_path: Path) -> None:
    """A CLASSIC_DIR that does not exist is not "not a folder" (what a file was told)."""
    res = invoke(pack_project_cmd, tmp_path / "nope", tmp_path / "o")
    assert res.exit_code == 2
    assert res.output.splitlines() == [f"blobfs: {tmp_path / 'nope'}: No such file or directory"]
    assert not (tmp_path / "o").exists()


def test_subprocess(classic_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    proc = subprocess.run([*BLOBFS, "pack-project", str(classic_project), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 datasets" in proc.stderr
    with open_project(out) as p:
        assert sorted(p.files()) == sorted(tree(classic_project))


def test_sub_folder_of_img_is_copied_with_a_warning(classic_project: Path, tmp_path: Path) -> None:
    """Files in img/sub/ are no items (the SDK reads only the files of img/): they are not
    packed, but copied as they are, and a warning says so (it said nothing)."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(classic_project, src)
    sub = src / "ds1" / "img" / "sub"
    sub.mkdir()
    (sub / "deep.png").write_bytes((src / "ds1" / "img" / "img_000.png").read_bytes())
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "pack-project", str(src), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and f"{sub}: sub-folder of img/" in warnings[0], proc.stderr
    assert (out / "ds1" / "img" / "sub" / "deep.png").read_bytes() == (sub / "deep.png").read_bytes()
    with open_project(out) as p:
        assert p.datasets[0].items.find("deep.png") < 0


def test_left_in_img_counts_only_items_left_in_a_datasets_img(classic_project: Path,
                                                               tmp_path: Path) -> None:
    """The summary's "left in img/" count is of items that stay ordinary img/ files. An image
    in a sub-folder of img/ that happens to be called img/ is copied but is no item: it was
    counted as one, because the count looked only at the name of the file's folder."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(classic_project, src)
    png = (src / "ds1" / "img" / "img_000.png").read_bytes()
    biggest = max(f.stat().st_size for f in src.glob("*/img/*"))
    (src / "ds1" / "img" / "img").mkdir()
    (src / "ds1" / "img" / "img" / "deep.png").write_bytes(png)
    (src / "ds1" / "img" / "big.png").write_bytes(png + bytes(biggest))  # over --max-size: left
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "pack-project", "--max-size", str(biggest), str(src),
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ", 1 left in img/," in proc.stderr.splitlines()[-1], proc.stderr
    assert (out / "ds1" / "img" / "img" / "deep.png").read_bytes() == png
    assert (out / "ds1" / "img" / "big.png").is_file()


def test_summaries_count_one_in_the_singular(tmp_path: Path) -> None:
    """"1 datasets, 1 images in 1 tars": each count of one is now said in the singular, in
    the summaries of pack-project and pack (unpack's always counts meta.json too)."""
    src = tmp_path / "src"
    (src / "ds" / "img").mkdir(parents=True)
    (src / "meta.json").write_text(json.dumps({"classes": [], "tags": []}))
    (src / "ds" / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "pack-project", str(src), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ": 1 dataset, 1 image in 1 tar, 0 left in img/, 1 other file copied (" in proc.stderr
    proc = subprocess.run([*BLOBFS, "pack", str(src / "ds" / "img"), "-o", str(tmp_path / "one.tar")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "one.tar: 1 image, " in proc.stderr, proc.stderr


def test_own_mtimes_out_of_range_warn_once_and_mtime_range(tmp_path: Path) -> None:
    """Images from 1900 in two datasets: one warning for the project, with the count; an
    --mtime no tar header holds is a usage error, as for pack."""
    src = tmp_path / "src"
    make_classic(src)
    for rel in ("train/img/a.png", "val/img/v.png", "train/img/huge.png"):
        os.utime(src / rel, (-2_208_988_800, -2_208_988_800))
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "pack-project", str(src), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and f"{src}: 3 file(s) with an mtime before 1970" in warnings[0]
    with tarfile.open(out / "blob" / "train.tar") as tar:
        assert tar.getmember("a.png").mtime == 0 and tar.getmember("b.jpg").mtime > 0

    bad = subprocess.run([*BLOBFS, "pack-project", str(src), str(tmp_path / "o2"), "--mtime",
                          "-5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Invalid value for '--mtime': '-5' is out of range" in bad.stderr
    assert not (tmp_path / "o2").exists()


def test_links_leading_to_each_other_are_not_copied(tmp_path: Path) -> None:
    """Image links ``q.png -> r.png -> q.png`` in img/ and folder links beside the datasets:
    ELOOP ended pack-project with a traceback; they are left out with a warning each, like
    any other entry that is no regular file or folder, and the rest is packed."""
    src = tmp_path / "src"
    files = make_classic(src)
    (src / "train/img/q.png").symlink_to("r.png")
    (src / "train/img/r.png").symlink_to("q.png")
    (src / "dx").symlink_to("dy")
    (src / "dy").symlink_to("dx")
    out = tmp_path / "out"
    proc = subprocess.run([*BLOBFS, "pack-project", str(src), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    for rel in ("train/img/q.png", "train/img/r.png", "dx", "dy"):
        assert f"{src / rel}: not a regular file or folder; not copied" in proc.stderr, rel
    want = visible(files)
    with open_project(out) as p:
        assert sorted(p.files()) == sorted(want)
        assert all(p.read(rel) == data for rel, data in want.items())


@pytest.mark.parametrize("fails", ["blob", "val/ann", "meta.json", "only_img"])
def test_full_disk_names_the_final_path_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fails: str) -> None:
    """ENOSPC creating blob/ was a traceback; a folder or file copied into the hidden
    temporary was named by its temporary path (gone once the run ends). Every failure names
    the path under OUT_DIR, as the tar and offsets already did, in one line, exit 1."""
    src, out = tmp_path / "classic", tmp_path / "out"
    make_classic(src)
    (src / "only_img" / "img").mkdir(parents=True)  # a dataset of packed images only
    (src / "only_img" / "img" / "x.png").write_bytes(b"png")
    real_mkdir, real_sendfile = os.mkdir, os.sendfile
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def mkdir(path, *a, **kw):
        if os.fspath(path).endswith(f"/{fails}") and ".blobfs-tmp-" in os.fspath(path):
            raise full
        return real_mkdir(path, *a, **kw)

    def sendfile(out_fd, in_fd, offset, count):
        if os.readlink(f"/proc/self/fd/{out_fd}").endswith(f"/{fails}"):
            raise full
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "sendfile", sendfile)
    res = invoke(pack_project_cmd, src, out, "-j", "1")
    assert res.exit_code == 1
    assert res.output.splitlines() == [f"blobfs: {out / fails}: No space left on device; nothing written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classic"]


def test_split_stems_do_not_take_the_stem_of_an_earlier_dataset(tmp_path: Path) -> None:
    """``a/datasets/b-000`` (tar ``a__b-000``) sorts before ``a__b``, whose split tars would
    be ``a__b-000``, ``a__b-001``: the second dataset gets ``a__b_2-000``, ... instead of
    failing with "a__b-000.tar: File exists"."""
    src = tmp_path / "src"
    files = {"meta.json": b'{"classes": [], "tags": [], "projectSettings": {}}'}
    for rel in ("a__b/img/x1.png", "a__b/img/x2.png", "a/datasets/b-000/img/n.png"):
        files[rel] = os.urandom(8000)
        files[rel.replace("/img/", "/ann/") + ".json"] = ann()
    write_tree(src, files)
    out = tmp_path / "out"
    res = invoke(pack_project_cmd, src, out, "--max-blob-size", "10K")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "blob").iterdir()) == [
        "a__b-000.tar", "a__b_2-000.tar", "a__b_2-001.tar"]
    assert_sdk_offsets(out)
    back = tmp_path / "back"
    assert invoke(unpack_cmd, out, back).exit_code == 0
    assert tree(back) == files


def test_refuses_an_offsets_file_in_a_dataset(classic_project: Path, tmp_path: Path) -> None:
    """A stray ``ds1_offsets.pkl`` in a classic project's dataset: copied, it would name the
    tar pack-project writes for ds1 (it failed with "File exists", exit 1), and one of
    another stem would give the dataset the items of that other tar."""
    src = tmp_path / "src"
    subprocess.run(["cp", "-r", str(classic_project), str(src)], check=True)
    stray = src / "ds1" / "ds1_offsets.pkl"
    stray.write_bytes(dumps_offsets([]))
    out = tmp_path / "out"
    res = invoke(pack_project_cmd, src, out)
    assert res.exit_code == 2
    assert res.output.splitlines() == [
        f"blobfs: {stray}: an offsets file in a classic project (pack-project writes them; "
        "remove it or unpack the blob project first)"]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".blobfs-" in p.name]


def test_dataset_names_too_long_for_a_tar_name(tmp_path: Path) -> None:
    """A legal dataset folder name of 250 bytes, or a nested dataset whose "A__B" is longer
    than a file name, failed with "…_offsets.pkl: File name too long" (exit 1): the stem
    keeps its first bytes and a digest, and the SDK pairs the tar and offsets file by it."""
    src = tmp_path / "src"
    long_ds, parent, child = "d" * 250, "é" * 70, "c" * 130  # the parent: 140 bytes of UTF-8
    files = {"meta.json": b'{"classes": [], "tags": [], "projectSettings": {}}'}
    for ds, n in ((long_ds, 3), (f"{parent}/datasets/{child}", 1)):
        for i in range(n):
            files[f"{ds}/img/x{i}.png"] = os.urandom(6000)
            files[f"{ds}/ann/x{i}.png.json"] = ann()
    write_tree(src, files)
    out = tmp_path / "out"
    res = invoke(pack_project_cmd, src, out, "--max-blob-size", "10K")
    assert res.exit_code == 0, res.output
    tars = sorted(p.name for p in (out / "blob").iterdir())
    assert len(tars) == 4 and all(len(t.encode()) <= 255 for t in tars)
    assert_sdk_offsets(out)
    with open_project(out) as p:
        assert sorted((ds.name, len(ds.items)) for ds in p.datasets) == [
            (long_ds, 3), (f"{parent}/{child}", 1)] and not p.problems
    back = tmp_path / "back"
    assert invoke(unpack_cmd, out, back).exit_code == 0
    assert tree(back) == files
