"""A pickle interpreter that only builds plain data: the safe core of the offsets reader.

``pickle.load`` is never used on offsets files: any global it resolves is a call into
arbitrary code, and the C unpickler grows its memo array to the index given by
``LONG_BINPUT`` (4 GiB slots for ``r\\xff\\xff\\xff\\xff``) before anything can refuse it.
This interpreter executes the protocol 2-5 opcodes that build str/bytes/int/float/bool/None,
lists, tuples and dicts, plus exactly one global, ``supervisely.api.image_api.BlobImageInfo``
(FORMAT.md §4/§6), which may only be instantiated by ``NEWOBJ``/``NEWOBJ_EX`` with no
arguments and filled by ``BUILD`` with a dict. It never calls anything it reads.

Errors: ``Refused`` (forbidden construct or a resource bomb: the whole file is refused),
``Unreadable`` (malformed or truncated data: the caller keeps the complete pickles before it),
``NeedMore`` (the unframed opcode at ``pos`` continues past the buffered data: refill, retry).
Every handler checks lengths before it changes any state, so retrying an opcode is safe.

Built data is never traversed recursively (nothing here hashes, compares or reprs arbitrary
values: dict keys are restricted to scalars), so nesting depth is a sanity limit only.
"""
from __future__ import annotations

import struct
from array import array
from bisect import bisect_right

from blobfs.format.entries import EntryTable
from blobfs.format import offsets_fast

ALLOWED_GLOBAL = ("supervisely.api.image_api", "BlobImageInfo")
MAX_STR = 64 * 1024  # any single str/bytes; names are at most 250 bytes
MAX_INT_BYTES = 9  # LONG1/LONG4 payload; offsets must fit int64 anyway
MAX_ITEMS = 50_000_000  # opcodes (each adds at most one reference) per pickle
MAX_MEMO = 10_000_000  # distinct memo keys per pickle (stored ones: not fast-path slots)
MAX_DEPTH = 64  # container nesting; entries sit at depth <= 3
MAX_LINE = 256  # GLOBAL module/name lines
#: The SDK pickles a list of distinct entries, so an entry is never fetched again (memo get) or
#: DUPed. A pickle that does so lists one entry up to MAX_ITEMS times for one or two bytes each:
#: megabytes that cost as much as a dataset of millions of images.
REPEATED_ENTRY = "an entry listed again by reference (DUP or memo get), which the SDK never writes"


class BlobClass:
    """Stand-in for the one allowed global; never instantiated beyond the singleton."""

    def __repr__(self) -> str:
        return "supervisely.api.image_api.BlobImageInfo"


BLOB_CLASS = BlobClass()


class Obj:
    """A BlobImageInfo built by NEWOBJ; ``state`` is filled by BUILD (a copy, as __dict__)."""

    __slots__ = ("state", "depth")

    def __init__(self, state: dict | None = None) -> None:
        self.state = state if state is not None else {}
        self.depth = 1


class Run:
    """``n`` consecutive entries parsed by the fast path, kept in the VM's stage table."""

    __slots__ = ("lo", "hi", "clean")

    def __init__(self, lo: int, hi: int, clean: bool) -> None:
        self.lo, self.hi, self.clean = lo, hi, clean


class Refused(Exception):
    def __init__(self, why: str, pos: int) -> None:
        super().__init__(f"{why} at byte {pos}")
        self.why, self.pos = why, pos


class Unreadable(Exception):
    def __init__(self, why: str, pos: int) -> None:
        super().__init__(f"{why} at byte {pos}")
        self.why, self.pos = why, pos


class NeedMore(Exception):
    def __init__(self, pos: int, need: int) -> None:
        self.pos, self.need = pos, need  # buffer index of the opcode, bytes needed from it


_KEY_TYPES = (str, int, bool, type(None), bytes)
_SCALARS = (str, int, bool, float, bytes, type(None), BlobClass)
_REFUSED_OPS = {
    ord("R"): "REDUCE (a call)", ord("i"): "INST (a call)", ord("o"): "OBJ (a call)",
    0x82: "EXT1 (extension registry)", 0x83: "EXT2 (extension registry)",
    0x84: "EXT4 (extension registry)", ord("P"): "PERSID (persistent id)",
    ord("Q"): "BINPERSID (persistent id)", 0x97: "NEXT_BUFFER (out-of-band buffer)",
    0x98: "READONLY_BUFFER (out-of-band buffer)",
}
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_f64 = struct.Struct(">d").unpack_from


class PickleVM:
    """State of one pickle being executed; feed it buffers with :meth:`run`."""

    def __init__(self, stage: EntryTable, scanner: offsets_fast.Scanner,
                 name_base: int = 0) -> None:
        self.stack: list = []
        self.metastack: list[list] = []
        # The memo lives in three places, each key in exactly one. A key that is new when it
        # is stored and equals memo_count (every MEMOIZE, and PUTs that count up like it)
        # gets a slot in memo_list: 8 bytes, where a dict entry with its int key costs ~65, so
        # a file of nothing but MEMOIZE opcodes stays small. Runs of consecutive such keys are
        # segments (first key, first slot), found by bisect; they skip the fast-path ranges,
        # whose values are synthesized from the stage table and never stored. Any other key
        # (a PUT out of order, or one overwriting a fast-path slot) goes to the dict.
        self.memo: dict[int, object] = {}
        self.memo_list: list = []
        self.seg_keys = array("q")
        self.seg_slots = array("q")
        self.seg_next = -1  # the key that extends the last segment
        self.prefix = 0  # keys below it sit at their own index in memo_list (the common case)
        self.memo_count = 0  # distinct memo keys = index MEMOIZE uses next (pickle's len(memo))
        self.dense = True  # memo keys are exactly range(memo_count)
        self.fast_ranges: list[tuple[int, int, int]] = []  # (memo_lo, stage_lo, n)
        self.items = 0
        self.stage = stage  # fast-path entries; name_ends are offset by name_base
        self.scanner = scanner
        self.name_base = name_base
        self.fast_off = -1  # absolute offset before which the fast path is not retried
        self.deep: dict[int, tuple[object, int]] = {}  # id -> (container, depth >= 2)

    # -- driving -------------------------------------------------------------------------
    def run(self, data, pos: int, limit: int, base: int, file_end: int, framed: bool):
        """Execute opcodes in ``data[pos:limit]``; ``base`` = file offset of ``data[0]``,
        ``file_end`` = buffer index where the file ends. Returns ``(pos, stopped)``: stopped
        after STOP, or (unframed only) at ``limit``. Raises NeedMore/Unreadable/Refused."""
        ops = _DISPATCH
        while pos < limit:
            op = data[pos]
            if op == 0x68 and pos + 1 < limit and data[pos + 1] == 3 and base + pos > self.fast_off:
                new = self._try_fast(data, pos, limit, base)
                if new > pos:
                    pos = new
                    continue
            self.items += 1
            if self.items > MAX_ITEMS:
                raise Refused(f"more than {MAX_ITEMS} pickle operations", base + pos)
            if op == 0x2E:  # STOP
                return pos + 1, True
            if op == 0x95:  # FRAME
                if framed:
                    raise Unreadable("FRAME inside a frame", base + pos)
                self._need(data, pos, 9, limit, file_end, framed, base)
                flen = _u64(data, pos + 1)[0]
                start = pos + 9
                if flen > file_end - start:
                    raise Unreadable(f"FRAME of {flen} bytes runs past the end of the file", base + pos)
                if start + flen > limit:
                    raise NeedMore(pos, 9 + flen)
                end, stopped = self.run(data, start, start + flen, base, file_end, True)
                if stopped and end != start + flen:
                    raise Unreadable("STOP before the end of its frame", base + end)
                if stopped:
                    return end, True
                pos = end
                continue
            handler = ops.get(op)
            if handler is None:
                why = _REFUSED_OPS.get(op)
                if why is not None:
                    raise Refused(f"refused opcode {why}", base + pos)
                raise Unreadable(f"unsupported opcode 0x{op:02x}", base + pos)
            try:
                pos = handler(self, data, pos, limit, file_end, framed, base)
            except IndexError:
                raise Unreadable(f"stack underflow in opcode 0x{op:02x}", base + pos) from None
        return pos, False

    def _need(self, data, pos, n, limit, file_end, framed, base) -> int:
        if pos + n <= limit:
            return pos + n
        if framed:
            raise Unreadable("opcode runs past the end of its frame", base + pos)
        if pos + n > file_end:
            raise Unreadable("truncated pickle", base + pos)
        raise NeedMore(pos, n)

    # -- fast path -----------------------------------------------------------------------
    def _try_fast(self, data, pos, limit, base) -> int:
        stored = self.memo_stored
        ok = (self.dense and stored(3) is BLOB_CLASS and stored(6) == "name"
              and stored(8) == "offset_start" and stored(9) == "offset_end"
              and all(type(stored(k)) is str for k in (6, 8, 9)))
        if not ok:
            self.fast_off = base + pos
            return pos
        got = self.scanner.parse_run(data, pos, limit, self.stage, self.name_base)
        if got is None:
            return pos  # the generic path takes this entry
        end, lo, hi, clean = got
        n = hi - lo
        self.fast_ranges.append((self.memo_count, lo, n))
        self.memo_count += 3 * n
        self.items += n
        self.stack.append(Run(lo, hi, clean))
        return end

    def stage_name(self, i: int) -> bytes:
        st, b = self.stage, self.name_base
        return st.names[(st.name_ends[i - 1] if i else b) - b:st.name_ends[i] - b]

    def entry_obj(self, i: int) -> Obj:
        st = self.stage
        o = Obj({"name": self.stage_name(i).decode("utf-8"), "offset_start": st.starts[i],
                 "offset_end": st.ends[i]})
        o.depth = 2
        return o

    def run_objs(self, r: Run) -> list:
        return [self.entry_obj(i) for i in range(r.lo, r.hi)]

    def _fast_slot(self, key: int) -> int:
        """``3 * stage index + kind`` of a fast-path memo key (kind 0 obj, 1 dict, 2 name),
        or -1 when ``key`` is in no fast range."""
        ranges = self.fast_ranges
        k = bisect_right(ranges, (key, 1 << 62)) - 1
        if k < 0:
            return -1
        mlo, slo, n = ranges[k]
        if key >= mlo + 3 * n:
            return -1
        return 3 * slo + key - mlo

    def _fast_memo(self, key: int):
        slot = self._fast_slot(key)
        if slot < 0:
            return None
        e, kind = divmod(slot, 3)
        o = self.entry_obj(e)
        return (o, o.state, o.state["name"])[kind]

    def _list_slot(self, key: int) -> int:
        """Index of ``key`` in memo_list, or -1."""
        keys = self.seg_keys
        k = bisect_right(keys, key) - 1
        if k < 0:
            return -1
        slots = self.seg_slots
        i = slots[k] + key - keys[k]
        end = slots[k + 1] if k + 1 < len(slots) else len(self.memo_list)
        return i if i < end else -1

    def memo_stored(self, key: int):
        """The value stored under ``key`` (fast-path slots are not), or _MISSING."""
        if key < self.prefix:
            return self.memo_list[key]
        i = self._list_slot(key)
        if i >= 0:
            return self.memo_list[i]
        return self.memo.get(key, _MISSING)

    # -- helpers used by handlers ---------------------------------------------------------
    def expand(self, items: list) -> list:
        """Replace fast-path Runs by the objects they stand for (rare shapes only)."""
        if not any(type(x) is Run for x in items):
            return items
        out: list = []
        for x in items:
            if type(x) is Run:
                out.extend(self.run_objs(x))
            else:
                out.append(x)
        return out

    def pop(self):
        st = self.stack
        x = st.pop()
        if type(x) is Run:
            st.extend(self.run_objs(x))
            x = st.pop()
        return x

    def top(self):
        st = self.stack
        x = st[-1]
        if type(x) is Run:
            st.pop()
            st.extend(self.run_objs(x))
            x = st[-1]
        return x

    def pop_mark(self) -> list:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def memo_put(self, key: int, value, pos: int) -> None:
        memo, lst = self.memo, self.memo_list
        if key == self.memo_count and key not in memo:
            # New: list and fast keys are all below memo_count, so only the dict could hold it.
            if key != self.seg_next:
                self.seg_keys.append(key)
                self.seg_slots.append(len(lst))
            self.seg_next = key + 1
            if key == len(lst):
                self.prefix = key + 1
            lst.append(value)
        else:
            i = key if key < self.prefix else self._list_slot(key)
            if i >= 0:
                lst[i] = value
                return
            new = key not in memo and self._fast_slot(key) < 0
            memo[key] = value
            if not new:
                return
            self.dense = False  # a new key other than memo_count
        self.memo_count += 1
        if len(lst) + len(memo) > MAX_MEMO:
            raise Refused(f"more than {MAX_MEMO} memo entries", pos)

    def memo_get(self, key: int, pos: int):
        v = self.memo_list[key] if key < self.prefix else self.memo_stored(key)
        if v is _MISSING:
            v = self._fast_memo(key)
            if v is None:
                raise Unreadable(f"memo key {key} is not defined", pos)
        if type(v) is Obj:
            raise Refused(REPEATED_ENTRY, pos)
        return v

    def depth(self, x) -> int:
        if isinstance(x, _SCALARS):
            return 0
        if type(x) is Obj:
            return x.depth
        rec = self.deep.get(id(x))
        return rec[1] if rec is not None and rec[0] is x else 1

    def nest(self, container, children, pos: int) -> None:
        """Record that ``children`` were put in ``container``; refuse nesting deeper than 64."""
        d = 0
        for c in children:
            if not isinstance(c, _SCALARS):
                cd = self.depth(c) if type(c) is not Run else 2
                if cd > d:
                    d = cd
        if d == 0:
            return
        d += 1
        if d > MAX_DEPTH:
            raise Refused(f"containers nested more than {MAX_DEPTH} deep", pos)
        if type(container) is Obj:
            container.depth = max(container.depth, d)
        elif d > self.depth(container):
            self.deep[id(container)] = (container, d)


_MISSING = object()


from blobfs.format.pickle_ops import DISPATCH as _DISPATCH  # noqa: E402  (ops need PickleVM names)
