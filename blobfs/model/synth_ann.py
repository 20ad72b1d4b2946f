"""Annotations synthesized for items without one (``--synthesize-ann``).

The SDK drops a whole dataset when one item lacks its annotation (FORMAT.md §7). An empty
annotation only needs the image size, which the image header gives, so such items get the
exact JSON the SDK writes for an empty annotation. Real annotation files always win: an item
gets one only when neither ``NAME.json`` nor the old-style ``STEM.json`` exists. Sizes are read
lazily, on first access, and kept.

Memory: a training job reads every annotation of a 1,000,000-item mount, and each daemon
worker process keeps its own state, so it is per item number, not per name: one byte says "synthesized", four bytes place it in
the listing, sixteen keep its size once read (21 bytes an item; the set of names and dict of
JSON bytes this replaces cost ~450). The JSON is rebuilt from the size on each call, which
costs less than the lookup before it.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from blobfs.errors import BlobfsError
from blobfs.format.emptyann import empty_ann_json as synthesize_ann
from blobfs.format.names import ann_names

if TYPE_CHECKING:
    from blobfs.model.project import Dataset

log = logging.getLogger(__name__)

_UNREAD = -1


class SynthError(OSError):
    """EIO for a synthesized annotation whose image header does not decode; ``reason`` says
    why (one line), so that ``unpack`` can skip that one file and name the cause."""

    def __init__(self, ann_name: str, reason: str) -> None:
        super().__init__(errno.EIO, os.strerror(errno.EIO), ann_name)
        self.reason = reason


@dataclass(frozen=True)
class RealAnn:
    """A dataset's real ``ann/`` as the view shows it: its names, and a stamp that changes
    when they may have (``folderscan.folder_stamp``)."""

    names: Callable[[], Iterable[str]]
    stamp: Callable[[], object]


class _Gaps:
    """One dataset's items that get a synthesized annotation."""

    __slots__ = ("order", "flags", "sizes", "stamp")

    def __init__(self, n: int, stamp: object) -> None:
        self.order = array("I")          # their item numbers, in item order: the listing
        self.flags = bytearray(n)        # 1 where item i gets one
        self.sizes: array | None = None  # width, height of item i at 2i, 2i+1 (or _UNREAD)
        self.stamp = stamp               # of the real ann/ they were worked out from


class AnnSynthesizer:
    def __init__(self, datasets: list["Dataset"], *, log_failures: bool = True) -> None:
        self._datasets = datasets
        # The mount's log line for an EIO; off where the caller reports SynthError itself.
        self._log_failures = log_failures
        self._lock = threading.Lock()
        self._gaps: dict[int, _Gaps] = {}

    def gaps(self, k: int, present: RealAnn) -> _Gaps:
        """Dataset ``k``'s items without annotation, worked out from the real ``ann/`` once,
        and again whenever its stamp changed: an annotation added while mounted would
        otherwise be listed twice (real, and synthesized), one removed would be missing."""
        stamp = present.stamp()  # before the names: a change after it shows next time
        with self._lock:
            old = self._gaps.get(k)
        if old is not None and old.stamp == stamp:
            return old
        items = self._datasets[k].items
        have = set(present.names())
        gaps = _Gaps(len(items), stamp)
        gaps.sizes = old.sizes if old is not None else None  # image sizes do not change
        if not have:  # no ann/ folder at all, the usual reason for the option: every item
            gaps.order = array("I", range(len(items)))
            gaps.flags = bytearray(b"\1") * len(items)
        else:
            for i, name in enumerate(items.names()):
                new, old = ann_names(name)
                if new not in have and (old is None or old not in have):
                    gaps.order.append(i)
                    gaps.flags[i] = 1
        with self._lock:
            cur = self._gaps.get(k)
            if cur is not None and cur.stamp == stamp:
                return cur  # another thread was first
            self._gaps[k] = gaps
            return gaps

    def listing(self, k: int, present: RealAnn, start: int) -> Iterable[tuple[int, str, int]]:
        """(position, ``ann/`` name, item number) of each synthesized file from ``start`` on;
        positions are stable, so a listing resumes without a rescan."""
        gaps = self.gaps(k, present)
        items = self._datasets[k].items
        for j in range(max(start, 0), len(gaps.order)):
            i = gaps.order[j]
            yield j, items.name(i) + ".json", i

    def has(self, k: int, ann_name: str, present: RealAnn) -> bool:
        """Whether ``ann/<ann_name>`` is a synthesized file of dataset ``k``."""
        i = self.item(k, ann_name)
        return i >= 0 and self.gaps(k, present).flags[i] == 1

    def item(self, k: int, ann_name: str) -> int:
        """The item number ``ann/<ann_name>`` annotates, or -1."""
        if not ann_name.endswith(".json"):
            return -1
        return self._datasets[k].items.find(ann_name[: -len(".json")])

    def data(self, k: int, ann_name: str) -> bytes:
        """The JSON for ``ann/<ann_name>`` (one of ``listing``'s names); ``SynthError`` (EIO)
        when the image header is unreadable."""
        gaps = self._gaps[k]  # a name reaches here only through has() or listing()
        i = self.item(k, ann_name)
        sizes = gaps.sizes
        if sizes is None:
            with self._lock:
                if gaps.sizes is None:
                    gaps.sizes = array("q", [_UNREAD]) * (2 * len(gaps.flags))
                sizes = gaps.sizes
        if sizes[2 * i] == _UNREAD:
            width, height = self._read_size(k, i, ann_name)
            if not (0 <= width < 1 << 62 and 0 <= height < 1 << 62):
                return synthesize_ann(width, height)  # not kept (Pillow refuses such sizes)
            sizes[2 * i + 1] = height
            sizes[2 * i] = width  # last: whoever sees the width set sees the height too
        return synthesize_ann(sizes[2 * i], sizes[2 * i + 1])

    def _read_size(self, k: int, i: int, ann_name: str) -> tuple[int, int]:
        from blobfs.preview.imagefacts import HEADER_PREFIX, facts_from_prefix

        items = self._datasets[k].items
        try:
            facts = facts_from_prefix(items.read(i, HEADER_PREFIX), lambda: items.read(i),
                                      items.name(i))
        except BlobfsError as e:
            if self._log_failures:
                log.warning("cannot synthesize %s: %s", ann_name, e)
            raise SynthError(ann_name, str(e)) from None
        return facts.width, facts.height
