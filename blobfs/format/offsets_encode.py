"""The SDK's offsets pickle for one batch, encoded without ``pickle`` (FORMAT.md §4).

The SDK pickles a list of ``supervisely.api.image_api.BlobImageInfo`` dataclass instances per
batch with protocol 4. Pickling stand-in objects for 300k entries costs ~1 s of CPU
(``pickle`` calls ``__reduce_ex__`` in Python for every object), and the bytes are fully fixed
by FORMAT.md §4, so here they are assembled directly: one ``bytes`` per entry from a
template, the frame headers of protocol 4 (``FRAME`` + 8-byte length, a frame closed at the
first opcode boundary once it holds >= 64 KiB, as ``_pickle.c`` does) added around them.
``tests/test_offsets_write.py`` checks the result against the SDK's own files, and
``tests/test_write_speedpaths.py`` against ``pickle`` itself (``offsets_helpers.pickle_offsets``)
at every frame and batch edge.
"""
from __future__ import annotations

import struct
from typing import Sequence

_FRAME_TARGET = 64 * 1024       # _pickle.c FRAME_SIZE_TARGET
_FRAME_MIN = 4                  # _pickle.c FRAME_SIZE_MIN: shorter frames get no header
_BATCH_LIST = 1000              # _pickle.c BATCHSIZE: MARK ... APPENDS groups

_CLASS = b"\x8c\x19supervisely.api.image_api\x94\x8c\rBlobImageInfo\x94\x93\x94"
# First entry of a pickle: memo 3 = class, 6/8/9 = the three keys (7 = the first name).
_FIRST_HEAD = _CLASS + b")\x81\x94}\x94(\x8c\x04name\x94"
_FIRST_START = b"\x94\x8c\x0coffset_start\x94"
_FIRST_END = b"\x8c\noffset_end\x94"
# Every later entry: BINGET the class and keys.
_HEAD = b"h\x03)\x81\x94}\x94(h\x06"
_START = b"\x94h\x08"
_END = b"h\t"
_TAIL = b"ub"                   # SETITEMS, BUILD


_LEN = [bytes((i,)) for i in range(256)]
_J_ENTRY = struct.Struct("<4si3si2s")       # name MEMOIZE, key, BININT start, key, BININT end, tail
_L5_ENTRY = struct.Struct("<5s5s4s5s2s")    # the same with LONG1 (5 bytes) values
_Q = struct.Struct("<q")


def _uni(raw: bytes) -> bytes:
    n = len(raw)
    if n < 256:
        return b"\x8c" + _LEN[n] + raw
    return b"X" + struct.pack("<I", n) + raw


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + _LEN[v]
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() >> 3) + 1, "little", signed=True)
    if v < 0 and len(raw) > 1 and raw[-1] == 0xFF and raw[-2] & 0x80:
        raw = raw[:-1]
    if len(raw) < 256:
        return b"\x8a" + _LEN[len(raw)] + raw
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def _pieces(i: int, raw: bytes, start: int, end: int) -> list[bytes]:
    """Entry ``i`` split where ``_pickle.c`` may close a frame: at the start of every
    ``save()`` (the object and its class, the args tuple, the state dict, each key and value)."""
    if i == 0:
        return [_CLASS + b")\x81\x94", b"}\x94(", b"\x8c\x04name\x94", _uni(raw) + b"\x94",
                b"\x8c\x0coffset_start\x94", _int(start), _FIRST_END, _int(end) + _TAIL]
    return [b"h\x03", b")\x81\x94", b"}\x94(", b"h\x06", _uni(raw) + b"\x94", b"h\x08",
            _int(start), _END, _int(end) + _TAIL]


def _entry(i: int, raw: bytes, start: int, end: int) -> bytes:
    return b"".join(_pieces(i, raw, start, end))


def _entries(raws: list[bytes], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """The bytes of every entry; the common shapes (a name under 256 bytes, both offsets
    BININT or both 5-byte LONG1) from one struct template each."""
    head = _HEAD + b"\x8c"
    j, l5, q = _J_ENTRY.pack, _L5_ENTRY.pack, _Q.pack
    lens = _LEN
    out = [head + lens[len(raw)] + raw + j(b"\x94h\x08J", s, b"h\tJ", e, b"ub")
           if 65536 <= s < 2**31 and 65536 <= e < 2**31 and len(raw) < 256 else
           head + lens[len(raw)] + raw + l5(b"\x94h\x08\x8a\x05", q(s)[:5], b"h\t\x8a\x05",
                                         q(e)[:5], b"ub")
           if 2**31 <= s < 2**39 and 2**31 <= e < 2**39 and len(raw) < 256 else
           _entry(1, raw, s, e)
           for raw, s, e in zip(raws, starts, ends)]
    out[0] = _entry(0, raws[0], starts[0], ends[0])
    return out


class _Framer:
    """Protocol-4 framing: frame headers around runs of opcodes (``_Pickler_CommitFrame``)."""

    def __init__(self) -> None:
        self.done: list[bytes] = [b"\x80\x04"]     # PROTO 4 precedes the first frame
        self.frame: list[bytes] = []
        self.length = 0

    def write(self, data: bytes) -> None:
        self.frame.append(data)
        self.length += len(data)

    def boundary(self) -> None:
        if self.length >= _FRAME_TARGET:
            self.commit()

    def commit(self) -> None:
        if self.length >= _FRAME_MIN:
            self.done.append(b"\x95" + struct.pack("<Q", self.length))
        self.done.extend(self.frame)
        self.frame, self.length = [], 0


def encode_batch(names: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> bytes:
    """One pickle of ``save_blob_offsets_pkl`` for these entries (at least one)."""
    n = len(names)
    raws = [name.encode("utf-8", "surrogatepass") for name in names]
    datas = _entries(raws, starts, ends)
    f = _Framer()
    f.write(b"]\x94")                              # EMPTY_LIST, MEMOIZE
    if n == 1:                                     # a 1-item list: APPEND, not MARK..APPENDS
        for piece in _pieces(0, raws[0], starts[0], ends[0]):
            f.boundary()
            f.write(piece)
        f.write(b"a")
    target = _FRAME_TARGET
    for lo in range(0, n if n > 1 else 0, _BATCH_LIST):
        f.write(b"(")
        frame = f.frame
        for i in range(lo, min(lo + _BATCH_LIST, n)):
            data = datas[i]
            if f.length + len(data) < target:      # no boundary can fall inside: as a whole
                frame.append(data)
                f.length += len(data)
                continue
            for piece in _pieces(i, raws[i], starts[i], ends[i]):
                f.boundary()
                f.write(piece)
            frame = f.frame
        f.write(b"e")
    f.write(b".")                                  # no boundary between the list and STOP
    f.commit()
    return b"".join(f.done)
