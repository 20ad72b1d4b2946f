"""Hostile offsets pickles: code execution attempts and resource bombs are refused cleanly."""
from __future__ import annotations

import builtins
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobfs.errors import OffsetsError
from blobfs.format.offsets_read import OffsetsResult, read_offsets
from blobfs.format.offsets_write import dumps_offsets
from offsets_helpers import pint, su

REPO = Path(__file__).resolve().parent.parent
GOOD = dumps_offsets([("a.png", 0, 10), ("b.png", 10, 20)])


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps(_Reduce(os.system, (cmd,))),
        "eval": pickle.dumps(_Reduce(builtins.eval, (f"open({str(marker)!r}, 'w')",))),
        "subprocess": pickle.dumps(_Reduce(subprocess.call, (["touch", str(marker)],))),
        "getattr chain": (b"\x80\x04cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR("
                          + su(cmd) + b"tR."),
        "protocol5 list": pickle.dumps([_Reduce(os.system, (cmd,))], protocol=5),
    }


def _refused(tmp_path: Path, data: bytes, words: str = "refused") -> str:
    p = tmp_path / "h_offsets.pkl"
    p.write_bytes(data)
    with pytest.raises(OffsetsError) as e:
        read_offsets(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg and words in msg, msg
    return msg


@pytest.mark.parametrize("kind", ["os.system", "eval", "subprocess", "getattr chain",
                                  "protocol5 list"])
@pytest.mark.parametrize("where", ["alone", "second of three"])
def test_code_execution_refused_and_no_trace(tmp_path: Path, kind: str, where: str) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    data = payload if where == "alone" else GOOD + payload + GOOD
    msg = _refused(tmp_path, data)
    assert "forbidden global" in msg
    assert not marker.exists()


def test_forbidden_global_inside_entry_state(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=4)[2:-1]
    state = (b"}(" + su("name") + su("x.png") + su("offset_start") + pint(0)
             + su("offset_end") + evil + b"ub")
    data = b"\x80\x04](" + b"csupervisely.api.image_api\nBlobImageInfo\n)\x81" + state + b"e."
    msg = _refused(tmp_path, GOOD + data)
    assert "forbidden global 'posix.system'" in msg or "forbidden global 'os.system'" in msg
    assert not marker.exists()


@pytest.mark.parametrize("data,words", [
    (b"\x80\x04csupervisely.api.image_api\nBlobImageInfo\n(K\x01tR.", "REDUCE"),
    (b"\x80\x04csupervisely.api.image_api\nBlobImageInfo\n)\x81K\x01b.", "BUILD with a int"),
    (b"\x80\x04]K\x01b.", "BUILD on a list"),
    (b"\x80\x04csupervisely.api.image_api\nBlobImageInfo\nK\x01\x85\x81.", "NEWOBJ with arg"),
    (b"\x80\x04])\x81.", "NEWOBJ on a list"),
    (b"\x80\x04\x82\x01.", "EXT1"), (b"\x80\x04\x83\x01\x00.", "EXT2"),
    (b"\x80\x04\x84\x01\x00\x00\x00.", "EXT4"), (b"\x80\x04Pabc\n.", "PERSID"),
    (b"\x80\x04K\x01Q.", "BINPERSID"), (b"\x80\x05\x97.", "NEXT_BUFFER"),
    (b"\x80\x05\x98.", "READONLY_BUFFER"), (b"\x80\x04(i__main__\nX\n.", "INST"),
    (b"\x80\x04(csupervisely.api.image_api\nBlobImageInfo\no.", "OBJ"),
])
def test_refused_opcodes(tmp_path: Path, data: bytes, words: str) -> None:
    _refused(tmp_path, GOOD + data, words)


@pytest.mark.parametrize("data,words", [
    (b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"x", "string of"),      # BINUNICODE8
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x", "bytes of"),       # BINBYTES8
    (b"\x80\x05\x96" + struct.pack("<Q", 2**63 - 1) + b"x", "bytes of"),   # BYTEARRAY8
    (b"\x80\x04X" + struct.pack("<I", 2**32 - 1) + b"x", "string of"),
    (b"\x80\x04\x8b" + struct.pack("<I", 2**31) + b"x", "integer of"),     # LONG4
    (b"\x80\x04\x8a\x0a" + b"\x01" * 10 + b".", "integer of"),
    (b"\x80\x04" + b"(" * 100_000 + b".", "nested"),
    (b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b".", "nested"),
    (b"\x80\x04)" + b"\x85" * 100_000 + b".", "nested"),
])
def test_bombs_refused(tmp_path: Path, data: bytes, words: str) -> None:
    _refused(tmp_path, GOOD + data, words)


def test_long_binput_huge_index_is_harmless(tmp_path: Path) -> None:
    p = tmp_path / "m_offsets.pkl"
    p.write_bytes(GOOD + b"\x80\x04]r\xff\xff\xff\xffj\xff\xff\xff\xff.")
    got = read_offsets(p)
    assert list(got.table) == [("a.png", 0, 10), ("b.png", 10, 20)]
    assert got.problems == []  # an empty list is a valid (empty) batch


def test_frame_with_huge_length(tmp_path: Path) -> None:
    p = tmp_path / "f_offsets.pkl"
    p.write_bytes(GOOD + b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"]")
    got = read_offsets(p)
    assert len(got.table) == 2 and "FRAME of" in got.problems[-1]
    _refused(tmp_path, b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"].", "FRAME of")


def test_million_reference_amplification(tmp_path: Path) -> None:
    """One list referenced 1M times, nested: built in O(refs), never traversed."""
    data = (b"\x80\x04]\x94" + b"(" + b"h\x00" * 1_000_000 + b"e" + b"h\x00" * 10 + b"\x85."
            + GOOD)
    p = tmp_path / "a_offsets.pkl"
    p.write_bytes(data)
    got = read_offsets(p)
    assert len(got.table) == 2
    assert "a list is not an entry" in got.problems[0]


def _sdk_entry(name: bytes, memoize: bytes = b"") -> bytes:
    """One BlobImageInfo as the SDK's pickler writes it (NEWOBJ, then BUILD of its dict)."""
    def s(b: bytes) -> bytes:
        return b"\x8c" + bytes([len(b)]) + b
    return (b"csupervisely.api.image_api\nBlobImageInfo\n)\x81" + memoize + b"}(" + s(b"name") + s(name)
            + s(b"offset_start") + b"K\x00" + s(b"offset_end") + b"K\x0au" + b"b")


@pytest.mark.parametrize("ref", [b"2", b"h\x00", b"j\x00\x00\x00\x00"], ids=["DUP", "BINGET", "LONG_BINGET"])
def test_an_entry_listed_again_by_reference_is_refused(tmp_path: Path, ref: bytes) -> None:
    """The SDK never references an entry twice; a pickle that does lists one entry ~10**6 times
    for a byte or two each (a fuzz run: 4 MB took `blobfs mount` past 30 s). Refused at once."""
    memoize = b"" if ref == b"2" else b"\x94"
    data = b"\x80\x04](" + _sdk_entry(b"a.png", memoize) + ref * 1_000_000 + b"e."
    msg = _refused(tmp_path, data, "listed again by reference")
    assert "at byte" in msg
    # The same entry once, memoized and never fetched again, is an ordinary pickle.
    p = tmp_path / "ok_offsets.pkl"
    p.write_bytes(b"\x80\x04](" + _sdk_entry(b"a.png", b"\x94") + _sdk_entry(b"b.png", b"\x94") + b"e.")
    got = read_offsets(p)
    assert len(got.table) == 2 and not got.problems


def test_bomb_under_address_space_limit(tmp_path: Path) -> None:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) not installed")
    bombs = {
        "b8": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x" * 100,
        "put": b"\x80\x04]r\xff\xff\xff\xff" + b"r\xfe\xff\xff\xff" + b"h\x00" * 10 + b"(" * 1000,
    }
    for name, data in bombs.items():
        p = tmp_path / f"{name}_offsets.pkl"
        p.write_bytes(data)
        code = ("import sys; from blobfs.format.offsets_read import read_offsets\n"
                "from blobfs.errors import OffsetsError\n"
                "try:\n    read_offsets(sys.argv[1])\nexcept OffsetsError as e:\n"
                "    print('CLEAN', e); sys.exit(3)\n")
        out = subprocess.run([prlimit, "--as=2000000000", sys.executable, "-c", code, str(p)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 3, out.stderr
        assert out.stdout.startswith("CLEAN ") and str(p) in out.stdout


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400),
                 st.binary(max_size=200).map(lambda b: b"\x80\x04" + b),
                 st.binary(max_size=200).map(lambda b: GOOD[:40] + b),
                 st.tuples(st.integers(0, len(GOOD)), st.binary(max_size=20)).map(
                     lambda t: GOOD[:t[0]] + t[1] + GOOD[t[0]:])))
def test_arbitrary_bytes_never_crash(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("fz") / "z_offsets.pkl"
    p.write_bytes(data)
    try:
        got = read_offsets(p)
    except OffsetsError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(got, OffsetsResult)


_NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x94"),
                min_size=1, max_size=40).filter(lambda s: s not in (".", ".."))
_ENTRY = st.tuples(_NAME, st.integers(0, 2**40), st.integers(0, 2**40)).map(
    lambda t: (t[0], min(t[1], t[2]), max(t[1], t[2])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ENTRY, max_size=60))
def test_round_trip(tmp_path_factory, entries) -> None:
    p = tmp_path_factory.mktemp("rt") / "r_offsets.pkl"
    p.write_bytes(dumps_offsets(entries))
    got = read_offsets(p) if entries else None
    if got is None:
        return
    assert list(got.table) == entries and got.problems == []
