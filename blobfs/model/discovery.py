"""Which folders of a project are datasets, exactly as the SDK decides (FORMAT.md §1).

``sly.Project(dir, READ)`` treats every sub-folder as a candidate dataset, recursively, except
that a folder whose project-relative path *ends with* (plain string suffix) one of
``img ann img_info seg meta blob datasets`` is not a dataset, and the SDK does not descend into
folders ending with ``img ann img_info seg meta blob`` (it does descend into ``datasets``, which
is how nested datasets ``A/datasets/B`` — named ``A/B`` — are found). The suffix quirk is kept on
purpose: a folder called ``train_img`` is ignored by the SDK, so blobfs ignores it too.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from blobfs.format.names import is_image_name

if TYPE_CHECKING:
    from blobfs.model.hidden import Tally

NOT_DATASET_SUFFIXES = ("img", "ann", "img_info", "seg", "meta", "blob", "datasets")
NO_DESCEND_SUFFIXES = ("img", "ann", "img_info", "seg", "meta", "blob")
OFFSETS_SUFFIX = "_offsets.pkl"


@dataclass(frozen=True)
class FoundDataset:
    name: str      # SDK name: "A/B" for A/datasets/B
    relpath: str   # folder relative to the project root
    offsets: tuple[str, ...]  # offsets file names directly inside, sorted
    has_img: bool
    has_ann: bool


def dataset_name(relpath: str) -> str:
    """SDK dataset name of a project-relative folder (``A/datasets/B`` → ``A/B``)."""
    return "/".join(part for part in relpath.split("/") if part != "datasets")


def is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()`` (symlinks followed), False where that raises: unlike
    ``Path.is_dir``, a ``DirEntry`` raises ELOOP for links leading to each other, and such an
    entry must not end a folder's scan (or open the project with a traceback)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def is_file(entry: os.DirEntry) -> bool:
    """``entry.is_file()``, False where it raises (see :func:`is_dir`)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def scan_dataset_dir(path: Path) -> tuple[tuple[str, ...], bool, bool]:
    """(offsets file names, has img/ folder, has ann/ folder) of one candidate folder."""
    offsets: list[str] = []
    has_img = has_ann = False
    try:
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                if name.endswith(OFFSETS_SUFFIX) and len(name) > len(OFFSETS_SUFFIX):
                    # Whatever its type: one that is no regular file (a FIFO, a link to
                    # /dev/zero) is reported when opened, not silently taken for no items.
                    offsets.append(name)
                elif name == "img":
                    has_img = is_dir(entry)
                elif name == "ann":
                    has_ann = is_dir(entry)
    except OSError:
        pass
    return tuple(sorted(offsets)), has_img, has_ann


def leads_round(target: str, reals: Iterable[str]) -> bool:
    """Whether a symlink to folder ``target`` (a realpath), met below the real folders
    ``reals`` (realpaths of the folder holding it and of every folder on the way down to it),
    leads round in a circle: ``target`` is one of them or above one, so descending from it
    meets the link again (``up -> ..``, or ``a/x -> ../b`` with ``b/y -> ../a``). Any endless
    path passes some link twice, so hiding these keeps every walk finite; a link to a sibling
    or to a folder below stays."""
    prefix = target.rstrip("/") + "/"
    return any((real + "/").startswith(prefix) for real in reals)


def unlisted_line(path: Path, why: str) -> str:
    """The problem line of a folder :func:`find_datasets` could not look into."""
    return f"{path}: {why}; any dataset in it is left out"


def find_datasets(root: Path, unlisted: list[tuple[str, str]] | None = None) -> list[FoundDataset]:
    """Every folder below ``root`` that could hold items (has offsets, ``img/`` or ``ann/``),
    in sorted order. Whether the SDK would *load* it is decided later, item by item. Symlinked
    folders are followed by the view's rules: inside the project, never round in a circle
    (which would find the same datasets again, 40 links deep). A folder that cannot be listed
    (EACCES) or is a link leading out of the project may hold datasets nobody can see: it is
    appended to ``unlisted`` as (relpath, why) so that the caller reports it instead of
    leaving its items out unsaid (``blob/`` is none: opening follows it wherever it leads)."""
    found: list[FoundDataset] = []
    root_real = os.path.realpath(root)
    stack: list[tuple[str, tuple[str, ...]]] = [("", (root_real,))]  # folder, reals on the way
    while stack:
        rel, reals = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                subdirs = sorted((e.name, e.is_symlink()) for e in it if is_dir(e))
        except OSError as e:
            if unlisted is not None:
                unlisted.append((rel, f"cannot list: {e.strerror or e}"))
            continue
        for name, link in reversed(subdirs):
            child = f"{rel}/{name}" if rel else name
            real = os.path.realpath(root / child)
            if not (real + "/").startswith(root_real + "/"):
                # a symlink leading out of the project is never followed
                if unlisted is not None and not child.endswith(NO_DESCEND_SUFFIXES):
                    unlisted.append((child, "symlink leads outside the project"))
                continue
            if link and leads_round(real, reals):
                continue
            if not child.endswith(NO_DESCEND_SUFFIXES):
                stack.append((child, (*reals, real)))
        if rel and not rel.endswith(NOT_DATASET_SUFFIXES):
            offsets, has_img, has_ann = scan_dataset_dir(root / rel)
            if offsets or has_img or has_ann:
                found.append(FoundDataset(dataset_name(rel), rel, offsets, has_img, has_ann))
    found.sort(key=lambda d: d.relpath)
    return found


def list_image_files(img_dir: Path, skipped: list[tuple[str, str]] | None = None,
                     no_items: Tally | None = None) -> list[tuple[str, int]]:
    """(name, size) of the image files directly inside ``img_dir`` (sub-folders ignored).
    An entry with an image name that is no regular file (a FIFO, socket, device, folder or
    dangling symlink: reading a FIFO would block) is no image either; it is appended to
    ``skipped`` as (name, why) so that the caller can report it instead of dropping it.
    ``no_items`` counts every entry that is no image file (for the view's log line)."""
    out: list[tuple[str, int]] = []
    try:
        with os.scandir(img_dir) as it:
            for entry in it:
                if not is_image_name(entry.name):
                    if no_items is not None:
                        no_items.add(entry.name, lambda: img_entry_kind(entry))
                    continue
                if is_file(entry):
                    out.append((entry.name, entry.stat().st_size))
                    continue
                if skipped is not None:
                    skipped.append((entry.name, not_regular_why(entry)))
                if no_items is not None:
                    no_items.add(entry.name, lambda: img_entry_kind(entry))
    except FileNotFoundError:
        pass
    out.sort()
    if skipped:
        skipped.sort()
    return out


def file_kind(mode: int) -> str:
    """What a file that is no regular file is, in words."""
    for test, kind in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return kind
    return "special file"


def _mode_or_why(entry: os.DirEntry | Path, link: str) -> int | str:
    """``entry``'s mode with symlinks followed, or why there is none, worded with ``link``
    ("link leading" for the view's log line, "symlink leads" for a problem line)."""
    try:
        return entry.stat().st_mode
    except FileNotFoundError:
        return f"{link} nowhere"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{link} round in a circle"
        return f"cannot stat: {e.strerror or e}"


def entry_kind(entry: os.DirEntry) -> str:
    """What ``entry``, no regular file, is in a word or two (symlinks followed): "FIFO",
    "socket", "link leading nowhere", "link to a character device"."""
    mode = _mode_or_why(entry, "link leading")
    if isinstance(mode, str):
        return mode
    kind = file_kind(mode)
    return f"link to a {kind}" if entry.is_symlink() else kind


def img_entry_kind(entry: os.DirEntry) -> str:
    """What an entry of a real ``img/`` that is no item is, in a word or two."""
    if is_dir(entry):
        return "folder in img/"
    if is_file(entry):
        return "no image file name"
    return entry_kind(entry)


def not_regular_why(entry: os.DirEntry | Path) -> str:
    """Why ``entry`` (symlinks followed) is not read as a regular file."""
    mode = _mode_or_why(entry, "symlink leads")
    if isinstance(mode, str):
        return mode
    if stat.S_ISREG(mode):  # replaced by a regular file since it was listed
        return "changed while listed"
    return f"not a regular file ({file_kind(mode)})"
