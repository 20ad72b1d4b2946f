"""Bulk parser for the canonical SDK entry pattern (FORMAT.md §4), in C-speed operations.

After the first object of a pickle, ``save_blob_offsets_pkl`` writes every entry as

    h\\x03 ) \\x81 \\x94 } \\x94 ( h\\x06 \\x8c<len><name> \\x94 h\\x08 <int> h\\t <int> u b

(BINGET class, EMPTY_TUPLE, NEWOBJ, MEMOIZE, EMPTY_DICT, MEMOIZE, MARK, 'name' key from memo,
name, MEMOIZE, 'offset_start', int, 'offset_end', int, SETITEMS, BUILD). Interpreting those
16 opcodes one by one in Python costs ~10 µs per entry; here a regex finds a run of such
entries and the run is decoded with joins, slices and ``array`` (about 1 µs per entry).

The caller (``PickleVM``) only uses this when memo slots 3/6/8/9 hold the class and the three
key strings, and accounts for the three memo slots each entry takes. Anything that is not
exactly this pattern (a name whose length byte disagrees, a non-UTF-8 name, an int the bulk
decoder does not know) makes :func:`parse_run` return None, and the generic interpreter runs.
"""
from __future__ import annotations

import re
from array import array
from itertools import accumulate
from operator import gt

from blobfs.format.entries import EntryTable

def _entry_pattern(g: bytes) -> bytes:
    """The entry regex; ``g`` opens a group: ``(`` capturing (findall) or ``(?:`` (run)."""
    num = g + (rb"K.|M..|J....|\x8a\x01.|\x8a\x02..|\x8a\x03...|\x8a\x04....|\x8a\x05....."
               rb"|\x8a\x06......|\x8a\x07.......|\x8a\x08........)")
    return (rb"h\x03\)\x81\x94\}\x94\(h\x06\x8c" + g + rb".)" + g + rb".{0,255}?)\x94h\x08"
            + num + rb"h\t" + num + rb"ub")


_FIXED = len(b"h\x03)\x81\x94}\x94(h\x06\x8c" b"L" b"\x94h\x08" b"h\t" b"ub")
ENTRY_RE = re.compile(_entry_pattern(b"("), re.DOTALL)
RUN_RE = re.compile(b"(?:" + _entry_pattern(b"(?:") + b")+", re.DOTALL)
_BAD_NAME_BYTES = re.compile(rb"[\x01-\x1f\x7f/]")  # NUL is the join separator, counted apart
_OP_K, _OP_M, _OP_J, _OP_LONG1 = 0x4B, 0x4D, 0x4A, 0x8A


def _bulk_ints(raw: tuple[bytes, ...]) -> array | None:
    """Decode same-opcode, same-width ints at C speed; None when they are mixed/negative."""
    n = len(raw)
    first = raw[0]
    w = len(first)
    joined = b"".join(raw)
    if len(joined) != w * n or joined[0::w] != first[:1] * n:
        return None
    op = first[0]
    k = 1
    if op == _OP_LONG1:
        k = 2
        if joined[1::w] != first[1:2] * n:
            return None
    if op in (_OP_J, _OP_LONG1) and max(joined[w - 1::w]) >= 0x80:
        return None  # a negative value: let the per-entry decoder give it its sign
    out = bytearray(8 * n)
    for j in range(w - k):
        out[j::8] = joined[k + j::w]
    return array("q", bytes(out))


def _one_int(r: bytes) -> int:
    op = r[0]
    if op == _OP_K:
        return r[1]
    if op == _OP_M:
        return r[1] | r[2] << 8
    if op == _OP_J:
        return int.from_bytes(r[1:], "little", signed=True)
    return int.from_bytes(r[2:], "little", signed=True)


def _ints(raw: tuple[bytes, ...]) -> array:
    got = _bulk_ints(raw)
    return got if got is not None else array("q", map(_one_int, raw))


def parse_run(data, pos: int, limit: int, stage: EntryTable):
    """Parse consecutive canonical entries at ``data[pos:limit]`` into ``stage``.

    Returns ``(end, lo, hi, clean)``: the entries are ``stage[lo:hi]``; ``clean`` means every
    name passes ``names.name_bytes_problem`` and ``0 <= start <= end`` for all. None when the
    bytes at ``pos`` are not exactly such a run.
    """
    m = RUN_RE.match(data, pos, limit)
    if m is None:
        return None
    end = m.end()
    found = ENTRY_RE.findall(data, pos, end)
    if not found:
        return None
    lbs, names, ss, es = zip(*found)
    n = len(names)
    lens = bytes(map(len, names)) if max(map(len, names)) < 256 else None
    if lens is None or lens != b"".join(lbs):
        return None  # a name containing the key bytes: segmentation is not certain
    total = _FIXED * n + sum(lens) + sum(map(len, ss)) + sum(map(len, es))
    if total != end - pos:
        return None
    sep = b"\0".join(names)
    try:
        sep.decode("utf-8")  # the separator keeps a split sequence from looking valid
    except UnicodeDecodeError:
        return None  # the generic path decides (pickle's surrogatepass, or unreadable)
    starts, ends = _ints(ss), _ints(es)
    clean = (min(lens) > 0 and max(lens) <= 250 and sep.count(0) == n - 1
             and _BAD_NAME_BYTES.search(sep) is None
             and names.count(b".") == 0 and names.count(b"..") == 0
             and min(starts) >= 0 and not any(map(gt, starts, ends)))
    lo = len(stage)
    base = len(stage.names)
    stage.names += b"".join(names)
    stage.name_ends.extend(accumulate(lens, initial=base))
    stage.name_ends.pop(lo)  # drop the `initial` value
    stage.starts.extend(starts)
    stage.ends.extend(ends)
    return end, lo, lo + n, clean
