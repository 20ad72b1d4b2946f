"""``info --images``: what the images of a project are, from their headers only.

One small read per item (``HEADER_PREFIX`` bytes, the whole item only when a JPEG's header
is longer), no pixel decoding: a 300,000-image blob is summarized in the time it takes to
read 300,000 short ranges.
"""
from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Any, Iterator

import click

from blobfs.preview.imagefacts import HEADER_PREFIX, ImageHeaderError, facts_from_prefix

log = logging.getLogger(__name__)

#: Upper bounds (inclusive, pixels) of the longest-side histogram; the last bucket is open.
SIDE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: Show a progress bar from this many items on (when stderr is a terminal).
PROGRESS_FROM = 2000
#: Unreadable items named in the report (the count is always complete).
EXAMPLES = 10


def _items(project: Any) -> Iterator[tuple[Any, int]]:
    for ds in project.datasets:
        for i in range(len(ds.items)):
            yield ds, i


def images_report(project: Any, progress: bool = False) -> dict[str, Any]:
    """Formats, modes, width/height ranges and a longest-side histogram of every item.

    JSON-serializable. ``progress``: allow a progress bar on stderr (shown only when stderr is
    a terminal and the project has at least ``PROGRESS_FROM`` items).
    """
    total = sum(len(ds.items) for ds in project.datasets)
    formats: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    hist = [0] * (len(SIDE_BUCKETS) + 1)
    wmin = hmin = None
    wmax = hmax = 0
    nbytes = 0
    bad = 0
    examples: list[str] = []
    show = progress and total >= PROGRESS_FROM and sys.stderr.isatty()
    with click.progressbar(length=total, label="reading image headers", file=sys.stderr) if show else _NoBar() as bar:
        for ds, i in _items(project):
            name = ds.items.name(i)
            where = f"{ds.relpath}/img/{name}" if ds.relpath else f"img/{name}"
            nbytes += ds.items.size(i)
            try:
                f = facts_from_prefix(ds.items.read(i, HEADER_PREFIX), lambda: ds.items.read(i), where)
            except (ImageHeaderError, OSError) as e:
                bad += 1
                if len(examples) < EXAMPLES:
                    examples.append(where)
                log.debug("%s", e)
            else:
                formats[f.format] += 1
                modes[f.mode] += 1
                wmin = f.width if wmin is None else min(wmin, f.width)
                hmin = f.height if hmin is None else min(hmin, f.height)
                wmax, hmax = max(wmax, f.width), max(hmax, f.height)
                side = max(f.width, f.height)
                hist[next((k for k, b in enumerate(SIDE_BUCKETS) if side <= b), len(SIDE_BUCKETS))] += 1
            bar.update(1)
    readable = total - bad
    return {
        "items": total,
        "readable": readable,
        "unreadable": bad,
        "unreadable_examples": examples,
        "bytes": nbytes,
        "formats": dict(formats.most_common()),
        "modes": dict(modes.most_common()),
        "width": {"min": wmin, "max": wmax if readable else None},
        "height": {"min": hmin, "max": hmax if readable else None},
        "longest_side": [
            {"upto": b, "count": n} for b, n in zip((*SIDE_BUCKETS, None), hist)
        ],
    }


class _NoBar:
    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _counts(c: dict[str, int], total: int) -> str:
    return ", ".join(f"{k} {n} ({100 * n / total:.0f}%)" for k, n in c.items()) or "-"


def format_images_report(report: dict[str, Any]) -> str:
    """Human-readable text of ``images_report`` (several lines, no trailing newline)."""
    n, ok = report["items"], report["readable"]
    lines = [f"images:       {n} items, {report['bytes']:,} bytes"]
    if report["unreadable"]:
        ex = ", ".join(report["unreadable_examples"])
        more = " ..." if report["unreadable"] > len(report["unreadable_examples"]) else ""
        lines.append(f"unreadable:   {report['unreadable']} (e.g. {ex}{more})")
    if ok:
        w, h = report["width"], report["height"]
        lines.append(f"formats:      {_counts(report['formats'], ok)}")
        lines.append(f"modes:        {_counts(report['modes'], ok)}")
        lines.append(f"width:        {w['min']}..{w['max']} px")
        lines.append(f"height:       {h['min']}..{h['max']} px")
        lines.append("longest side:")
        peak = max(b["count"] for b in report["longest_side"]) or 1
        lo = 1
        for b in report["longest_side"]:
            label = f"{lo}-{b['upto']}" if b["upto"] else f">{lo - 1}"
            if b["upto"]:
                lo = b["upto"] + 1
            if b["count"]:
                bar = "#" * max(1, round(30 * b["count"] / peak))
                lines.append(f"  {label:>11} px  {b['count']:>9}  {bar}")
    return "\n".join(lines)
