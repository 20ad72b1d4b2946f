"""The project model: datasets, their items and where each item's bytes live.

A ``Project`` (made by :func:`blobfs.model.opening.open_project` from a project folder, a
dataset folder or a bare tar) holds its datasets, the open tars and the problems found while
opening; its ``view`` is the classic-project file tree the mount and ``unpack`` show.
"""
from __future__ import annotations

import json
import os
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from blobfs.format.names import ann_names
from blobfs.model.blobsource import BlobSource
from blobfs.model.hidden import Tally
from blobfs.model.items import ItemIndex
from blobfs.model.projectfile import ProjectFile

if TYPE_CHECKING:
    from blobfs.model.view import ClassicView


#: meta.json shown for a bare tar whose annotations come with no project meta.
EMPTY_META = json.dumps({"classes": [], "tags": [], "projectSettings": {}}, indent=4).encode()


@dataclass(frozen=True)
class SourceSpec:
    """What to open, as the CLI was told: the one options object the commands pass down."""

    path: Path
    offsets: Path | None = None
    ann: Path | None = None
    synthesize_ann: bool = False

    def open(self, *, lenient: bool = False) -> "Project":
        from blobfs.model.opening import open_project

        return open_project(self.path, offsets=self.offsets, ann=self.ann,
                            synthesize_ann=self.synthesize_ann, lenient=lenient)


@dataclass
class Dataset:
    """One dataset of a project: ``items`` (``len``, ``name(i)``, ``read(i)``, ``find(name)``).

    ``name`` is the SDK's name (``A/B`` for a nested ``A/datasets/B``); view paths start with
    ``relpath`` (``A/datasets/B``; the same as ``name`` unless nested): item ``i`` is
    ``f"{ds.relpath}/img/{ds.items.name(i)}"``, its annotation ``.../ann/NAME.json`` (or an
    old-style ``STEM.json``: ``ds.ann_path(name)`` finds either on disk).
    """

    name: str                 # SDK name ("A/B" for A/datasets/B)
    relpath: str              # folder in the view, relative to its root
    path: Path | None         # the real dataset folder (None for a bare tar)
    items: ItemIndex
    ann_dir: Path | None
    offsets_files: list[str] = field(default_factory=list)
    #: Symlinked annotations count only inside this folder (the project), as in the view.
    confine: str | None = None
    img_hidden: Tally | None = None  #: entries of the real img/ that are no item

    def ann_path(self, name: str) -> Path | None:
        """The annotation file of item ``name``: ``NAME.json``, else ``STEM.json`` (FORMAT §7)."""
        if self.ann_dir is None:
            return None
        for candidate in ann_names(name):
            if candidate is not None:
                p = self.ann_dir / candidate
                try:
                    if p.is_file() and (not p.is_symlink() or self._inside(p)):
                        return p
                except OSError:  # ann/ not searchable (EACCES): no annotation a reader can use
                    continue
        return None

    def __repr__(self) -> str:
        # The dataclass's own repr listed every field, internals and all (several lines).
        return f"<blobfs.Dataset {self.name!r}: {len(self.items)} items>"

    def __reduce__(self) -> object:
        raise TypeError(f"dataset {self.name!r} of an open project cannot be pickled: pickle "
                        "the Project (it reopens itself) and take its datasets there")

    def _inside(self, p: Path) -> bool:
        return self.confine is not None and os.path.realpath(p).startswith(self.confine + "/")


class Project:
    """An opened source. Thread-safe for reading; call ``close()`` (or use ``with``).

    ``datasets``: the datasets (``ds.name``, ``ds.items``: ``len``, ``name(i)``, ``read(i)``,
    ``find(name)``); ``problems``: one line per entry skipped or shadowed while opening. A
    path that is not in the view raises ``FileNotFoundError`` (``IsADirectoryError`` for a
    folder); a tar that no longer holds an item's bytes raises ``blobfs.ReadError``; any read
    after ``close()`` raises ``ValueError``. A forked child reads through its parent's open
    project; pickling (``spawn``/``forkserver`` workers) reopens the project from its path in
    the receiving process, and refuses if a tar changed since.
    """

    def __init__(self, root: Path | None, datasets: list[Dataset], meta_path: Path | None,
                 sources: list[BlobSource], problems: list[str], *, kind: str,
                 synthesize_ann: bool = False, virtual_root: bool = False) -> None:
        self.root = root
        self.datasets = datasets
        self.meta_path = meta_path
        self.sources = sources
        self.problems = problems
        self.kind = kind  # "project" | "dataset" | "tar"
        self.synthesize_ann = synthesize_ann
        self.virtual_root = virtual_root
        self._view: ClassicView | None = None
        self._closed = False
        #: open_project's arguments, for pickling (set by open_project).
        self._reopen: tuple | None = None

    @property
    def view(self) -> "ClassicView":
        if self._view is None:
            from blobfs.model.view import ClassicView

            self._view = ClassicView(self)
        return self._view

    @property
    def source_path(self) -> Path | None:
        """What was opened, as a report names it: the dataset folder of a single dataset (its
        ``root`` is the project above it), the tar of a bare tar (which has no root), else
        the project folder."""
        if self.kind == "dataset":
            return self.datasets[0].path
        if self.kind == "tar":
            return self.sources[0].path if self.sources else None
        return self.root

    def meta_bytes(self) -> bytes:
        return self.meta_path.read_bytes() if self.meta_path else EMPTY_META

    # -- reading by view path -------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self._name()}: read from a closed project")

    def _path(self, path: str | os.PathLike[str]) -> str:
        """``path`` as the view takes it: empty and ``.`` parts dropped, as a file system's
        path walk drops them (``./meta.json``, ``ds//img/x.png``); a trailing ``/`` or ``/.``
        kept as ``/`` (a folder is meant); ``..`` left to the view, which has no parents."""
        self._check_open()
        p = os.fspath(path)
        if not isinstance(p, str):
            raise TypeError(f"a view path is a str (or os.PathLike of one), not {type(p).__name__}")
        if "//" not in p and "/." not in p and not p.startswith("."):
            return p
        parts = p.split("/")
        norm = "/".join(s for s in parts if s not in ("", "."))
        return norm + "/" if norm and parts[-1] in ("", ".") else norm

    def _name(self) -> str:
        if self._reopen is not None:
            return self._reopen[0]
        return str(self.root or (self.sources[0].path if self.sources else "project"))

    def read(self, path: str | os.PathLike[str]) -> bytes:
        """All bytes of the file at view path ``path`` (e.g. ``"ds1/img/x.png"``)."""
        return self.view.read_all(self._path(path))

    def open(self, path: str | os.PathLike[str]) -> "ProjectFile":
        """A read-only, seekable file object for view path ``path``."""
        return ProjectFile(self.view, self._path(path))

    def files(self) -> Iterator[str]:
        """Every file path of the view, directory by directory, sorted within each."""
        for top, _dirs, files in self.view.walk():
            for f in files:
                yield f"{top}/{f}" if top else f

    def iter_bytes(self) -> Iterator[tuple[str, bytes]]:
        """(view path, bytes) of every image item, dataset by dataset in index order (each
        offsets file's order, then the ``img/`` files)."""
        self._check_open()
        return chain.from_iterable(ds.items.iter_read(f"{ds.relpath}/img/") for ds in self.datasets)

    @property
    def item_count(self) -> int:
        return sum(len(ds.items) for ds in self.datasets)

    def close(self) -> None:
        """Close the tars; every read started after this raises ``ValueError``. A read that
        is already running in another thread still returns its own bytes: its tar's
        descriptor is released when that read ends (``blobfs.model.blobsource._Descriptor``),
        never under it, where another file opened meanwhile could take its number."""
        self._closed = True
        if self._view is not None:
            self._view.close()
        for ds in self.datasets:
            ds.items.close()
        for s in self.sources:
            s.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.datasets)} dataset(s), {self.item_count} items"
        return f"<blobfs.Project {self.kind} {self._name()!r}: {state}>"

    def __reduce__(self) -> object:
        if self._reopen is None or self._closed:
            raise TypeError(f"{self!r} cannot be pickled (closed, or not made by open_project)")
        from blobfs.model.opening import _identity, _reopen

        return _reopen, (*self._reopen, _identity(self))

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
