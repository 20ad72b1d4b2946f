"""Click parameter types shared by the commands."""
from __future__ import annotations

import os
from typing import Any

import click


class NonEmptyPath(click.Path):
    """``click.Path`` that refuses ``""``: every os call takes it for the current folder, so
    ``blobfs umount ""`` or ``blobfs pack ""`` would act on wherever the shell happens to be."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in ("", b""):
            self.fail("an empty path (it would mean the current folder)", param, ctx)
        return super().convert(value, param, ctx)


class OutputFile(NonEmptyPath):
    """The file a command writes (``pack -o``, ``preview -o``): ``NonEmptyPath`` that takes no
    folder, and also refuses a path *written* as one (``out.tar/``, ``out.tar/.``). pathlib
    drops the trailing slash, so ``-o out.tar/`` wrote ``out.tar`` where the user meant a
    folder; ``cp a b/`` refuses it too ("Not a directory"). An existing folder is click's own
    "is a directory"."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(dir_okay=False, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        text = os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else ""
        tail = "/" if text.endswith("/") else os.path.basename(text)
        if tail in ("/", ".", ".."):
            self.fail(f"{text!r} ends in {tail!r}, which names a folder; the output is a file",
                      param, ctx)
        return path
