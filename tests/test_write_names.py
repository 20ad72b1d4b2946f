"""Names blobfs writes (``pack``, ``pack-project``, ``index``): C1 control characters are
refused as C0 ones are; two names that are one after Unicode normalization (NFC) are both
kept, with one warning line naming both (a macOS file system holds only one of them)."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path

import pytest

from blobfs.format.names import name_problem, new_name_problem, nfc_twins
from blobfs.format.offsets_read import read_offsets
from blobfs.model.opening import open_project
from tar_helpers import members_tar

BLOBFS = [sys.executable, "-m", "blobfs"]
NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")
KELVIN = "\u212a.png"  # NFC turns the Kelvin sign into the letter K
CSI = "csi\u009b31m.png"  # U+009B: a terminal's CSI, as ESC [ is
NFC_SHOWN, NFD_SHOWN = "'café.png'", "'cafe\\u0301.png'"


def twins_line(first: str, second: str) -> str:
    """The warning's text for a pair, in the order met (a folder's: code point order, NFD first)."""
    return (f"items {first} and {second} are one name after Unicode normalization (NFC): both "
            "are kept, but a macOS file system cannot hold both after unpack")


def left_line(count: int, first: str, why: str) -> str:
    """pack-project's warning for the images of a dataset whose name cannot be an item."""
    return (f"{count} image(s) left as ordinary img/ files, not packed: a name that cannot be "
            f"an item name, first {first!r} ({why})")


def blobfs(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*BLOBFS, *map(str, args)], capture_output=True, text=True, timeout=120)


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "WARNING" in line]


def write_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(b"img" * (i + 1))


# -- the rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x80", "\x85", "\x9b", "\x9f"])
def test_c1_controls_are_refused_for_names_blobfs_writes_only(char: str) -> None:
    name = f"a{char}b.png"
    assert new_name_problem(name) == f"name {name!r} contains {char!r}"
    assert name_problem(name) is None  # a project that has one still serves it (the SDK does)
    assert new_name_problem("a\xa0b.png") is None and new_name_problem("é.png") is None  # not C1
    assert new_name_problem("a\x1bb.png") == name_problem("a\x1bb.png")


def test_nfc_twins() -> None:
    assert nfc_twins(["a.png", "b.png", "A.png"]) == []
    assert nfc_twins([NFC, "x.png", NFD]) == [(NFC, NFD)]
    assert nfc_twins([NFC, NFC]) == []  # the same name twice is a duplicate, not a twin
    assert nfc_twins(["K.png", KELVIN, "k.png"]) == [("K.png", KELVIN)]
    assert nfc_twins([KELVIN]) == []


# -- pack -----------------------------------------------------------------------------------

def test_pack_refuses_a_c1_name(tmp_path: Path) -> None:
    src = tmp_path / "images"
    write_files(src, ["a.png", CSI])
    res = blobfs("pack", src, "-o", tmp_path / "o.tar")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"blobfs: {src / 'csi'}\\x9b31m.png: cannot be an item: "
                                  f"name 'csi\\x9b31m.png' contains '\\x9b'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_pack_warns_once_about_nfc_twins_and_keeps_both(tmp_path: Path) -> None:
    src = tmp_path / "images"
    write_files(src, [NFC, NFD, "K.png", KELVIN, "plain.png"])
    out = tmp_path / "o.tar"
    res = blobfs("pack", src, "-o", out)
    assert res.returncode == 0, res.stderr
    assert warnings(res.stderr) == [
        f"blobfs: WARNING: {src}: {twins_line(NFD_SHOWN, NFC_SHOWN)}; 1 more such pair(s)"]
    with open_project(out) as p:
        items = p.datasets[0].items
        assert len(items) == 5
        assert all(items.find(n) >= 0 for n in [NFC, NFD, "K.png", KELVIN, "plain.png"])


def test_pack_of_ascii_names_says_nothing(tmp_path: Path) -> None:
    src = tmp_path / "images"
    write_files(src, ["a.png", "A.png", "b c.png"])
    res = blobfs("pack", src, "-o", tmp_path / "o.tar")
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr


# -- pack-project ---------------------------------------------------------------------------

def classic_skeleton(src: Path, datasets: list[str]) -> None:
    """``meta.json`` and an empty ``ann/`` per dataset: with images written, a classic project."""
    (src / "meta.json").write_text('{"classes": [], "tags": [], "projectSettings": {}}')
    for ds in datasets:
        (src / ds / "ann").mkdir()


def test_pack_project_c1_and_twins(tmp_path: Path) -> None:
    """A C1 name is not packed (it stays an ordinary img/ file, as a C0 name does); NFC twins
    in two datasets: one warning for the project, both kept."""
    src = tmp_path / "src"
    write_files(src / "ds1" / "img", ["a.png", NFC, NFD, CSI])
    write_files(src / "ds2" / "img", [NFD, NFC])
    classic_skeleton(src, ["ds1", "ds2"])
    out = tmp_path / "out"
    res = blobfs("pack-project", src, out)
    assert res.returncode == 0, res.stderr
    assert warnings(res.stderr) == [
        f"blobfs: WARNING: {src / 'ds1' / 'img'}: "
        + left_line(1, CSI, "contains '\\x9b'"),
        f"blobfs: WARNING: {src / 'ds1' / 'img'}: {twins_line(NFD_SHOWN, NFC_SHOWN)}; "
        "1 more such pair(s)"]
    with tarfile.open(out / "blob" / "ds1.tar") as tar:
        assert sorted(tar.getnames()) == sorted(["a.png", NFC, NFD])
    assert (out / "ds1" / "img" / CSI).read_bytes() == (src / "ds1" / "img" / CSI).read_bytes()
    with tarfile.open(out / "blob" / "ds2.tar") as tar:
        assert sorted(tar.getnames()) == sorted([NFC, NFD])


def test_pack_project_says_which_names_stay_img_files(tmp_path: Path) -> None:
    """Images whose name cannot be an item (control characters, too long) stay ordinary img/
    files, copied: one warning line per dataset with the count and the first name, escaped
    (it said nothing); the exit code stays 0."""
    src = tmp_path / "src"
    long_name = "x" * 247 + ".png"  # 251 bytes: NAME_MAX holds it, "<name>.json" not
    write_files(src / "ds1" / "img", ["a.png", "b\tc.png", "\x1b[31mred.png", "z\x7f.png"])
    write_files(src / "ds2" / "img", ["ok.png", long_name])
    write_files(src / "ds3" / "img", ["fine.png"])
    classic_skeleton(src, ["ds1", "ds2", "ds3"])
    out = tmp_path / "out"
    res = blobfs("pack-project", src, out)
    assert res.returncode == 0, res.stderr
    assert warnings(res.stderr) == [
        f"blobfs: WARNING: {src / 'ds1' / 'img'}: "
        + left_line(3, "\x1b[31mred.png", "contains '\\x1b'"),
        f"blobfs: WARNING: {src / 'ds2' / 'img'}: "
        + left_line(1, long_name, "name of 251 bytes is too long (at most 250)")]
    assert "\x1b" not in res.stderr and "\t" not in res.stderr  # escaped: one line, no colour
    assert "3 images in 3 tars, 4 left in img/" in res.stderr
    for ds, name in (("ds1", "b\tc.png"), ("ds1", "\x1b[31mred.png"), ("ds1", "z\x7f.png"),
                     ("ds2", long_name)):
        assert (out / ds / "img" / name).read_bytes() == (src / ds / "img" / name).read_bytes()
    with tarfile.open(out / "blob" / "ds1.tar") as tar:
        assert tar.getnames() == ["a.png"]


# -- index ----------------------------------------------------------------------------------

def test_index_leaves_out_a_c1_name(tmp_path: Path) -> None:
    tar = members_tar(tmp_path / "w.tar", [(n, b"abc") for n in ["a.png", CSI, "b.png"]],
                      tarfile.PAX_FORMAT)
    res = blobfs("index", tar)
    assert res.returncode == 1, res.stderr
    assert warnings(res.stderr) == [f"blobfs: WARNING: {tar}: member 'csi\\x9b31m.png': name "
                                    "'csi\\x9b31m.png' contains '\\x9b'; not indexed"]
    assert [n for n, _, _ in read_offsets(tmp_path / "w_offsets.pkl").table] == ["a.png", "b.png"]


def test_index_warns_about_nfc_twins_and_indexes_both(tmp_path: Path) -> None:
    tar = members_tar(tmp_path / "w.tar", [(n, b"abc") for n in [NFC, "x.png", NFD]],
                      tarfile.PAX_FORMAT)
    res = blobfs("index", tar)
    assert res.returncode == 0, res.stderr
    assert warnings(res.stderr) == [f"blobfs: WARNING: {tar}: {twins_line(NFC_SHOWN, NFD_SHOWN)}"]
    assert [n for n, _, _ in read_offsets(tmp_path / "w_offsets.pkl").table] == [NFC, "x.png", NFD]


def test_long_legal_output_names_work_and_too_long_ones_are_usage_errors(blob_project: Path,
                                                                         tmp_path: Path) -> None:
    """An output name of 230-255 bytes is legal, but its hidden temporary (``.NAME.blobfs-tmp-
    PID-xxxxxxxx``) was not: unpack, pack-project and --force failed with "File name too
    long" (exit 1) for a name the folder holds. Longer than NAME_MAX, the name can never be
    written: a usage error (exit 2) before anything is read, as a missing folder is."""
    out = tmp_path / ("é" * 120 + "-out")  # 244 bytes
    for _ in range(2):  # the second run replaces it: the old tree's hidden name is long too
        r = blobfs("unpack", blob_project, out, "--force")
        assert r.returncode == 0, r.stderr
    assert (out / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no hidden leftovers
    tar = tmp_path / ("t" * 236 + ".tar")   # 240 bytes; its "_offsets.pkl" would be 248
    r = blobfs("pack", blob_project / "ds1", "-o", tar)
    assert r.returncode == 0, r.stderr
    assert read_offsets(tmp_path / ("t" * 236 + "_offsets.pkl")).table
    for cmd, name in ((("unpack", blob_project), "x" * 256),
                      (("pack", blob_project / "ds1", "-o"), "x" * 252 + ".tar")):
        long_out = tmp_path / name
        r = blobfs(*cmd, long_out)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"blobfs: {long_out}: a name of 256 bytes is too long for "
                                    "its folder (at most 255)"), r.stderr
