"""Write a PNG one horizontal strip at a time.

A contact sheet of 10,000 thumbnails is hundreds of megapixels; Pillow's PNG encoder needs
the whole image in memory. The PNG format itself is a stream (IHDR, then zlib-compressed
scanlines spread over any number of IDAT chunks, then IEND; RFC 2083 / ISO 15948), so
strips can be compressed as they are rendered and memory stays at one strip.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from PIL import Image

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(out: BinaryIO, kind: bytes, data: bytes) -> None:
    out.write(struct.pack(">I", len(data)) + kind + data)
    out.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


class PngStreamWriter:
    """``with PngStreamWriter(path, width, height) as w: w.write_strip(img)`` (RGB strips)."""

    def __init__(self, path: str | Path, width: int, height: int, level: int = 6) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        self.rows = 0
        self._out = open(self.path, "wb")
        self._z = zlib.compressobj(level)
        self._out.write(_SIGNATURE)
        # 8-bit depth, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
        _chunk(self._out, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))

    def write_strip(self, strip: Image.Image) -> None:
        if strip.mode != "RGB" or strip.width != self.width:
            raise ValueError(f"strip must be RGB and {self.width} px wide")
        if self.rows + strip.height > self.height:
            raise ValueError("more rows than declared")
        raw = strip.tobytes()
        stride = self.width * 3
        # Filter type 0 (None) per scanline: the sheets are mostly flat background, which
        # deflate handles well without per-line filtering.
        lines = bytearray()
        for y in range(strip.height):
            lines += b"\x00"
            lines += raw[y * stride : (y + 1) * stride]
        data = self._z.compress(bytes(lines))
        if data:
            _chunk(self._out, b"IDAT", data)
        self.rows += strip.height

    def close(self) -> None:
        if self._out.closed:
            return
        try:
            if self.rows != self.height:
                raise ValueError(f"wrote {self.rows} of {self.height} rows")
            _chunk(self._out, b"IDAT", self._z.flush())
            _chunk(self._out, b"IEND", b"")
        finally:
            self._out.close()

    def __enter__(self) -> "PngStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._out.close()
            self.path.unlink(missing_ok=True)
