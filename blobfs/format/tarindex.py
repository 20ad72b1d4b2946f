"""Which entries the SDK's ``save_blob_offsets_pkl`` writes for a tar (FORMAT.md §4).

Checked against the SDK source (``supervisely/io/fs.py``: ``_process_tar_generator``): every
member with ``member.isfile()``, in archive order, optionally filtered by the *full* member
name, named ``os.path.basename(member.name)``, range ``[offset_data, offset_data + size)``.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence

from blobfs.format.names import new_name_problem
from blobfs.format.tarheaders import iter_members


def _matches(patterns: Sequence[str], full: str, base: str) -> bool:
    # `tar cf x.tar ./a` names its members ./a/...: a glob a/* means them too.
    dotted = full.startswith("./")
    return any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(base, p)
               or (dotted and fnmatch.fnmatchcase(full[2:], p)) for p in patterns)


def index_tar(path: str | os.PathLike[str], include: Sequence[str] = (),
              exclude: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    """The entries ``sly.fs.save_blob_offsets_pkl`` writes for this tar.

    One ``(basename of member name, offset_data, offset_data + size)`` per regular member,
    in archive order (the SDK: ``member.isfile()``, ``os.path.basename(member.name)``).
    ``include``/``exclude`` are case-sensitive fnmatch globs (``*`` also matches ``/``),
    each tested against the full member name (also without a leading ``./``) and against its
    basename; a member is kept
    when it matches some include (or there are none) and no exclude. Duplicated basenames
    are kept, as the SDK keeps them.
    """
    out: list[tuple[str, int, int]] = []
    append = out.append
    for m in iter_members(path):
        if not m.isreg():
            continue
        base = m.name.rpartition("/")[2]     # == os.path.basename on POSIX, as the SDK does
        if include and not _matches(include, m.name, base):
            continue
        if exclude and _matches(exclude, m.name, base):
            continue
        append((base, m.offset_data, m.offset_data + m.size))
    return out


def split_unusable(entries: list[tuple[str, int, int]]
                   ) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """(the entries blobfs indexes, (name, why) of the others). Every reader skips a name
    that cannot be an item name (``.``, ``..``, control characters, not UTF-8, too long:
    ``names.name_problem``), so written to an offsets file it would only be a dead entry; and
    blobfs makes no name with a C1 control character (``names.new_name_problem``)."""
    kept: list[tuple[str, int, int]] = []
    bad: list[tuple[str, str]] = []
    for entry in entries:
        why = new_name_problem(entry[0])
        if why:
            bad.append((entry[0], why))
        else:
            kept.append(entry)
    return kept, bad
