"""read_offsets on the SDK's real pickles, the §5 variants, and the shapes/validation rules."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from blobfs.errors import OffsetsError
from blobfs.format.offsets_read import MAX_PROBLEMS, read_offsets
from blobfs.format.offsets_write import dumps_offsets
from offsets_helpers import pickle_of, pint, sdk_entries, su

ACCEPTED = ["api_dicts", "batches_of_one", "empty_list_then_batch", "extra_team_file_id_attr",
            "minimal_protocol2_by_hand", "name_to_offsets_dict", "one_object_per_pickle",
            "protocol2", "protocol3", "protocol4", "protocol5", "tuple_instead_of_list"]


@pytest.fixture(scope="module")
def variants(fixtures_dir: Path) -> tuple[Path, dict]:
    d = fixtures_dir / "offsets_variants"
    return d, json.loads((d / "variants.json").read_text())


@pytest.mark.parametrize("stem,ds", [("small_images", "ds1"), ("more_images", "ds2")])
def test_sdk_project_pickles(blob_project: Path, stem: str, ds: str) -> None:
    tar = blob_project / "blob" / f"{stem}.tar"
    got = read_offsets(blob_project / ds / f"{stem}_offsets.pkl", tar_size=tar.stat().st_size)
    assert got.problems == []
    assert list(got.table) == sdk_entries(tar)


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_variants(variants, name: str) -> None:
    d, info = variants
    got = read_offsets(d / f"{name}.pkl")
    assert got.problems == []
    assert [list(e) for e in got.table] == info["entries"]


@pytest.mark.parametrize("name,words", [("protocol0", "protocol 2-5 header"),
                                        ("protocol1", "copy_reg._reconstructor"),
                                        ("forbidden_global", "forbidden global 'os.getcwd'"),
                                        ("truncated", "not an offsets pickle")])
def test_refused_variants(variants, name: str, words: str) -> None:
    d, _ = variants
    with pytest.raises(OffsetsError) as e:
        read_offsets(d / f"{name}.pkl")
    msg = str(e.value)
    assert words in msg and str(d / f"{name}.pkl") in msg and "\n" not in msg


def test_empty_file(variants) -> None:
    d, _ = variants
    got = read_offsets(d / "empty_file.pkl")
    assert len(got.table) == 0
    assert got.problems == [f"{d / 'empty_file.pkl'}: empty offsets file"]


def test_good_then_garbage_keeps_prefix(variants) -> None:
    d, info = variants
    got = read_offsets(d / "good_then_garbage.pkl")
    assert [list(e) for e in got.table] == info["entries"]
    assert len(got.problems) == 1
    assert "unreadable after byte 197" in got.problems[0] and "kept 3 entries" in got.problems[0]


def test_truncated_second_pickle_keeps_first(tmp_path: Path) -> None:
    entries = [(f"n{i}.png", i, i + 1) for i in range(10_050)]
    data = dumps_offsets(entries)
    p = tmp_path / "t_offsets.pkl"
    p.write_bytes(data[:-40])
    got = read_offsets(p)
    assert list(got.table) == entries[:10_000]
    assert "kept 10000 entries" in got.problems[-1]


@pytest.mark.parametrize("data", [b"\x1f\x8b\x08\x00garbage", b'{"a": 1}', b"hello\n", b"\x80"])
def test_not_a_pickle(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "x_offsets.pkl"
    p.write_bytes(data)
    with pytest.raises(OffsetsError, match="not an offsets pickle"):
        read_offsets(p)


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "v_offsets.pkl"
    p.write_bytes(data)
    return p


def test_validation_problems(tmp_path: Path) -> None:
    ops = [
        (su("ok.png"), pint(0), pint(10)),
        (su("a/b.png"), pint(0), pint(10)),            # slash
        (su(".."), pint(0), pint(10)),
        (su(""), pint(0), pint(10)),
        (su("x" * 251), pint(0), pint(10)),             # too long for <name>.json
        (su("bad\ud800.png"), pint(0), pint(10)),       # lone surrogate (pickle allows it)
        (pint(5), pint(0), pint(10)),                   # name not str
        (su("neg.png"), pint(-1), pint(10)),
        (su("rev.png"), pint(20), pint(10)),
        (su("bool.png"), b"\x89", pint(10)),            # False is not an int
        (su("flt.png"), pint(0), b"G" + (3.0).hex().encode()[:0] + b"@\x08\x00\x00\x00\x00\x00\x00"),
        (su("big.png"), pint(0), pint(2**63)),
        (su("past.png"), pint(0), pint(1001)),
        (su("dup.png"), pint(1), pint(2)),
        (su("dup.png"), pint(1), pint(2)),
    ]
    got = read_offsets(_write(tmp_path, pickle_of(ops)), tar_size=1000)
    assert list(got.table) == [("ok.png", 0, 10), ("dup.png", 1, 2), ("dup.png", 1, 2)]
    assert len(got.problems) == 12
    assert all(line.endswith("(skipped)") for line in got.problems)
    assert "entry #1 'a/b.png'" in got.problems[0]
    assert "entry #12" in got.problems[-1] and "past the end of the tar" in got.problems[-1]


def test_problem_lines_are_capped(tmp_path: Path) -> None:
    ops = [(su(f"{i}/x"), pint(0), pint(1)) for i in range(5000)]
    got = read_offsets(_write(tmp_path, pickle_of(ops)))
    assert len(got.table) == 0
    assert len(got.problems) == MAX_PROBLEMS + 1
    assert got.problems[-1].endswith(f"{5000 - MAX_PROBLEMS} more problems not listed")


def test_shapes_mapping_and_non_entries(tmp_path: Path) -> None:
    data = (pickle.dumps({"a.png": (1, 2), "b.png": [3, 4], "c.png": {"offsetStart": 5,
                                                                      "offsetEnd": 6},
                          "d.png": "nope"}, protocol=4)
            + pickle.dumps([1, "x", None, [], {"title": "e.png", "sourceBlob": None}], protocol=2)
            + pickle.dumps("just a string", protocol=3))
    got = read_offsets(_write(tmp_path, data))
    assert list(got.table) == [("a.png", 1, 2), ("b.png", 3, 4), ("c.png", 5, 6)]
    assert len(got.problems) == 7
    assert "holds a str" in got.problems[-1]


def test_fast_and_generic_paths_agree(tmp_path: Path) -> None:
    """Same entries through the SDK bytes (fast path) and protocol 2 (generic only)."""
    names = ["a.png", "já—h.png", "且.jpg", "tube.png", "x" * 250, "e(h\x03.png".replace("\x03", "3")]
    entries = [(names[i % len(names)], i * 512, i * 512 + (i * 37) % 5000) for i in range(25_000)]
    entries.append(("huge.png", 2**40, 2**40 + 5))
    fast = read_offsets(_write(tmp_path, dumps_offsets(entries)))
    slow_bytes = b"".join(pickle_of([(su(n), pint(s), pint(e))]) for n, s, e in entries[:3000])
    slow = read_offsets(_write(tmp_path, slow_bytes))
    assert list(fast.table) == entries and fast.problems == []
    assert list(slow.table) == entries[:3000] and slow.problems == []


def test_fast_path_memo_references(tmp_path: Path) -> None:
    """BINGET of a memo slot made by the fast path gives the right value (here a name)."""
    data = dumps_offsets([("a.png", 1, 2), ("b.png", 3, 4), ("c.png", 5, 6)])
    body = b"\x80\x04" + data[11:]  # drop the FRAME header: protocol 4 without framing
    # memo: 4..9 first object; 10 obj, 11 dict, 12 'b.png'; 13..15 third object
    extra = b"h\x03)\x81}(h\x06h\x0ch\x08K\x07h\tK\x08ub"
    got = read_offsets(_write(tmp_path, body[:-2] + extra + b"e."))
    assert list(got.table) == [("a.png", 1, 2), ("b.png", 3, 4), ("c.png", 5, 6), ("b.png", 7, 8)]
    # Slot 13 is the third entry object: fetching an entry again is refused (the SDK never
    # does; see test_offsets_hostile.test_an_entry_listed_again_by_reference_is_refused).
    with pytest.raises(OffsetsError, match="listed again by reference"):
        read_offsets(_write(tmp_path, body[:-2] + extra + b"h\x0d" + b"e."))


def test_large_unframed_file_crosses_read_chunks(tmp_path: Path) -> None:
    entries = [(f"file_{i:06d}.png", i * 1000, i * 1000 + 999) for i in range(40_000)]
    data = pickle_of([(su(n), pint(s), pint(e)) for n, s, e in entries])
    assert len(data) > 2 * (1 << 20)
    got = read_offsets(_write(tmp_path, data))
    assert list(got.table) == entries
