"""Checks behind ``blobfs verify``: offsets against tar headers, annotations, optional decode.

Every check produces one-line problems naming the file; nothing here raises for bad input.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import unicodedata
from pathlib import Path
from typing import Callable

from blobfs.errors import BlobfsError, decode_why, one_line
from blobfs.format.names import ann_names, nfc_twins, quoted, shown, twins_note
from blobfs.model.discovery import unlisted_line
from blobfs.model.jsonfile import JsonTooLarge, load_json
from blobfs.model.project import Dataset, Project
from blobfs.model.blobsource import BlobSource

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def _member_ranges(src: BlobSource, problems: list[str]
                   ) -> tuple[dict[tuple[int, int], str], set[str]] | None:
    """(data range → member base name, every member base name) of the tar."""
    from blobfs.format.tarheaders import regular_members

    try:
        members = regular_members(src.path)
    except BlobfsError as e:
        problems.append(str(e))
        return None
    ranges = {(m.offset_data, m.offset_data + m.size): m.name.rpartition("/")[2] for m in members}
    return ranges, set(ranges.values())


def check_ranges(project: Project, problems: list[str]) -> None:
    """Each blob item's range must be exactly one regular member's data in its tar: a range
    that covers headers or other members' bytes is served as given but reported here.

    Names are not required to match members (a platform download names items freely,
    FORMAT.md §4), but an item whose range is the data of member ``b.png`` while the tar also
    has a member ``a.png`` of the item's own name is reported: the offsets file was written
    for another tar with the same layout (members moved between folders), and every such
    item would be served another image's bytes."""
    tars = {id(s): _member_ranges(s, problems) for s in project.sources}
    for ds in project.datasets:
        items = ds.items
        for i in range(len(items)):
            src = items.source(i)
            if src is None:
                continue
            tar = tars.get(id(src))
            if tar is None:
                continue
            ranges, bases = tar
            start, end = items.range(i)
            name = items.name(i)
            member = ranges.get((start, end))
            if member is None:
                problems.append(f"{src.path}: item {ds.relpath}/img/{name} range "
                                f"[{start}, {end}) is not the data of a member of this tar")
            elif member != name and name in bases:
                problems.append(f"{src.path}: item {ds.relpath}/img/{name} range [{start}, {end}) "
                                f"is the data of member {quoted(member)}, though the tar has a member "
                                f"{name!r} (an offsets file written for another tar?)")


def check_annotations(ds: Dataset, decode: bool, problems: list[str],
                      progress: Progress | None = None) -> None:
    """Exactly one annotation per item, parseable JSON; with ``decode`` the image opens with
    Pillow and its size matches the annotation's ``size``. An annotation reached through a
    symlink leading outside the project is not read: the mount hides it (``view.py``), so for a
    client the item has none."""
    where = ds.path or ds.relpath
    if ds.ann_dir is None and not (ds.path and os.path.isdir(ds.path / "ann")):
        # (one that is there but hidden, a link leading out, is a problem of opening)
        problems.append(f"{where}: no ann/ folder (the SDK skips this dataset)")
    ann_dir = ds.ann_dir
    if ann_dir is not None:
        try:
            os.stat(os.path.join(ann_dir, "."))  # every lookup needs ann/ searchable
        except OSError as e:
            problems.append(f"{ann_dir}: cannot read ({e.strerror}): no item has an annotation "
                            "(the SDK drops the dataset)")
            ann_dir = None  # one line for the folder, not one per item
    owners: dict[str, str] = {}
    items = ds.items
    for i in range(len(items)):
        name = items.name(i)
        ann = ds.ann_path(name) if ann_dir is not None else None
        if ann_dir is not None and ann is None:
            new, _old = ann_names(name)
            problems.append(_no_annotation(ann_dir / new, name))
        doc = None
        if ann is not None:
            if ann.name in owners:
                problems.append(f"{ann}: shared by items {_item(owners[ann.name])} and "
                                f"{_item(name)} (the SDK drops the dataset)")
            owners[ann.name] = name
            doc = _load_json(ann, problems)
        if decode:
            _check_decode(ds, i, name, doc, problems)
        if progress:
            progress(1)


def warn_twins(ds: Dataset) -> None:
    """One warning line, as ``pack``'s and ``index``'s, for items whose names are one after
    Unicode normalization: no problem of the source (the SDK keeps both), but an unpack to a
    macOS file system keeps only one."""
    if not ds.items.ascii_names:
        twins = nfc_twins(ds.items.names())
        if twins:
            log.warning("%s", one_line(twins_note(twins, str(ds.path or ds.relpath))))


def _no_annotation(path: Path, name: str) -> str:
    """The problem line of item ``name`` whose annotation ``path`` no reader can use."""
    try:
        if path.is_symlink() and path.is_file():
            return (f"{path}: symlink leads outside the project; the mount hides it, so item "
                    f"{_item(name)} has no annotation there (the SDK drops the dataset)")
    except OSError as e:
        return (f"{path}: cannot read ({e.strerror}): item {_item(name)} has no annotation "
                "(the SDK drops the dataset)")
    return f"{path}: missing: item {_item(name)} has no annotation (the SDK drops the dataset)"


def _item(name: str) -> str:
    """An item name in a problem line: quoted, and what Unicode normalization would change
    escaped (``names.shown``), so that the lines of two NFC twins do not look the same."""
    return repr(name) if unicodedata.is_normalized("NFC", name) else shown(name)


def check_hidden_annotations(project: Project, ds: Dataset, problems: list[str]) -> None:
    """What ``ann/`` holds that the mount hides and ``unpack`` leaves out (a FIFO, socket or
    device, a link leading out of the project, nowhere or round in a circle), also when it is
    no item's annotation: a client of the mount never sees it, ``unpack`` reports it (exit 1)."""
    if ds.ann_dir is None:
        return
    named = {line.partition(": ")[0] for line in problems}  # e.g. an item's annotation: "missing"
    for path, why, problem in project.view.dropped(f"{ds.relpath}/ann"):
        if problem and str(path) not in named:
            problems.append(f"{path}: {why}; the mount hides it")


def check_hidden_folders(project: Project, problems: list[str]) -> None:
    """The same for every other folder the mount passes through (the project's root, a
    dataset's own folder, ``meta/``, ``img_info/``, ``seg/``, what any of them holds, also
    below ``ann/``): what the mount hides there is one problem line each. Item folders are
    left out: what the real ``img/`` holds that is no item is no problem (FORMAT.md §1), and
    an image-named entry that is none is among the project's problems already."""
    from blobfs.model.view import ClassicView

    view = ClassicView(project, log_hidden=False)  # its log line would say it twice
    items = {f"{ds.relpath}/img" for ds in project.datasets}
    anns = {f"{ds.relpath}/ann" for ds in project.datasets}  # check_hidden_annotations
    seen: set[int] = set()  # each real folder once, also where links to siblings lead to it
    said = set(project.problems)
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            ino = view.getattr(rel).ino
            if ino in seen:
                continue
            seen.add(ino)
            if rel not in anns:
                problems.extend(f"{path}: {why}; the mount hides it"
                                for path, why, problem in view.dropped(rel)
                                if problem and not _said_unlisted(path, why, said))
            subdirs = sorted(e[0] for e in view.readdir(rel, 2) if stat.S_ISDIR(e[1]))
        except OSError:  # changed since it was listed: the mount would say so the same way
            continue
        children = (f"{rel}/{name}" if rel else name for name in reversed(subdirs))
        stack.extend(c for c in children if c not in items)


def _said_unlisted(path: Path, why: str, said: set[str]) -> bool:
    """Whether opening already said why it did not look into folder ``path`` (with what that
    leaves out: ``discovery.unlisted_line``)."""
    return unlisted_line(path, why) in said


def _check_decode(ds: Dataset, i: int, name: str, doc: object, problems: list[str]) -> None:
    from PIL import Image

    where = f"{ds.relpath}/img/{name}"
    try:
        data = ds.items.read(i)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            size = img.size
    except Exception as e:  # Pillow raises many types for corrupt data; all mean "undecodable"
        problems.append(f"{where}: image does not decode ({decode_why(e)})")
        return
    if isinstance(doc, dict):
        want = doc.get("size") if isinstance(doc.get("size"), dict) else {}
        if (want.get("width"), want.get("height")) != size:
            problems.append(f"{where}: image is {size[0]}x{size[1]} but its annotation says "
                            f"{want.get('width')}x{want.get('height')}")


def _load_json(path: Path, problems: list[str], consequence: str = "") -> object:
    """The parsed JSON at ``path``, or None with one problem line (unreadable or not JSON)."""
    try:
        return load_json(path)
    except OSError as e:
        problems.append(f"{path}: cannot read ({e.strerror}){consequence}")
    except JsonTooLarge as e:
        problems.append(f"{path}: {e}{consequence}")
    except ValueError as e:  # also UnicodeDecodeError
        problems.append(f"{path}: not valid JSON ({e}){consequence}")
    except RecursionError:  # json's decoder recurses once per level of nesting
        problems.append(f"{path}: JSON nested too deeply to read{consequence}")
    return None


def verify(project: Project, *, decode: bool = False,
           progress: Progress | None = None) -> list[str]:
    """All problems of an opened (lenient) project, opening problems first."""
    problems = list(project.problems)
    if project.meta_path is not None:
        _load_json(project.meta_path, problems, " (the SDK cannot open this project)")
    check_ranges(project, problems)
    for ds in project.datasets:
        warn_twins(ds)
        check_annotations(ds, decode, problems, progress)
        check_hidden_annotations(project, ds, problems)
    check_hidden_folders(project, problems)
    # Opening and the header check can find the same damage (a bare file that is no tar): once.
    return list(dict.fromkeys(problems))


def dataset_summary(ds: Dataset) -> dict:
    items = ds.items
    blob = sum(1 for i in range(len(items)) if items.is_blob(i))
    total = sum(items.size(i) for i in range(len(items)))
    return {"name": ds.name, "dir": ds.relpath, "items": len(items), "blob_items": blob,
            "disk_items": len(items) - blob, "bytes": total, "offsets_files": ds.offsets_files}


def summary(project: Project) -> dict:
    source = project.source_path
    return {
        "source": str(source) if source else None,
        "kind": project.kind,
        "datasets": [dataset_summary(ds) for ds in project.datasets],
        "items": project.item_count,
        "blobs": [{"path": str(s.path), "bytes": s.size} for s in project.sources],
        "problems": list(project.problems),
    }

