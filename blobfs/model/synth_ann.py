"""Annotations synthesized for items without one (``--synthesize-ann``).

The SDK drops a whole dataset when one item lacks its annotation (FORMAT.md §7). An empty
annotation only needs the image size, which the image header gives, so such items get the
exact JSON the SDK writes for an empty annotation. Real annotation files always win: an item
gets one only when neither ``NAME.json`` nor the old-style ``STEM.json`` exists. Sizes are read
lazily, on first access, and kept.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Iterable

from blobfs.errors import BlobfsError
from blobfs.format.names import ann_names

if TYPE_CHECKING:
    from blobfs.model.project import Dataset

log = logging.getLogger(__name__)


class SynthError(OSError):
    """EIO for a synthesized annotation whose image header does not decode; ``reason`` says
    why (one line), so that ``unpack`` can skip that one file and name the cause."""

    def __init__(self, ann_name: str, reason: str) -> None:
        super().__init__(errno.EIO, os.strerror(errno.EIO), ann_name)
        self.reason = reason


class AnnSynthesizer:
    def __init__(self, datasets: list["Dataset"], *, log_failures: bool = True) -> None:
        self._datasets = datasets
        # The mount's log line for an EIO; off where the caller reports SynthError itself.
        self._log_failures = log_failures
        self._lock = threading.Lock()
        self._missing: dict[int, set[str]] = {}
        self._cache: dict[tuple[int, str], bytes] = {}

    def missing(self, k: int, present: Callable[[], Iterable[str]]) -> set[str]:
        """``ann/`` names to synthesize in dataset ``k``; ``present()`` lists the real ones."""
        with self._lock:
            if k in self._missing:
                return self._missing[k]
        have = set(present())
        out = set()
        for name in self._datasets[k].items.names():
            new, old = ann_names(name)
            if new not in have and (old is None or old not in have):
                out.add(new)
        with self._lock:
            self._missing[k] = out
        return out

    def item(self, k: int, ann_name: str) -> int:
        return self._datasets[k].items.find(ann_name[: -len(".json")])

    def data(self, k: int, ann_name: str) -> bytes:
        """The JSON for ``ann/<ann_name>``; ``SynthError`` (EIO) when the image header is
        unreadable."""
        with self._lock:
            data = self._cache.get((k, ann_name))
        if data is not None:
            return data
        from blobfs.preview.imagefacts import HEADER_PREFIX, facts_from_prefix
        from blobfs.preview.synth import synthesize_ann

        items = self._datasets[k].items
        i = self.item(k, ann_name)
        try:
            facts = facts_from_prefix(items.read(i, HEADER_PREFIX), lambda: items.read(i),
                                      items.name(i))
        except BlobfsError as e:
            if self._log_failures:
                log.warning("cannot synthesize %s: %s", ann_name, e)
            raise SynthError(ann_name, str(e)) from None
        data = synthesize_ann(facts.width, facts.height)
        with self._lock:
            self._cache[(k, ann_name)] = data
        return data


