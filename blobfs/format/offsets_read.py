"""Read a ``*_offsets.pkl`` file safely into an :class:`EntryTable` (FORMAT.md §4-5).

The file is a concatenation of pickles, read until end of file by ``pickle_vm.PickleVM``
(never ``pickle.load``: see that module). Decisions:

* **Refused as a whole** (``OffsetsError``, nothing returned): any global other than
  ``supervisely.api.image_api.BlobImageInfo``, REDUCE/INST/OBJ, EXT*, PERSID/BINPERSID,
  NEXT_BUFFER/READONLY_BUFFER, NEWOBJ/BUILD on anything but that class, and resource bombs
  (str/bytes > 64 KiB, ints > 9 bytes, > 64 nested containers/MARKs, > 50M operations or
  > 10M memo keys per pickle) - wherever they are, also in the 2nd pickle or in a state dict.
* **Not an offsets pickle** (``OffsetsError``): the FIRST pickle cannot be read (gzip, JSON,
  text, truncated, unknown opcode) or does not start with a protocol 2-5 header. Protocol 0/1
  pickles are refused this way: a BlobImageInfo needs ``copy_reg._reconstructor`` + REDUCE
  there, which the SDK refuses too.
* **Partly unreadable**: the entries of the complete pickles before the bad spot are kept
  (as the SDK does) and one problem line ``"<path>: unreadable after byte N (<why>); kept K
  entries"`` is added. Data after the bad spot is never interpreted.
* Empty file: no entries, problem ``"<path>: empty offsets file"``.
* Shapes (per pickle): a list or tuple of entries, a single entry, or a dict name ->
  ``{"offsetStart", "offsetEnd"}`` / ``(start, end)`` / ``[start, end]``. An entry is a
  BlobImageInfo (extra state keys such as ``team_file_id`` ignored) or an API dict
  ``{"title", "teamFileId", "sourceBlob": {"offsetStart", "offsetEnd"}}``. Anything else is
  skipped with a problem line. Entries are numbered from 0 in file order.
* Entry checks: ``names.name_bytes_problem``; offsets are ints (not bool) fitting int64 with
  ``0 <= start <= end`` (and ``end <= tar_size`` when given). Failures skip the entry with
  ``"<path>: entry #<i> <name!r>: <why> (skipped)"``. Duplicates are kept. At most 100
  problem lines are listed, then one summary line counts the rest.

The file is read in 1 MiB chunks (never mapped: a file truncated while mapped would SIGBUS).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from blobfs.errors import OffsetsError
from blobfs.format.entries import EntryTable
from blobfs.format.names import name_bytes_problem
from blobfs.format.offsets_fast import Scanner
from blobfs.format.pickle_vm import (REPEATED_ENTRY, NeedMore, Obj, PickleVM, Refused, Run,
                                     Unreadable)
from blobfs.format.regular import open_regular

CHUNK = 1 << 20
MAX_PROBLEMS = 100
_INT64 = 1 << 63
_MISSING = object()
_NO_PROTO = "no pickle protocol 2-5 header"
_PROTO01_HINT = (" (protocol 0/1 pickles are not read: a BlobImageInfo needs "
                 "copy_reg._reconstructor there, which the SDK refuses too)")


@dataclass
class OffsetsResult:
    table: EntryTable = field(default_factory=EntryTable)
    problems: list[str] = field(default_factory=list)


def read_offsets(path: str | os.PathLike, *, tar_size: int | None = None) -> OffsetsResult:
    """Entries of the offsets file at ``path``; raises ``OffsetsError`` when refused."""
    p = os.fspath(path)
    try:
        with open(open_regular(p), "rb") as f:
            return _Reader(p, f, tar_size).read()
    except OSError as e:
        raise OffsetsError(f"{p}: cannot read offsets file: {e.strerror or e}") from None


class _Reader:
    def __init__(self, path: str, f, tar_size: int | None) -> None:
        self.path, self.f, self.tar_size = path, f, tar_size
        self.size = os.fstat(f.fileno()).st_size
        self.result = OffsetsResult()
        self.table = self.result.table
        self.index = 0  # entry number in file order, skipped ones included
        self.unlisted = 0
        self.buf = b""
        self.off = 0  # file offset of buf[0]
        self.read_to = 0  # file offset up to which we have read
        self.scanner = Scanner()

    # -- problems ------------------------------------------------------------------------
    def problem(self, line: str) -> None:
        if len(self.result.problems) < MAX_PROBLEMS:
            self.result.problems.append(line)
        else:
            self.unlisted += 1

    def skip(self, name, why: str) -> None:
        shown = repr(name[:100]) if type(name) is str else f"<{type(name).__name__}>"
        self.problem(f"{self.path}: entry #{self.index} {shown}: {why} (skipped)")

    # -- reading -------------------------------------------------------------------------
    def refill(self, pos: int, need: int) -> int:
        """Keep ``buf[pos:]``, read until at least ``need`` bytes follow ``pos``; new pos."""
        rest = self.buf[pos:]
        want = max(CHUNK, need - len(rest))
        data = self.f.read(min(want, self.size - self.read_to))
        self.read_to += len(data)
        self.off += pos
        self.buf = rest + data if rest else data
        if len(self.buf) < need:
            raise Unreadable("file shrank while being read", self.off + len(self.buf))
        return 0

    def read(self) -> OffsetsResult:
        if self.size == 0:
            self.problem(f"{self.path}: empty offsets file")
            return self.result
        pos, npickles = 0, 0
        while self.off + pos < self.size:
            start = self.off + pos
            try:
                pos, top, vm = self.one_pickle(pos)
            except Refused as e:
                raise OffsetsError(f"{self.path}: refused: {e.why} at byte {e.pos}") from None
            except Unreadable as e:
                if npickles == 0:
                    hint = _PROTO01_HINT if e.why == _NO_PROTO else ""
                    raise OffsetsError(f"{self.path}: not an offsets pickle: {e.why} at byte "
                                       f"{e.pos}{hint}") from None
                self.problem_final(f"{self.path}: unreadable after byte {start} ({e.why} at "
                                   f"byte {e.pos}); kept {len(self.table)} entries")
                break
            npickles += 1
            self.collect(vm, top, start)
        if self.unlisted:
            self.result.problems.append(
                f"{self.path}: {self.unlisted} more problems not listed")
        return self.result

    def problem_final(self, line: str) -> None:
        self.result.problems.append(line)  # always listed, also past MAX_PROBLEMS

    def one_pickle(self, pos: int):
        if pos + 2 > len(self.buf):
            pos = self.refill(pos, min(2, self.size - self.off - pos))
        if self.buf[pos] != 0x80 or self.size - self.off - pos < 2:
            raise Unreadable(_NO_PROTO, self.off + pos)
        vm = PickleVM(EntryTable(), self.scanner, len(self.table.names))
        while True:
            try:
                pos, stopped = vm.run(self.buf, pos, len(self.buf), self.off,
                                      self.size - self.off, False)
            except NeedMore as e:
                pos = self.refill(e.pos, e.need)
                continue
            if stopped:
                break
            if self.off + pos >= self.size:
                raise Unreadable("truncated pickle (no STOP)", self.off + pos)
            pos = self.refill(pos, 1)
        try:
            top = vm.pop()
        except IndexError:
            raise Unreadable("STOP with an empty stack", self.off + pos - 1) from None
        return pos, top, vm

    # -- shapes --------------------------------------------------------------------------
    def collect(self, vm: PickleVM, top, start: int) -> None:
        t = type(top)
        if t is list or t is tuple:
            seen: set[int] = set()
            for x in top:
                tx = type(x)
                if tx is Run:
                    self.add_run(vm, x)
                    continue
                if tx is dict:
                    # An API dict is an entry too: listed again by reference (a memo get or DUP
                    # per copy, 1-2 bytes), it would stand for millions of entries, as a
                    # BlobImageInfo would (which the VM refuses when fetched).
                    if id(x) in seen:
                        raise OffsetsError(f"{self.path}: refused: {REPEATED_ENTRY} (entry "
                                           f"#{self.index} of the pickle at byte {start})")
                    seen.add(id(x))
                self.entry(x)
        elif t is Obj:
            self.entry(top)
        elif t is dict:
            if "sourceBlob" in top and "title" in top:
                self.entry(top)
            else:
                for k, v in top.items():
                    self.mapping_entry(k, v)
        else:
            self.problem(f"{self.path}: pickle at byte {start} holds a {t.__name__}, "
                         "not a list of entries (skipped)")

    def entry(self, x) -> None:
        t = type(x)
        if t is Obj:
            st = x.state
            self.accept(st.get("name", _MISSING), st.get("offset_start", _MISSING),
                        st.get("offset_end", _MISSING))
        elif t is dict:
            blob = x.get("sourceBlob")
            if type(blob) is not dict:
                self.skip(x.get("title"), "API dict without a sourceBlob dict")
                self.index += 1
                return
            self.accept(x.get("title", _MISSING), blob.get("offsetStart", _MISSING),
                        blob.get("offsetEnd", _MISSING))
        else:
            self.problem(f"{self.path}: entry #{self.index}: a {t.__name__} is not an "
                         "entry (skipped)")
            self.index += 1

    def mapping_entry(self, name, v) -> None:
        if type(v) is dict:
            self.accept(name, v.get("offsetStart", _MISSING), v.get("offsetEnd", _MISSING))
        elif type(v) in (tuple, list) and len(v) == 2:
            self.accept(name, v[0], v[1])
        else:
            self.skip(name, f"value is a {type(v).__name__}, not (start, end)")
            self.index += 1

    def accept(self, name, start, end) -> None:
        why = None
        raw = b""
        if name is _MISSING:
            why = "no name"
        elif type(name) is not str:
            why = f"name is {type(name).__name__}, not str"
        else:
            raw = name.encode("utf-8", "surrogatepass")
            why = name_bytes_problem(raw)
        if why is None:
            why = self.offsets_problem(start, end)
        if why is None:
            self.table.append(raw, start, end)
        else:
            self.skip(name, why)
        self.index += 1

    def offsets_problem(self, start, end) -> str | None:
        for label, v in (("offset_start", start), ("offset_end", end)):
            if v is _MISSING:
                return f"no {label}"
            if type(v) is not int:
                return f"{label} is {type(v).__name__}, not int"
            if not -_INT64 <= v < _INT64:
                return f"{label} {v} does not fit in 64 bits"
        if start < 0:
            return f"offset_start {start} is negative"
        if start > end:
            return f"offset_start {start} > offset_end {end}"
        if self.tar_size is not None and end > self.tar_size:
            return f"offset_end {end} is past the end of the tar ({self.tar_size} bytes)"
        return None

    def add_run(self, vm: PickleVM, run: Run) -> None:
        st, t, lo, hi = vm.stage, self.table, run.lo, run.hi
        ok = run.clean and (self.tar_size is None or max(st.ends[lo:hi]) <= self.tar_size)
        if not ok:
            for i in range(lo, hi):
                self.accept(vm.stage_name(i).decode("utf-8"), st.starts[i], st.ends[i])
            return
        base = vm.name_base
        nlo = st.name_ends[lo - 1] if lo else base
        shift = len(t.names) - nlo
        t.names += st.names[nlo - base:st.name_ends[hi - 1] - base]
        if shift:
            t.name_ends.extend([e + shift for e in st.name_ends[lo:hi]])
        else:  # nothing skipped before this run in its pickle: the ends are already right
            t.name_ends += st.name_ends[lo:hi]
        t.starts += st.starts[lo:hi]
        t.ends += st.ends[lo:hi]
        self.index += hi - lo
