"""Options of a preview sheet: one frozen dataclass, built by the CLI (or by API callers), and
the size of the sheet row they imply, which bounds the memory a preview takes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from blobfs.errors import InputError

Sampling = Literal["random", "first"]

PAD = 6  # pixels around and between cells

#: Largest image (RGB) a preview renders at once: a sheet row (thumbnails with their captions)
#: of a PNG, which is streamed row by row; the whole sheet in other formats. A PNG's peak memory
#: was measured at about 4 rows (the row, its bytes, the filtered scanlines, the previous row
#: still being compressed) plus the work on one thumbnail: 940 MiB for 10 columns of 2048 px
#: (122 MiB rows), the widest that fit; the default 8 columns fit at any --thumb. Without it
#: --columns 1000 --thumb 2048 made a 2-million-pixel-wide row of 12 GiB.
MAX_IMAGE_BYTES = 128 << 20


def caption_px(thumb: int) -> int:
    """Font size of the caption under a thumbnail."""
    return max(10, min(14, thumb // 12))


def row_size(columns: int, thumb: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet row of ``columns`` thumbnails: pad, the cells
    (thumb box plus a gap; thumb box, caption line, gap)."""
    return (PAD + columns * (thumb + PAD), thumb + caption_px(thumb) + 4 + PAD)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


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
        self._check_row_budget()

    def _check_row_budget(self) -> None:
        """Refuse, before any image is read, a row over ``MAX_IMAGE_BYTES``. A row holds at most
        --limit thumbnails, so a long --columns with a short --limit is fine."""
        w, h = row_size(min(self.columns, self.limit), self.thumb)
        if w * h * 3 <= MAX_IMAGE_BYTES:
            return
        fit = (MAX_IMAGE_BYTES // (h * 3) - PAD) // (self.thumb + PAD)  # >= 1 for any --thumb
        given = f"--columns {self.columns} --thumb {self.thumb}" + (
            f" --limit {self.limit}" if self.limit < self.columns else "")
        raise InputError(f"{given}: a sheet row of {w:,}x{h:,} px takes {_mib(w * h * 3)}, and a "
                         f"row may take at most {_mib(MAX_IMAGE_BYTES)} (at --thumb {self.thumb} "
                         f"at most {fit} columns); use fewer --columns or a smaller --thumb")
