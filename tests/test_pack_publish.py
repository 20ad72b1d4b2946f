"""``blobfs pack`` publishes a tar and its offsets file as a pair: one writer per output (a lock
beside it), the offsets file renamed last, and ``verify`` naming a tar beside an offsets file
written for another tar."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from blobfs.cli.main import cli
from blobfs.model.project import open_project
from test_pack import _start_and_stop, leftovers, many_files, run_pack  # noqa: F401 (fixture)

BLOBFS = [sys.executable, "-m", "blobfs"]


def write_images(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` under ``root``; returns them by item name (base name)."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel.rpartition("/")[2]: data for rel, data in files.items()}


def annotations(folder: Path, names: list[str]) -> Path:
    """An ann folder with one parseable annotation per item, so that a clean pair verifies
    with exit 0 (a bare tar has no ann/ folder of its own)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.json").write_text("{}")
    return folder


def verify(out: Path, ann: Path):
    return CliRunner().invoke(cli, ["verify", str(out), "--ann", str(ann)], catch_exceptions=False)


def served(out: Path) -> dict[str, bytes]:
    """What blobfs serves for each item of ``out`` with its sibling offsets file."""
    with open_project(out) as p:
        items = p.datasets[0].items
        return {items.name(i): items.read(i) for i in range(len(items))}


def test_verify_names_a_tar_beside_the_offsets_of_its_previous_version(tmp_path: Path) -> None:
    """The state a crash between the renames left before the offsets file was renamed last:
    the new tar beside the old offsets. Sizes changed, so ranges miss the member data."""
    src = tmp_path / "images"
    write_images(src, {"a.png": b"a" * 100, "b.png": b"b" * 2000})
    out = tmp_path / "o.tar"
    offsets = tmp_path / "o_offsets.pkl"
    assert run_pack(src, "-o", out).exit_code == 0
    old = offsets.read_bytes()
    write_images(src, {"a.png": b"A" * 1500})
    assert run_pack(src, "-o", out, "--force").exit_code == 0
    ann = annotations(tmp_path / "ann", ["a.png", "b.png"])
    assert verify(out, ann).exit_code == 0
    offsets.write_bytes(old)
    res = verify(out, ann)
    assert res.exit_code == 1
    assert f"{out}: item o/img/b.png range [1536, 3536) is not the data of a member" in res.output


def test_verify_names_offsets_of_another_tar_with_the_same_layout(tmp_path: Path) -> None:
    """Files moved between folders: every range is still some member's data, but of the
    member of another name, so ``a.png`` would be served the bytes of ``b.png``."""
    one, two = tmp_path / "one", tmp_path / "two"
    write_images(one, {"a.png": b"a" * 10, "sub/b.png": b"b" * 10})
    write_images(two, {"b.png": b"B" * 10, "sub/a.png": b"A" * 10})
    out = tmp_path / "o.tar"
    assert run_pack(one, "-o", out).exit_code == 0
    old = (tmp_path / "o_offsets.pkl").read_bytes()
    assert run_pack(two, "-o", out, "--force").exit_code == 0
    ann = annotations(tmp_path / "ann", ["a.png", "b.png"])
    assert verify(out, ann).exit_code == 0
    (tmp_path / "o_offsets.pkl").write_bytes(old)
    assert served(out)["a.png"] == b"B" * 10  # what a client would be given
    res = verify(out, ann)
    assert res.exit_code == 1
    assert (f"{out}: item o/img/a.png range [512, 522) is the data of member 'b.png', though the "
            "tar has a member 'a.png'") in res.output
    assert "item o/img/b.png" in res.output


