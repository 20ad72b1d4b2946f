"""blobfs: read, mount, pack and preview Supervisely blob image projects.

Python API (no FUSE needed)::

    import blobfs
    with blobfs.open_project("path/to/project") as p:   # or a dataset folder, or a .tar
        data = p.read("ds1/img/x.png")                   # bytes of one file of the view
        for ds in p.datasets:                            # by item number: ds.items.read(i)
            print(ds.name, len(ds.items), ds.items.name(0))
        for path, data in p.iter_bytes():                # every image: the fast bulk path
            ...

Paths are those of the classic view the mount shows (``ds1/img/x.png``,
``ds1/ann/x.png.json``, ``meta.json``). Errors: ``BlobfsError`` subclasses for input that
cannot be opened (one line naming the file), ``FileNotFoundError`` for a path not in the
view, ``ReadError`` (an ``OSError``) for a tar cut short (or an ``img/`` file resized) while
open, ``ValueError`` after ``close()``. A tar overwritten in place while open is not detected:
replace tars by rename. See ``help(blobfs.Project)``, ``help(blobfs.Dataset)``.
"""
from __future__ import annotations

import logging
import os

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from blobfs.errors import (BlobfsError, InputError, OffsetsError, ProjectError, ReadError,
                           TarFormatError)

if TYPE_CHECKING:
    from blobfs.model.project import Dataset, Project

# A library logs, the application decides where to: without this, Python's last-resort
# handler would print a read error's log line on stderr beside the exception it raises.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "BlobfsError",
    "Dataset",
    "InputError",
    "OffsetsError",
    "Project",
    "ProjectError",
    "ReadError",
    "TarFormatError",
    "open_project",
]


def open_project(source: str | os.PathLike[str], *, offsets: str | os.PathLike[str] | None = None,
                 ann: str | os.PathLike[str] | None = None,
                 synthesize_ann: bool = False) -> "Project":
    """Open a blob project folder, a dataset folder, or a bare tar.

    ``offsets`` (a bare tar only; default the sibling ``STEM_offsets.pkl``, else the tar's own
    headers) and ``ann`` (a bare tar's annotation folder) are the CLI's ``--offsets`` and
    ``--ann``; ``synthesize_ann`` gives every item without annotation the SDK's empty one.
    Raises a ``BlobfsError`` (one line naming the file) when the source cannot be used;
    entries that are skipped are listed in the project's ``problems``.
    """
    from blobfs.model.opening import open_project as _open

    return _open(source, offsets=offsets, ann=ann, synthesize_ann=synthesize_ann)


def __getattr__(name: str) -> object:
    # Project and Dataset load with the model, not with ``import blobfs``: every CLI command
    # imports this package, and most never open a project in this process.
    if name in ("Project", "Dataset"):
        from blobfs.model import project

        return getattr(project, name)
    raise AttributeError(f"module 'blobfs' has no attribute {name!r}")
