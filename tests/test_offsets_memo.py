"""The pickle VM's memo: flooded, out of order, overwritten, mixed with fast-path slots.

Sequential keys (MEMOIZE) are stored in a list, other keys in a dict, fast-path slots not at
all; these tests pin that the results and error texts are those of a plain dict memo."""
from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest

from blobfs.errors import OffsetsError
from blobfs.format import pickle_vm
from blobfs.format.offsets_read import read_offsets
from blobfs.format.offsets_write import dumps_offsets
from offsets_helpers import su

GOOD = dumps_offsets([("a.png", 0, 10), ("b.png", 10, 20)])


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "m_offsets.pkl"
    p.write_bytes(data)
    return p


def _refused(tmp_path: Path, data: bytes) -> str:
    p = _write(tmp_path, data)
    with pytest.raises(OffsetsError) as e:
        read_offsets(p)
    return str(e.value).replace(str(p), "P")


def _put(key: int) -> bytes:
    return b"q" + bytes([key]) if key < 256 else b"r" + struct.pack("<I", key)


def _get(key: int) -> bytes:
    return b"h" + bytes([key]) if key < 256 else b"j" + struct.pack("<I", key)


def _mapping(*name_gets: bytes) -> bytes:
    """A dict name -> (start, end) whose names are memo gets; entry i is (10*i, 10*i + 10)."""
    items = b"".join(g + bytes([0x4B, 10 * i, 0x4B, 10 * i + 10, 0x86])
                     for i, g in enumerate(name_gets))
    return b"}(" + items + b"u."


def test_memoize_flood_below_the_cap_reads_as_before(tmp_path: Path) -> None:
    # 200,000 memo keys holding None: a valid pickle whose result is not a list of entries.
    data = b"\x80\x04N" + b"\x94" * 200_000 + b"." + GOOD
    got = read_offsets(_write(tmp_path, data))
    assert list(got.table) == [("a.png", 0, 10), ("b.png", 10, 20)]
    assert got.problems == [f"{tmp_path / 'm_offsets.pkl'}: pickle at byte 0 holds a NoneType, "
                            "not a list of entries (skipped)"]


def test_memoize_flood_costs_a_list_slot_per_key(tmp_path: Path) -> None:
    """A dict memo took ~65 bytes per key (~20 MB here); a list slot is 8 (~2.4 MB)."""
    p = _write(tmp_path, b"\x80\x04N" + b"\x94" * 300_000 + b".")
    tracemalloc.start()
    try:
        got = read_offsets(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got.problems) == 1 and "holds a NoneType" in got.problems[0]
    assert peak < 8_000_000, peak


@pytest.mark.parametrize("prefix", [b"", b"Nr\x00\xca\x9a\x3b"], ids=["sequential", "after a PUT"])
def test_memo_cap_counts_every_stored_key(tmp_path: Path, monkeypatch, prefix: bytes) -> None:
    monkeypatch.setattr(pickle_vm, "MAX_MEMO", 1000)
    ok = b"\x80\x04N" + prefix + b"\x94" * (1000 - bool(prefix)) + b"."
    got = read_offsets(_write(tmp_path, ok + GOOD))
    assert len(got.table) == 2
    over = b"\x80\x04N" + prefix + b"\x94" * (1001 - bool(prefix)) + b"."
    assert _refused(tmp_path, over) == f"P: refused: more than 1000 memo entries at byte {len(over) - 2}"
    # Overwriting existing keys adds none.
    again = b"\x80\x04N" + b"\x94" * 999 + b"q\x05" * 5000 + b"q\x00" * 5000 + b"."
    assert len(read_offsets(_write(tmp_path, again + GOOD)).table) == 2
    # Out-of-order keys count as well, mixed with sequential ones.
    mixed = b"\x80\x04N" + b"\x94" * 600 + b"".join(_put(5000 + k) for k in range(401)) + b"."
    assert _refused(tmp_path, mixed) == ("P: refused: more than 1000 memo entries at byte "
                                          f"{len(mixed) - 6}")


def test_fast_path_slots_do_not_count_against_the_cap(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pickle_vm, "MAX_MEMO", 100)
    entries = [(f"img_{i:04d}.png", i, i + 1) for i in range(2000)]  # 6000 fast-path slots
    got = read_offsets(_write(tmp_path, dumps_offsets(entries)))
    assert list(got.table) == entries and got.problems == []


def test_put_with_arbitrary_keys_and_overwrites(tmp_path: Path) -> None:
    data = (b"\x80\x04" + su("a.png") + _put(1000) + b"0"   # key 1000 (memo_count 1)
            + su("b.png") + _put(5) + b"0"                  # key 5 (memo_count 2)
            + su("c.png") + b"\x94" + b"0"                  # MEMOIZE: key 2
            + su("d.png") + _put(1000) + b"0"               # overwrites 1000
            + su("e.png") + _put(2) + b"0"                  # overwrites 2 (a MEMOIZE key)
            + su("f.png") + b"\x94" + b"0"                  # MEMOIZE: key 3, not 4 or 5
            + _mapping(_get(1000), _get(5), _get(2), _get(3)))
    got = read_offsets(_write(tmp_path, data))
    assert list(got.table) == [("d.png", 0, 10), ("b.png", 10, 20), ("e.png", 20, 30),
                               ("f.png", 30, 40)]
    assert got.problems == []


def test_memoize_onto_a_put_key_overwrites_it(tmp_path: Path) -> None:
    # PUT 1 first: memo_count becomes 1, so every MEMOIZE after it rewrites key 1.
    head = b"\x80\x04" + su("a.png") + _put(1) + su("b.png") + b"\x94" + su("c.png") + b"\x94"
    got = read_offsets(_write(tmp_path, head + b"0" * 3 + _mapping(_get(1))))
    assert list(got.table) == [("c.png", 0, 10)]
    msg = _refused(tmp_path, head + b"0" * 3 + _mapping(_get(0)))
    assert msg == f"P: not an offsets pickle: memo key 0 is not defined at byte {len(head) + 5}"


@pytest.mark.parametrize("key", [0, 3, 4, 300], ids=["below", "memo_count", "past", "far"])
def test_memo_get_of_an_undefined_key(tmp_path: Path, key: int) -> None:
    # Keys 1 and 2 are defined (MEMOIZE after PUT 1000); 0, 3 and the rest are not.
    head = b"\x80\x04N" + _put(1000) + b"\x94\x94"
    data = head + _get(key) + b"."
    at = len(head)
    assert _refused(tmp_path, data) == f"P: not an offsets pickle: memo key {key} is not defined at byte {at}"
    got = read_offsets(_write(tmp_path, GOOD + data))
    assert list(got.table) == [("a.png", 0, 10), ("b.png", 10, 20)]
    assert got.problems == [f"{tmp_path / 'm_offsets.pkl'}: unreadable after byte {len(GOOD)} "
                            f"(memo key {key} is not defined at byte {len(GOOD) + at}); kept 2 entries"]


def _fast_body() -> bytes:
    """3 SDK entries, unframed; memo 0..9 generic (3 = class), 10..15 fast-path slots."""
    data = dumps_offsets([("a.png", 1, 2), ("b.png", 3, 4), ("c.png", 5, 6)])
    return b"\x80\x04" + data[11:-2]


_EXTRA = b"h\x03)\x81}(h\x06%sh\x08K\x07h\tK\x08ub"  # one more entry, generic path


def test_memo_get_of_fast_path_keys(tmp_path: Path) -> None:
    # Slot 12 is the second entry's name, 11 its state dict, 10 the entry itself.
    got = read_offsets(_write(tmp_path, _fast_body() + _EXTRA % b"h\x0c" + b"e."))
    assert list(got.table)[-1] == ("b.png", 7, 8)
    got = read_offsets(_write(tmp_path, _fast_body() + b"h\x0b0e."))
    assert len(got.table) == 3
    with pytest.raises(OffsetsError, match="listed again by reference"):
        read_offsets(_write(tmp_path, _fast_body() + b"h\x0a0e."))
    assert "memo key 16 is not defined" in _refused(tmp_path, _fast_body() + b"h\x100e.")


def test_put_over_fast_path_slots(tmp_path: Path, monkeypatch) -> None:
    built = []
    real = pickle_vm.PickleVM.entry_obj
    monkeypatch.setattr(pickle_vm.PickleVM, "entry_obj",
                        lambda vm, i: built.append(i) or real(vm, i))
    # 'z.png' overwrites slot 12 (many times: no entry object is built to test that it
    # exists); 'y.png' is then MEMOIZEd as key 16, so the overwrites added no key.
    data = (_fast_body() + su("z.png") + b"q\x0c" * 1000 + b"0" + su("y.png") + b"\x940"
            + _EXTRA % b"h\x0c" + _EXTRA % b"h\x10" + b"e.")
    got = read_offsets(_write(tmp_path, data))
    assert list(got.table) == [("a.png", 1, 2), ("b.png", 3, 4), ("c.png", 5, 6),
                               ("z.png", 7, 8), ("y.png", 7, 8)]
    assert got.problems == [] and built == []
