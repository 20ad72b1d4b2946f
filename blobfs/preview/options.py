"""Options of a preview sheet: one frozen dataclass, built by the CLI (or by API callers)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from blobfs.errors import InputError

Sampling = Literal["random", "first"]


@dataclass(frozen=True, slots=True)
class PreviewOptions:
    limit: int = 48  # at most this many items on the sheet
    sample: Sampling = "random"  # "random": a seeded uniform sample; "first": index order
    seed: int = 0  # random sample seed: the same seed gives the same sheet
    columns: int = 8  # thumbnails per row (fewer when there are fewer items)
    thumb: int = 160  # thumbnail box, pixels (square; images are fitted inside, up or down)
    no_ann: bool = False  # draw images only
    labels: bool = True  # class titles next to objects
    output: Path | None = None  # where the CLI writes the sheet

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        if self.sample not in ("random", "first"):
            raise InputError(f"--sample must be 'random' or 'first', got {self.sample!r}")
        if not 1 <= self.columns <= 1000:
            raise InputError(f"--columns must be 1..1000, got {self.columns}")
        if not 16 <= self.thumb <= 2048:
            raise InputError(f"--thumb must be 16..2048 pixels, got {self.thumb}")
