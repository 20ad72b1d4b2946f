"""Output paths that cannot name the output are usage errors: exit 2 and one line, before
anything is written, the same for every command that writes. Real processes on real folders.

* A file output (``pack -o``, ``preview -o``) written as a folder (``out.tar/``): pathlib
  drops the slash, and ``pack -o out.tar/`` wrote ``out.tar``; ``cp a b/`` refuses it too.
* The folder the output goes into is missing or no folder (``index -o no/such``): 2, as an
  existing output without ``--force``, not 1, which is kept for outputs that could not be
  written (full disk, permissions).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BLOBFS = [sys.executable, "-m", "blobfs"]


def run(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*BLOBFS, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, stdin=subprocess.DEVNULL)


def images(tmp_path: Path) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(b"png" * (i + 1))
    return src


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("tail", ["/", "//", "/.", "/.."])
def test_pack_output_written_as_a_folder(tmp_path: Path, tail: str) -> None:
    src = images(tmp_path)
    before = listing(tmp_path)
    res = run("pack", src, "-o", f"out.tar{tail}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"'out.tar{tail}'" in res.stderr and "names a folder" in res.stderr, res.stderr
    assert listing(tmp_path) == before  # no out.tar, no offsets, no lock or temporary


def test_pack_output_with_a_slash_after_an_existing_file(tmp_path: Path) -> None:
    """``out.tar/`` where out.tar is a file: refused, the file untouched (even with --force)."""
    src = images(tmp_path)
    (tmp_path / "out.tar").write_bytes(b"old")
    res = run("pack", src, "-o", "out.tar/", "--force", cwd=tmp_path)
    assert res.returncode == 2 and "names a folder" in res.stderr, res.stderr
    assert (tmp_path / "out.tar").read_bytes() == b"old"
    assert not (tmp_path / "out_offsets.pkl").exists()


def test_preview_output_written_as_a_folder(blob_project: Path, tmp_path: Path) -> None:
    res = run("preview", blob_project, "-o", "sheet.png/", "--limit", "2", cwd=tmp_path)
    assert res.returncode == 2 and "'sheet.png/'" in res.stderr and "names a folder" in res.stderr, res.stderr
    assert listing(tmp_path) == []


def test_folder_outputs_take_a_trailing_slash(blob_project: Path, tmp_path: Path) -> None:
    """A folder output (unpack, pack-project, index -o) is a folder: the slash is fine."""
    res = run("unpack", blob_project, "out/", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run("index", blob_project / "blob" / "small_images.tar", "-o", "out/", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "small_images_offsets.pkl").is_file()


COMMANDS = {
    "pack": lambda src, blob, classic, out: ["pack", src, "-o", out / "x.tar"],
    "pack-project": lambda src, blob, classic, out: ["pack-project", classic, out / "x"],
    "unpack": lambda src, blob, classic, out: ["unpack", blob, out / "x"],
    "index": lambda src, blob, classic, out: ["index", blob / "blob" / "small_images.tar", "-o", out],
    "preview": lambda src, blob, classic, out: ["preview", blob, "-o", out / "x.png", "--limit", "2"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("parent, why", [("no/such", "output folder does not exist"),
                                         ("a_file", "output folder is not a folder")])
def test_output_folder_that_cannot_hold_the_output(blob_project: Path, classic_project: Path,
                                                   tmp_path: Path, command: str, parent: str,
                                                   why: str) -> None:
    src = images(tmp_path)
    (tmp_path / "a_file").write_bytes(b"")
    before = listing(tmp_path)
    args = COMMANDS[command](src, blob_project, classic_project, Path(parent))
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    if command == "index" and parent == "a_file":  # -o names the folder itself: click says it
        assert "Directory 'a_file' is a file" in res.stderr, res.stderr
    else:
        assert res.stderr.splitlines() == [f"blobfs: {parent}: {why}"], res.stderr
    assert listing(tmp_path) == before
