"""Click parameter types shared by the commands."""
from __future__ import annotations

from typing import Any

import click


class NonEmptyPath(click.Path):
    """``click.Path`` that refuses ``""``: every os call takes it for the current folder, so
    ``blobfs umount ""`` or ``blobfs pack ""`` would act on wherever the shell happens to be."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in ("", b""):
            self.fail("an empty path (it would mean the current folder)", param, ctx)
        return super().convert(value, param, ctx)
