"""Contact sheets: a sample of a project's images as thumbnails, annotations drawn on them.

Works on anything ``open_project`` opens (blob project, classic project, a blobfs mount
point). Memory is bounded by one row of thumbnails plus one decoded image: items are picked
by index (no list of all items is built), read one at a time, and the sheet is produced one
row (strip) at a time — ``write_sheet`` streams those strips into a PNG, ``render_sheet``
pastes them into one image for API callers.
"""
from __future__ import annotations

import io
import logging
import math
import os
import random
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image, ImageDraw, ImageFont

from blobfs.errors import InputError, decode_why, one_line
from blobfs.model.jsonfile import load_json
from blobfs.preview.draw import RGB, Scale, class_colors, draw_annotation
from blobfs.preview.options import MAX_IMAGE_BYTES, PAD, PreviewOptions, caption_px, row_size
from blobfs.preview.pngstream import PngStreamWriter

log = logging.getLogger(__name__)

BACKGROUND = (32, 32, 32)
CAPTION_COLOR = (230, 230, 230)
PLACEHOLDER_BG = (96, 0, 0)
PLACEHOLDER_FG = (255, 64, 64)
TRANSPARENT_BG = (128, 128, 128)  # what shows through transparent pixels


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:
        return ImageFont.load_default()


@dataclass(frozen=True, slots=True)
class SheetLayout:
    """Geometry of a sheet: ``count`` cells, row-major, each a thumb box plus a caption line."""

    count: int
    columns: int
    thumb: int
    caption_h: int

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.columns)

    @property
    def cell_w(self) -> int:
        return self.thumb + PAD

    @property
    def cell_h(self) -> int:
        return self.thumb + self.caption_h + PAD

    @property
    def size(self) -> tuple[int, int]:
        return (PAD + self.columns * self.cell_w, PAD + self.rows * self.cell_h)

    def cell_origin(self, k: int) -> tuple[int, int]:
        """Top-left corner of cell ``k``'s thumb box on the sheet."""
        r, c = divmod(k, self.columns)
        return (PAD + c * self.cell_w, PAD + r * self.cell_h)


def fit_size(width: int, height: int, box: int) -> tuple[int, int]:
    """Size of a ``width`` x ``height`` image scaled (up or down) to fit a ``box`` square."""
    s = min(box / width, box / height)
    return (max(1, round(width * s)), max(1, round(height * s)))


def layout_for(count: int, options: PreviewOptions) -> SheetLayout:
    columns = min(options.columns, max(1, count))
    # The row PreviewOptions checked against its memory budget is this one.
    _w, cell_h = row_size(columns, options.thumb)
    return SheetLayout(count, columns, options.thumb, cell_h - options.thumb - PAD)


# -- which items --------------------------------------------------------------------------------
def pick_datasets(project: Any, dataset: str | None) -> list[Any]:
    if dataset is None:
        return list(project.datasets)
    want = dataset.strip("/")
    for ds in project.datasets:
        if want in (ds.name, ds.relpath):
            return [ds]
    names = ", ".join(ds.name for ds in project.datasets[:10]) or "none"
    raise InputError(f"{project.source_path}: no dataset {dataset!r} (datasets: {names})")


def sample_items(datasets: Sequence[Any], options: PreviewOptions) -> list[tuple[Any, int]]:
    """(dataset, item index) pairs in project order; O(limit) memory, not O(items)."""
    counts = [len(ds.items) for ds in datasets]
    total = sum(counts)
    k = min(options.limit, total)
    if options.sample == "first":
        chosen: Sequence[int] = range(k)
    else:
        chosen = sorted(random.Random(options.seed).sample(range(total), k))
    picked: list[tuple[Any, int]] = []
    d, base = 0, 0
    for g in chosen:
        while g >= base + counts[d]:
            base += counts[d]
            d += 1
        picked.append((datasets[d], g - base))
    return picked


# -- one thumbnail ------------------------------------------------------------------------------
def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (*TRANSPARENT_BG, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if im.mode == "RGB":
        im.load()  # already RGB: no copy needed, resize reads it directly
        return im
    return im.convert("RGB")


def decode_thumb(data: bytes, thumb: int) -> tuple[Image.Image, tuple[int, int]]:
    """(thumbnail fitted in ``thumb``, full image size). Raises on undecodable data."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # treat as undecodable
        with Image.open(io.BytesIO(data)) as im:
            full = im.size
            tw, th = fit_size(*full, thumb)
            if tw < full[0]:
                im.draft("RGB", (tw, th))  # JPEG: decode at 1/2..1/8 scale, much faster
            rgb = _to_rgb(im)
            if rgb.size != (tw, th):
                # Upscaled tiny images keep crisp pixels; downscaling averages.
                method = Image.Resampling.NEAREST if tw >= full[0] else Image.Resampling.BILINEAR
                rgb = rgb.resize((tw, th), method)
            elif rgb is im:
                rgb = im.copy()  # ``im`` is closed on leaving the block
    return rgb, full


def placeholder(size: tuple[int, int], font: Any, text: str = "undecodable") -> Image.Image:
    """A visible stand-in for an image that cannot be decoded: dark red, a cross, a word."""
    im = Image.new("RGB", size, PLACEHOLDER_BG)
    d = ImageDraw.Draw(im)
    w, h = size
    d.line((0, 0, w - 1, h - 1), fill=PLACEHOLDER_FG, width=2)
    d.line((0, h - 1, w - 1, 0), fill=PLACEHOLDER_FG, width=2)
    d.rectangle((0, 0, w - 1, h - 1), outline=PLACEHOLDER_FG, width=2)
    d.text((4, 4), text, fill=(255, 255, 255), font=font)
    return im


def _ellipsize(text: str, width: int, font: Any, d: ImageDraw.ImageDraw) -> str:
    """``text``, or its middle replaced by "…" so that it fits ``width`` pixels."""
    full = d.textlength(text, font=font)
    if full <= width:
        return text

    def cut(keep: int) -> str:
        return f"{text[: (keep + 1) // 2]}…{text[len(text) - keep // 2 :]}"

    # Start from the proportional estimate, then step: usually two or three measurements
    # (text measuring is the costliest part of a small thumbnail).
    keep = max(0, min(len(text) - 1, int(len(text) * width / full)))
    while keep > 0 and d.textlength(cut(keep), font=font) > width:
        keep -= 1
    while keep + 1 < len(text) and d.textlength(cut(keep + 1), font=font) <= width:
        keep += 1
    return cut(keep)


class _Renderer:
    def __init__(self, project: Any, options: PreviewOptions) -> None:
        self.project = project
        self.options = options
        self.caption_font = _font(caption_px(options.thumb))
        self.label_font = _font(max(9, min(13, options.thumb // 14)))
        self.colors: dict[str, RGB] = {} if options.no_ann else self._colors()

    def _colors(self) -> dict[str, RGB]:
        path = getattr(self.project, "meta_path", None)
        if path is None:
            return {}
        try:
            return class_colors(load_json(path))
        except (OSError, ValueError, AttributeError, RecursionError) as e:  # json recurses per level
            log.warning("%s: cannot read class colours: %s", path, e)
            return {}

    def _annotation(self, ds: Any, name: str) -> dict | None:
        path = ds.ann_path(name)
        if path is None:
            return None
        try:
            ann = load_json(path)
        except (OSError, ValueError, RecursionError) as e:  # json recurses per level
            log.warning("%s: annotation not drawn: %s", path, e)
            return None
        return ann if isinstance(ann, dict) else None

    def thumbnail(self, ds: Any, i: int) -> tuple[str, Image.Image]:
        name = ds.items.name(i)
        where = f"{ds.relpath}/img/{name}" if ds.relpath else f"img/{name}"
        ann = None if self.options.no_ann else self._annotation(ds, name)
        thumb = self.options.thumb
        try:
            im, full = decode_thumb(ds.items.read(i), thumb)
        except Exception as e:  # noqa: BLE001 - Pillow raises anything on hostile data
            log.warning("%s: cannot decode image, placeholder shown: %s", where, decode_why(e))
            size = (ann or {}).get("size") or {}
            try:
                full = (int(size["width"]), int(size["height"]))
                box = fit_size(*full, thumb)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                full, box = (thumb, thumb), (thumb, thumb)
            im = placeholder(box, self.caption_font)
        if ann is not None and ann.get("objects"):
            scale = Scale(im.width / full[0], im.height / full[1])
            im = draw_annotation(
                im, ann, scale, self.colors, self.label_font,
                labels=self.options.labels, where=str(ds.ann_path(name)),
            )
        return name, im

    def strip(self, layout: SheetLayout, row: int, cells: list[tuple[Any, int]], prefix: bool) -> Image.Image:
        strip = Image.new("RGB", (layout.size[0], layout.cell_h), BACKGROUND)
        d = ImageDraw.Draw(strip)
        for c, (ds, i) in enumerate(cells):
            name, im = self.thumbnail(ds, i)
            x = PAD + c * layout.cell_w
            strip.paste(im, (x + (layout.thumb - im.width) // 2, (layout.thumb - im.height) // 2))
            caption = f"{ds.name}/{name}" if prefix and ds.name else name
            # A folder name may hold a newline, and Pillow's textlength refuses multi-line text.
            text = _ellipsize(one_line(caption), layout.thumb, self.caption_font, d)
            d.text((x, layout.thumb + 2), text, fill=CAPTION_COLOR, font=self.caption_font)
        return strip


def iter_strips(project: Any, dataset: str | None, options: PreviewOptions) -> tuple[SheetLayout, Iterator[Image.Image]]:
    """The sheet's layout and its horizontal strips, top to bottom (rendered lazily)."""
    datasets = pick_datasets(project, dataset)
    picked = sample_items(datasets, options)
    if not picked:
        # Named as given: a dataset folder's root is the project above it, a tar has none.
        what = f"dataset {dataset!r} has no items" if dataset is not None else "no items"
        raise InputError(f"{project.source_path}: {what} to preview")
    layout = layout_for(len(picked), options)
    renderer = _Renderer(project, options)
    prefix = len(datasets) > 1

    def strips() -> Iterator[Image.Image]:
        yield Image.new("RGB", (layout.size[0], PAD), BACKGROUND)
        for r in range(layout.rows):
            cells = picked[r * layout.columns : (r + 1) * layout.columns]
            yield renderer.strip(layout, r, cells, prefix)

    return layout, strips()


def render_sheet(project: Any, dataset: str | None = None, options: PreviewOptions = PreviewOptions()) -> Image.Image:
    """The whole sheet as one RGB image (use ``write_sheet`` for very large sheets)."""
    layout, strips = iter_strips(project, dataset, options)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    y = 0
    for strip in strips:
        sheet.paste(strip, (0, y))
        y += strip.height
    return sheet


#: Largest side each format's encoder takes; checked before rendering, as libjpeg prints its
#: refusal on stderr itself and Pillow's GIF writer fails with a bare OverflowError.
MAX_SIDE = {"JPEG": 65500, "MPO": 65500, "WEBP": 16383, "GIF": 65535, "TGA": 65535,
            "PCX": 65535, "SGI": 65535}


def _check_format(path: Path, fmt: str, layout: SheetLayout) -> None:
    """Refuse, before any image is read, a format Pillow cannot write or a sheet too large for
    it, or for memory: Pillow encodes only a whole image, so the sheet is held whole."""
    if fmt not in Image.SAVE:
        raise InputError(f"{path}: cannot write a sheet as {fmt} (Pillow reads it but has no writer)")
    w, h = layout.size
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(w, h) > limit:
        raise InputError(f"{path}: a {w}x{h} px sheet is too large for {fmt} (at most {limit} px "
                         f"a side); use fewer --columns, a smaller --thumb or --limit, or .png")
    if w * h * 3 > MAX_IMAGE_BYTES:
        mib = 1 << 20
        raise InputError(f"{path}: a {w:,}x{h:,} px sheet takes {w * h * 3 / mib:,.0f} MiB, held "
                         f"whole as {fmt}, and a preview may take at most {MAX_IMAGE_BYTES // mib} "
                         f"MiB; use .png (written row by row), or a smaller --limit, --columns or --thumb")


def write_sheet(project: Any, dataset: str | None, options: PreviewOptions, path: str | Path) -> SheetLayout:
    """Render and save the sheet; ``.png`` is streamed strip by strip, other formats via Pillow.

    Whole or not at all: written under a temporary name beside ``path`` and renamed over it at
    the end (an existing file is replaced, as before), so an interrupted run or a full disk
    never leaves a truncated sheet that looks like a picture.
    """
    from blobfs.write.atomic import AtomicOutputs

    path = Path(path)
    suffix = path.suffix.lower()
    fmt = None if suffix == ".png" else Image.registered_extensions().get(suffix)
    if suffix != ".png" and fmt is None:
        raise InputError(f"{path}: cannot write a sheet in this format: unknown extension {suffix or '(none)'}")
    if fmt is not None:
        layout = layout_for(len(sample_items(pick_datasets(project, dataset), options)), options)
        _check_format(path, fmt, layout)
    with AtomicOutputs([path], force=True) as outputs:
        fd, tmp = outputs.file(path)
        os.close(fd)
        if fmt is None:
            layout, strips = iter_strips(project, dataset, options)
            with PngStreamWriter(tmp, *layout.size) as out:
                for strip in strips:
                    out.write_strip(strip)
        else:
            sheet = render_sheet(project, dataset, options)
            try:
                sheet.save(tmp, format=fmt)
            except (KeyError, ValueError, OverflowError, RuntimeError, struct.error) as e:
                # Pillow: a mode or a size this format cannot hold
                raise InputError(f"{path}: cannot write a sheet as {fmt}: {e}") from None
            except OSError as e:
                if e.errno is not None:
                    raise  # the output could not be written (full disk, permissions): exit 1
                # Pillow's own refusals carry no errno ("cannot write mode RGB as XBM",
                # an encoder that gave up): the format, not the disk.
                raise InputError(f"{path}: cannot write a sheet as {fmt}: {e}") from None
        outputs.commit()
    return layout
