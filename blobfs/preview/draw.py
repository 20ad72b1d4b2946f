"""Draw one Supervisely annotation onto a thumbnail, in the class colours of ``meta.json``.

Coordinates in an annotation are ``[column, row]`` in the full image (FORMAT.md §7); the
caller passes the scale factors from the full image to the thumbnail. Rectangles are
inclusive pixel boxes (``[[left, top], [right, bottom]]`` covers columns left..right), so
their thumbnail box runs from ``left * sx`` to ``(right + 1) * sx - 1``; points of polygons,
polylines and points are pixel centres, mapped to ``(x + 0.5) * sx``.

Fills (polygon areas, bitmap masks) are blended at ``FILL_ALPHA`` so the image stays visible;
outlines, lines and points are opaque. A malformed object is skipped with a warning, never
an exception: a preview must show the rest.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

#: Opacity of polygon and bitmap fills (0..255).
FILL_ALPHA = 128
#: Bounds on a bitmap label's mask (annotations come from strangers): its PNG after zlib,
#: and its pixels (converted to RGBA: 4 bytes each). A label's mask covers its object's
#: bounding box, so real ones are far smaller.
MAX_BITMAP_BYTES = 64 << 20
MAX_BITMAP_PIXELS = 1 << 26
#: Outline of points, so a point in a similar colour to the image stays visible.
POINT_OUTLINE = (0, 0, 0)
#: Largest coordinate taken from an annotation (pixels, either sign). Pillow's drawing calls
#: take C longs and fail *when drawing* (after the object was accepted) on larger values, inf
#: or NaN; no real image comes near 2**24 pixels on a side.
MAX_COORD = float(1 << 24)


def parse_color(value: object) -> RGB | None:
    """``"#RRGGBB"`` (the SDK's format) or ``[r, g, b]`` → an RGB tuple, else None."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
        except ValueError:
            return None
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return tuple(max(0, min(255, v)) for v in value)  # type: ignore[return-value]
    return None


def fallback_color(title: str) -> RGB:
    """A stable, bright colour for a class missing from meta.json."""
    h = hashlib.sha1(title.encode("utf-8", "surrogatepass")).digest()
    return (64 + h[0] % 192, 64 + h[1] % 192, 64 + h[2] % 192)


def class_colors(meta: Mapping[str, Any] | None) -> dict[str, RGB]:
    """``{class title: colour}`` from a parsed meta.json; tolerant of missing keys."""
    colors: dict[str, RGB] = {}
    for cls in (meta or {}).get("classes") or []:
        if isinstance(cls, dict) and isinstance(cls.get("title"), str):
            colors[cls["title"]] = parse_color(cls.get("color")) or fallback_color(cls["title"])
    return colors


def decode_bitmap(data: str) -> Image.Image:
    """The SDK's bitmap ``data`` (base64 of zlib of a PNG) → an ``L`` mask, 255 = inside.

    Mirrors ``sly.Bitmap.base64_2_data``: a PNG with alpha (the SDK writes a palette PNG with
    index 0 transparent) uses its alpha channel, a flat PNG its non-zero pixels.
    """
    z = zlib.decompressobj()
    png = z.decompress(base64.b64decode(data), MAX_BITMAP_BYTES)
    if z.unconsumed_tail:  # a zlib bomb: a few MB of data for GBs of output
        raise ValueError(f"bitmap data decompresses to more than {MAX_BITMAP_BYTES >> 20} MiB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a warning prints 2 lines
        try:
            im = Image.open(io.BytesIO(png))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"bitmap mask too large: {e}") from None
    with im:
        if im.width * im.height > MAX_BITMAP_PIXELS:
            raise ValueError(f"bitmap mask of {im.width}x{im.height} pixels is too large to draw")
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            alpha = im.convert("RGBA").getchannel("A")
        else:
            alpha = im.convert("L")
        return alpha.point(lambda v: 255 if v else 0)


def coord(value: Any) -> float:
    """One annotation coordinate as a float; ValueError unless finite and within MAX_COORD."""
    v = float(value)
    if not -MAX_COORD <= v <= MAX_COORD:  # also false for NaN
        raise ValueError(f"coordinate {value!r} out of range")
    return v


@dataclass(frozen=True, slots=True)
class Scale:
    sx: float
    sy: float

    def center(self, pt: Iterable[Any]) -> tuple[float, float]:
        x, y = pt
        return ((coord(x) + 0.5) * self.sx - 0.5, (coord(y) + 0.5) * self.sy - 0.5)


def _points(seq: Any) -> list[tuple[float, float]]:
    if not isinstance(seq, list):
        raise ValueError("points are not a list")
    return [(coord(p[0]), coord(p[1])) for p in seq]


class _Canvas:
    """The thumbnail plus an RGBA overlay for the blended fills, composited once at the end."""

    def __init__(self, thumb: Image.Image, scale: Scale, font: ImageFont.ImageFont) -> None:
        self.thumb = thumb
        self.scale = scale
        self.font = font
        self.overlay = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
        self.filled = False  # no fills (rectangles, lines, points only): skip compositing
        # Opaque strokes are drawn after the fills are composited, so fills never dim them.
        self.lines: list[Callable[[ImageDraw.ImageDraw], None]] = []
        self.labels: list[tuple[str, RGB, tuple[float, float]]] = []
        self.width = max(1, round(min(thumb.size) / 96))

    # -- geometry ----------------------------------------------------------------------------
    def rectangle(self, obj: dict, color: RGB) -> tuple[float, float]:
        (l, t), (r, b) = _points(obj["points"]["exterior"])[:2]
        l, r = min(l, r), max(l, r)
        t, b = min(t, b), max(t, b)
        s = self.scale
        box = (round(l * s.sx), round(t * s.sy), round((r + 1) * s.sx) - 1, round((b + 1) * s.sy) - 1)
        self.lines.append(lambda d: d.rectangle(box, outline=color, width=self.width))
        return box[0], box[1]

    def polygon(self, obj: dict, color: RGB) -> tuple[float, float]:
        ext = [self.scale.center(p) for p in _points(obj["points"]["exterior"])]
        holes = [[self.scale.center(p) for p in _points(h)] for h in obj["points"].get("interior") or []]
        if len(ext) < 2:
            raise ValueError("polygon with fewer than 2 points")
        mask = Image.new("L", self.thumb.size, 0)
        md = ImageDraw.Draw(mask)
        md.polygon(ext, fill=255)
        for hole in holes:
            if len(hole) >= 3:
                md.polygon(hole, fill=0)
        self.overlay.paste((*color, FILL_ALPHA), (0, 0), mask)
        self.filled = True
        for ring in [ext, *holes]:
            if len(ring) >= 2:
                self.lines.append(lambda d, ring=ring: d.line([*ring, ring[0]], fill=color, width=self.width))
        return min(x for x, _ in ext), min(y for _, y in ext)

    def line(self, obj: dict, color: RGB) -> tuple[float, float]:
        pts = [self.scale.center(p) for p in _points(obj["points"]["exterior"])]
        if not pts:
            raise ValueError("line without points")
        self.lines.append(lambda d: d.line(pts, fill=color, width=self.width + 1, joint="curve"))
        return min(x for x, _ in pts), min(y for _, y in pts)

    def point(self, obj: dict, color: RGB) -> tuple[float, float]:
        x, y = self.scale.center(_points(obj["points"]["exterior"])[0])
        r = max(2, self.width * 2)
        self.lines.append(lambda d: d.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=POINT_OUTLINE))
        return x + r, y - r

    def graph(self, obj: dict, color: RGB) -> tuple[float, float]:
        nodes = [self.scale.center(n["loc"]) for n in (obj.get("nodes") or {}).values()]
        if not nodes:
            raise ValueError("graph without nodes")
        r = max(2, self.width * 2)
        for x, y in nodes:
            self.lines.append(lambda d, x=x, y=y: d.ellipse((x - r, y - r, x + r, y + r), fill=color))
        return min(x for x, _ in nodes), min(y for _, y in nodes)

    def bitmap(self, obj: dict, color: RGB) -> tuple[float, float]:
        bm = obj["bitmap"]
        ox, oy = (int(coord(v)) for v in bm["origin"])
        mask = decode_bitmap(bm["data"])
        s = self.scale
        x0, y0 = round(ox * s.sx), round(oy * s.sy)
        x1, y1 = round((ox + mask.width) * s.sx), round((oy + mask.height) * s.sy)
        if x1 > x0 and y1 > y0:
            mask = mask.resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST)
            self.overlay.paste((*color, FILL_ALPHA), (x0, y0), mask)
            self.filled = True
        return x0, y0

    # -- output ------------------------------------------------------------------------------
    def finish(self) -> Image.Image:
        if self.filled:
            base = self.thumb.convert("RGBA")
            base.alpha_composite(self.overlay)
            out = base.convert("RGB")
        else:
            out = self.thumb.copy()
        d = ImageDraw.Draw(out)
        for draw in self.lines:
            draw(d)
        for title, color, (x, y) in self.labels:
            self._label(d, title, color, x, y)
        return out

    def _label(self, d: ImageDraw.ImageDraw, title: str, color: RGB, x: float, y: float) -> None:
        l, t, r, b = d.textbbox((0, 0), title, font=self.font)
        w, h = r - l + 2, b - t + 2
        # Above the object's top-left corner, kept inside the thumbnail.
        x = min(max(0, int(x)), max(0, self.thumb.width - w))
        y = min(max(0, int(y) - h), max(0, self.thumb.height - h))
        # Title on a box of the class colour, in black or white, whichever reads better.
        ink = (0, 0, 0) if 299 * color[0] + 587 * color[1] + 114 * color[2] > 128_000 else (255, 255, 255)
        d.rectangle((x, y, x + w - 1, y + h - 1), fill=color)
        d.text((x + 1 - l, y + 1 - t), title, fill=ink, font=self.font)


_DRAWERS = {
    "rectangle": _Canvas.rectangle,
    "polygon": _Canvas.polygon,
    "bitmap": _Canvas.bitmap,
    "alpha_mask": _Canvas.bitmap,
    "line": _Canvas.line,
    "polyline": _Canvas.line,
    "point": _Canvas.point,
    "graph": _Canvas.graph,
}


def draw_annotation(
    thumb: Image.Image,
    ann: Mapping[str, Any],
    scale: Scale,
    colors: Mapping[str, RGB],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    *,
    labels: bool = True,
    where: str = "annotation",
) -> Image.Image:
    """A copy of ``thumb`` (RGB) with every object of ``ann`` drawn; ``where`` labels warnings."""
    canvas = _Canvas(thumb, scale, font)
    objects = ann.get("objects") if isinstance(ann, Mapping) else None
    for k, obj in enumerate(objects if isinstance(objects, list) else []):
        try:
            kind = obj.get("geometryType") or obj.get("shape")
            drawer = _DRAWERS.get(kind)
            title = str(obj.get("classTitle", "?"))
            if drawer is None:
                log.info("%s: object %d: geometry %r is not drawn", where, k, kind)
                continue
            color = colors.get(title) or fallback_color(title)
            anchor = drawer(canvas, obj, color)
            if labels:
                canvas.labels.append((title, color, anchor))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError, zlib.error) as e:
            log.warning("%s: object %d skipped: %s: %s", where, k, type(e).__name__, e)
    return canvas.finish()
