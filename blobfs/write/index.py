"""``blobfs index``: a tar's offsets file, published as ``pack`` publishes its outputs.

The file is written under a hidden temporary name and renamed into place with SIGINT, SIGTERM
and SIGHUP held (``AtomicOutputs``): an interrupt leaves no new file or the whole new one, and
the command can say which. The existing file is refused before the tar is read (``--force``
replaces it).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from blobfs.errors import InputError, one_line
from blobfs.format.names import nfc_twins, quoted, twins_note
from blobfs.format.offsets_write import offsets_batches
from blobfs.format.tarindex import index_tar, split_unusable
from blobfs.write.atomic import AtomicOutputs
from blobfs.write.blobwriter import write_all
from blobfs.write.options import IndexOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IndexResult:
    offsets: Path
    entries: int
    not_indexed: int  # members whose name no reader can use (a warning said which)
    duplicates: int = 0  # item names given by more than one member (a warning said which)


def write_index(tar: Path, out: Path, opts: IndexOptions) -> IndexResult:
    """Index ``tar`` into the offsets file ``out``. A member whose name cannot be an item is
    left out with one warning line; no member left at all is an ``InputError`` (nothing
    written): an empty dataset is a mistake, not a result."""
    # fsync: the file was always synced before its rename; index has no --fsync to opt in.
    with AtomicOutputs([out], force=opts.force, fsync=True) as outputs:
        entries, unusable = split_unusable(index_tar(tar, opts.include, opts.exclude))
        if not entries:  # one line: the error says why the members it saw were left out
            what = (f"no regular member with a usable name ({_unusable_note(unusable)})" if unusable
                    else "no member matches --include/--exclude" if opts.include or opts.exclude
                    else "no regular member")
            raise InputError(f"{tar}: {what}; nothing written")
        if unusable:
            name, why = unusable[0]
            more = f"; {len(unusable) - 1} more such member(s)" if len(unusable) > 1 else ""
            log.warning("%s", one_line(f"{tar}: member {quoted(name)}: {why}; not indexed{more}"))
        names = [name for name, _start, _end in entries]
        twins = nfc_twins(names)
        if twins:
            log.warning("%s", one_line(twins_note(twins, str(tar))))
        duplicates = _duplicates(tar, names)
        fd, _tmp = outputs.file(out)
        try:
            for data in offsets_batches(entries):
                write_all(fd, data, out)
        finally:
            os.close(fd)
        outputs.commit()
    return IndexResult(out, len(entries), len(unusable), duplicates)


def _duplicates(tar: Path, names: list[str]) -> int:
    """How many item names more than one member gives (``a/x.png`` and ``b/x.png`` are both
    ``x.png``), with one warning line. All are indexed, as the SDK indexes them, but readers
    keep the last one and the SDK skips a dataset with a duplicate item."""
    dups = [(name, n) for name, n in Counter(names).items() if n > 1]
    if dups:
        name, n = dups[0]
        more = len(dups) - 1
        log.warning("%s", one_line(
            f"{tar}: item {quoted(name)} is named by {n} members: all are indexed, but a reader "
            f"shows only the last and the SDK skips the dataset"
            + (f"; {more} more such name{'' if more == 1 else 's'}" if more else "")))
    return len(dups)


def _unusable_note(unusable: list[tuple[str, str]]) -> str:
    """The first member left out and why, with how many more."""
    name, why = unusable[0]
    more = f", {len(unusable) - 1} more such member(s)" if len(unusable) > 1 else ""
    return f"member {quoted(name)}: {why}{more}"
