"""The writer produces exactly the SDK's save_blob_offsets_pkl bytes (FORMAT.md §6 (1))."""
from __future__ import annotations

import pickletools
import sys
from pathlib import Path

import pytest

from blobfs.format.offsets_read import read_offsets
from blobfs.format.offsets_write import dumps_offsets, offsets_path_for_tar, write_offsets
from offsets_helpers import sdk_entries

PAIRS = [("small_images", "ds1"), ("more_images", "ds2")]


@pytest.mark.parametrize("stem,ds", PAIRS)
def test_dumps_is_byte_identical_to_sdk(blob_project: Path, stem: str, ds: str) -> None:
    entries = sdk_entries(blob_project / "blob" / f"{stem}.tar")
    want = (blob_project / ds / f"{stem}_offsets.pkl").read_bytes()
    assert entries, "fixture tar has regular members"
    assert dumps_offsets(entries) == want


def test_variant_protocol4_matches_first_three(fixtures_dir: Path, blob_project: Path) -> None:
    entries = sdk_entries(blob_project / "blob" / "small_images.tar")
    first3 = [e for e in entries if e[0] in ("img_040.png", "img_041.jpg", "img_042.png")]
    assert dumps_offsets(first3) == (fixtures_dir / "offsets_variants" / "protocol4.pkl").read_bytes()


def test_10050_entries_two_pickles_round_trip(tmp_path: Path) -> None:
    entries = [(f"im ä {i}.png", i * 1024, i * 1024 + 100 + i % 7) for i in range(10_050)]
    data = dumps_offsets(entries)
    ops = list(pickletools.genops(data))  # stops at the first STOP: the first pickle
    assert ops[-1][0].name == "STOP"
    second = data[ops[-1][2] + 1:]
    assert second.startswith(b"\x80\x04\x95")
    assert sum(1 for op in pickletools.genops(second) if op[0].name == "NEWOBJ") == 50
    path = tmp_path / "x_offsets.pkl"
    write_offsets(path, entries)
    assert path.read_bytes() == data
    assert data.count(b"\x80\x04\x95") == 2
    got = read_offsets(path)
    assert got.problems == []
    assert list(got.table) == entries


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a_offsets.pkl"
    path.write_bytes(b"old")

    def boom():
        yield ("a.png", 0, 1)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_offsets(path, boom())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a_offsets.pkl"]


def test_sys_modules_restored() -> None:
    before = {m for m in sys.modules if m.startswith("supervisely")}
    dumps_offsets([("a.png", 0, 1)])
    assert {m for m in sys.modules if m.startswith("supervisely")} == before


def test_offsets_path_for_tar(tmp_path: Path) -> None:
    assert offsets_path_for_tar("/p/blob/48213.tar") == Path("/p/blob/48213_offsets.pkl")
    assert offsets_path_for_tar("x/my.images.tar", tmp_path) == tmp_path / "my.images_offsets.pkl"


def test_empty_entries_give_empty_file(tmp_path: Path) -> None:
    assert dumps_offsets([]) == b""
