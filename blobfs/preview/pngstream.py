"""Write a PNG one horizontal strip at a time.

A contact sheet of 10,000 thumbnails is hundreds of megapixels; Pillow's PNG encoder needs
the whole image in memory. The PNG format itself is a stream (IHDR, then zlib-compressed
scanlines spread over any number of IDAT chunks, then IEND; RFC 2083 / ISO 15948), so
strips can be compressed as they are rendered and memory stays at one strip.
"""
from __future__ import annotations

import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
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
        # zlib releases the GIL: compressing strip N overlaps rendering strip N+1. At most one
        # strip is in flight, so memory stays at two strips.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-deflate")
        self._pending: Future[None] | None = None
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
        self._wait()
        self._pending = self._pool.submit(self._deflate, bytes(lines))
        self.rows += strip.height

    def _deflate(self, lines: bytes) -> None:
        data = self._z.compress(lines)
        if data:
            _chunk(self._out, b"IDAT", data)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a write error (disk full) in the caller

    def close(self) -> None:
        if self._out.closed:
            return
        try:
            self._wait()
            if self.rows != self.height:
                raise ValueError(f"wrote {self.rows} of {self.height} rows")
            _chunk(self._out, b"IDAT", self._z.flush())
            _chunk(self._out, b"IEND", b"")
        finally:
            self._pool.shutdown()
            self._out.close()

    def __enter__(self) -> "PngStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pool.shutdown(cancel_futures=True)
            self._out.close()
            self.path.unlink(missing_ok=True)
