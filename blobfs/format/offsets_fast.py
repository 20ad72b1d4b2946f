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
from itertools import accumulate, chain
from operator import gt

from blobfs.format.entries import EntryTable

_NUM = (rb"(K.|M..|J....|\x8a\x01.|\x8a\x02..|\x8a\x03...|\x8a\x04....|\x8a\x05....."
        rb"|\x8a\x06......|\x8a\x07.......|\x8a\x08........)")
# (gap before the entry)(length byte)(name)(start int)(end int). A name holding the byte 0x94
# (MEMOIZE; also a UTF-8 continuation byte) is not matched: its entry becomes part of the
# next gap and runs through the generic interpreter. The lazy gap makes findall report
# where runs of back-to-back entries break (``e(`` every 1000 items, frame ends); the
# ``|\Z`` alternative lets the last gap run to the end of the region in one match, so every
# byte is scanned once (a bare lazy gap would rescan the tail from every position: O(n²)).
ENTRY_RE = re.compile(rb"(.*?)(?:h\x03\)\x81\x94\}\x94\(h\x06\x8c(.)([^\x94]{0,255})\x94h\x08" + _NUM
                      + rb"h\t" + _NUM + rb"ub|\Z)", re.DOTALL)
_FIXED = len(b"h\x03)\x81\x94}\x94(h\x06\x8c" b"L" b"\x94h\x08" b"h\t" b"ub")
REGION = 1 << 20  # bytes scanned per findall
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


class Scanner:
    """Finds canonical entries with one findall per region and hands them out run by run.

    A region (at most 1 MiB, one frame for SDK files) is scanned once. Runs break where a
    gap is not empty (``e(`` every 1000 items, a non-canonical entry); the VM runs the gap
    generically and is served from the cache again when it reaches the next entry. A call
    anywhere else inside a scanned region gets None, so hostile data full of ``h\\x03``
    cannot make us rescan the same bytes again and again.
    """

    def __init__(self) -> None:
        self.data = None
        self.scanned_end = -1
        self.next_pos = -1
        self.idx = 0
        self.cols: tuple = ()
        self.breaks = b""

    def _scan(self, data, pos: int, limit: int) -> bool:
        end = min(limit, pos + REGION)
        found = ENTRY_RE.findall(data, pos, end)
        flat = list(chain.from_iterable(found))  # cheaper than zip(*found) for 5 columns
        del found
        cols = [flat[k::5] for k in range(5)]  # gaps, length bytes, names, starts, ends
        while cols[1] and not cols[1][-1]:  # the tail gap and findall's final empty match
            for c in cols:
                c.pop()
        self.data, self.scanned_end, self.cols = data, end, cols
        self.breaks = bytes(map(bool, cols[0]))
        self.idx, self.next_pos = 0, (pos + len(cols[0][0]) if cols[0] else -1)
        return bool(cols[0]) and not cols[0][0]

    def parse_run(self, data, pos: int, limit: int, stage: EntryTable, name_base: int):
        """Parse the run of back-to-back canonical entries at ``pos`` into ``stage``.

        ``stage.name_ends`` get ``name_base`` added (the reader's table offset, so a clean
        pickle's ends copy over unchanged). Returns ``(end, lo, hi, clean)`` - the entries
        are ``stage[lo:hi]``, ``clean`` means every name passes ``names.name_bytes_problem``
        and ``0 <= start <= end`` - or None when the bytes at ``pos`` are not such a run.
        """
        if data is self.data and pos < self.scanned_end:
            if pos != self.next_pos:
                return None
        elif not self._scan(data, pos, limit):
            return None
        a = self.idx
        b = self.breaks.find(1, a + 1)
        if b < 0:
            b = len(self.breaks)
        _, lbs, names, ss, es = (c[a:b] for c in self.cols)
        n = b - a
        lens = bytes(map(len, names))  # the regex caps names at 255 bytes
        end = pos + _FIXED * n + sum(lens) + sum(map(len, ss)) + sum(map(len, es))
        if b < len(self.breaks):  # where the generic path will hand over again
            self.idx, self.next_pos = b, end + len(self.cols[0][b])
        else:
            self.next_pos = -1
        if lens != b"".join(lbs):
            return None  # a length byte disagrees: leave it to the generic interpreter
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
        stage.names += b"".join(names)
        ne = stage.name_ends
        ne.extend(accumulate(lens, initial=name_base + len(stage.names) - sum(lens)))
        ne.pop(lo)  # drop the `initial` value
        stage.starts.extend(starts)
        stage.ends.extend(ends)
        return end, lo, lo + n, clean
