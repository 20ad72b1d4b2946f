"""blobfs: read, mount, pack and preview Supervisely blob image projects.

Python API (no FUSE needed)::

    import blobfs
    p = blobfs.open_project("path/to/project")
    data = p.read("ds1/img/x.png")
"""
from __future__ import annotations

__version__ = "0.1.0"

from blobfs.errors import BlobfsError, InputError, OffsetsError, ProjectError, TarFormatError

__all__ = [
    "__version__",
    "BlobfsError",
    "InputError",
    "OffsetsError",
    "ProjectError",
    "TarFormatError",
    "open_project",
]


def open_project(source, *, offsets=None, ann=None, synthesize_ann: bool = False):
    """Open a blob project folder, a dataset folder, or a bare tar (see ``blobfs.model.project``)."""
    from blobfs.model.project import open_project as _open

    return _open(source, offsets=offsets, ann=ann, synthesize_ann=synthesize_ann)
