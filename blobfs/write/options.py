"""Options of the write commands: one frozen dataclass per command, built by the CLI."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PackOptions:
    """``blobfs pack``: which files become entries, and how the output is written."""

    include: tuple[str, ...] = ()   # globs; empty = the SDK image extensions
    exclude: tuple[str, ...] = ()   # globs, applied after include
    recursive: bool = True
    rename: bool = False            # resolve duplicate base names by the rename rule
    mtime: int | None = None        # fixed member mtime (epoch seconds); None = from inputs
    force: bool = False             # replace an existing output
    fsync: bool = False             # fsync the output before renaming it into place
    jobs: int | None = None         # worker processes; None = one per CPU, at most 4


@dataclass(frozen=True, slots=True)
class PackProjectOptions:
    """``blobfs pack-project``."""

    max_blob_size: int | None = None   # split a dataset's tar when it would grow past this
    min_size: int = 0                  # images smaller than this stay ordinary img/ files
    max_size: int | None = None        # images larger than this stay ordinary img/ files
    mtime: int | None = None
    force: bool = False
    fsync: bool = False
    jobs: int | None = None


@dataclass(frozen=True, slots=True)
class UnpackOptions:
    """``blobfs unpack``."""

    synthesize_ann: bool = False
    force: bool = False
    fsync: bool = False
    jobs: int | None = None


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """``blobfs index``."""

    include: tuple[str, ...] = ()   # globs on the member name or its base name
    exclude: tuple[str, ...] = ()
    force: bool = False
