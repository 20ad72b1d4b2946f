"""A small, deterministic blob project to try blobfs on (``blobfs demo DIR``).

Everything is generated with Pillow from a fixed seed: street scenes of varied sizes (PNG
and JPEG) with a sun, a lake with an island, a road, trees and cars drawn in, and the
matching Supervisely annotations (rectangle, polygon with a hole, bitmap, line, point, image
tags) in the SDK's exact JSON layout. The images are packed into ``blob/demo.tar`` the way
``sly.fs.archive_directory`` does it (Python ``tarfile``, PAX format, a PAX header per
member because the mtime is a float), and each dataset gets ``demo_offsets.pkl`` listing its
part of the tar, as ``save_blob_offsets_pkl`` would write it (FORMAT.md §1-4).

Layout::

    DIR/meta.json
    DIR/blob/demo.tar                        members streets/*.png|jpg, rainy/*.jpg
    DIR/streets/demo_offsets.pkl             dataset "streets"
    DIR/streets/img/extra_photo.jpg          one ordinary image beside the blob items
    DIR/streets/ann/*.json
    DIR/streets/datasets/rainy/demo_offsets.pkl   nested dataset "streets/rainy"
    DIR/streets/datasets/rainy/ann/*.json
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from blobfs.errors import InputError

log = logging.getLogger(__name__)

#: Member mtime; a float, as in the SDK's tars, which makes tarfile write a PAX header.
MTIME = 1700000000.0
TAR_STEM = "demo"

CLASSES = [  # title, shape, colour (meta.json)
    ("car", "rectangle", "#E6194B"),
    ("lake", "polygon", "#4363D8"),
    ("sun", "bitmap", "#FFE119"),
    ("road", "line", "#F58231"),
    ("tree", "point", "#3CB44B"),
]
WEATHER = ["sunny", "cloudy", "rain"]


@dataclass
class DemoDataset:
    name: str  # SDK name ("streets/rainy")
    dir: str  # project-relative folder
    members: list[str]  # tar members (folder/name) of this dataset, in tar order
    extra_files: list[str] = field(default_factory=list)  # ordinary img/ files

    @property
    def item_count(self) -> int:
        return len(self.members) + len(self.extra_files)


@dataclass
class DemoProject:
    root: Path
    datasets: list[DemoDataset]
    tar: Path


def meta_json() -> dict[str, Any]:
    """``sly.ProjectMeta.to_json()`` shape: classes, tags, projectSettings."""
    classes = [
        {"title": t, "description": "", "shape": s, "color": c, "geometry_config": {}, "hotkey": ""}
        for t, s, c in CLASSES
    ]
    tags = [
        {"name": "weather", "value_type": "oneof_string", "color": "#0F8A60", "values": WEATHER,
         "hotkey": "", "applicable_type": "all", "classes": [], "target_type": "all"},
        {"name": "checked", "value_type": "none", "color": "#4F0F8A",
         "hotkey": "", "applicable_type": "all", "classes": [], "target_type": "all"},
    ]
    settings = {"multiView": {"enabled": False, "tagName": None, "tagId": None, "isSynced": False}}
    return {"classes": classes, "tags": tags, "projectSettings": settings}


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=4).encode("ascii")  # the SDK's json.dump(..., indent=4)


def bitmap_data(mask: Image.Image) -> str:
    """``sly.Bitmap.data_2_base64``: palette PNG (index 0 transparent) → zlib → base64."""
    pal = mask.point(lambda v: 1 if v else 0).convert("P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0, optimize=0)
    return base64.b64encode(zlib.compress(buf.getvalue())).decode("ascii")


def _obj(title: str, geometry: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"classTitle": title, "description": "", "tags": [], **body,
            "geometryType": geometry, "shape": geometry, "nnCreated": False, "nnUpdated": False}


def _pts(exterior: list[tuple[int, int]], interior: list[list[tuple[int, int]]] = ()) -> dict[str, Any]:
    return {"points": {"exterior": [[int(x), int(y)] for x, y in exterior],
                       "interior": [[[int(x), int(y)] for x, y in ring] for ring in interior]}}


def _ring(cx: float, cy: float, rx: float, ry: float, n: int, rng: random.Random) -> list[tuple[int, int]]:
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        f = rng.uniform(0.85, 1.1)
        pts.append((round(cx + rx * f * math.cos(a)), round(cy + ry * f * math.sin(a))))
    return pts


def draw_scene(rng: random.Random, width: int, height: int, rainy: bool) -> tuple[Image.Image, list[dict]]:
    """One image and its annotation objects (coordinates inside the image)."""
    sky_top = (90, 100, 120) if rainy else (70, 140, 220)
    im = Image.new("RGB", (width, height), sky_top)
    d = ImageDraw.Draw(im)
    horizon = int(height * rng.uniform(0.35, 0.5))
    for y in range(horizon):  # sky gradient
        t = y / max(1, horizon)
        d.line((0, y, width, y), fill=tuple(int(c + (230 - c) * t * 0.6) for c in sky_top))
    d.rectangle((0, horizon, width, height), fill=(70, 110, 60) if not rainy else (60, 80, 60))
    objects: list[dict] = []
    if not rainy and rng.random() < 0.7:  # sun: a disc, annotated as a bitmap
        r = max(3, min(width, height) // rng.randint(8, 12))
        cx, cy = rng.randint(r, width - r - 1), rng.randint(r, max(r, horizon - r - 1))
        mask = Image.new("L", (2 * r + 1, 2 * r + 1), 0)
        ImageDraw.Draw(mask).ellipse((0, 0, 2 * r, 2 * r), fill=255)
        im.paste((255, 220, 60), (cx - r, cy - r), mask)
        objects.append(_obj("sun", "bitmap", {"bitmap": {"data": bitmap_data(mask), "origin": [cx - r, cy - r]}}))
    if rng.random() < 0.6:  # lake with an island: polygon with one interior ring
        ground = height - horizon
        cx, cy = rng.uniform(0.3, 0.7) * width, horizon + ground * rng.uniform(0.45, 0.65)
        rx, ry = width * rng.uniform(0.15, 0.25), ground * rng.uniform(0.18, 0.28)
        outer = _ring(cx, cy, rx, ry, 10, rng)
        island = _ring(cx, cy, rx * 0.3, ry * 0.3, 5, rng)
        d.polygon(outer, fill=(50, 90, 200))
        d.polygon(island, fill=(150, 130, 80))
        objects.append(_obj("lake", "polygon", _pts(outer, [island])))
    if rng.random() < 0.8:  # road: a polyline from the bottom edge towards the horizon
        x0 = rng.randint(0, width - 1)
        pts = [(x0, height - 1), (rng.randint(0, width - 1), (height + horizon) // 2),
               (rng.randint(0, width - 1), horizon + 1)]
        d.line(pts, fill=(120, 120, 120), width=max(2, width // 40), joint="curve")
        objects.append(_obj("road", "line", _pts(pts)))
    for _ in range(rng.randint(0, 3)):  # trees: a canopy, annotated as its centre point
        x, y = rng.randint(3, width - 4), rng.randint(horizon, height - 4)
        r = max(2, width // 40)
        d.ellipse((x - r, y - r, x + r, y + r), fill=(20, 90, 30))
        objects.append(_obj("tree", "point", _pts([(x, y)])))
    for _ in range(rng.randint(0, 2)):  # cars: a body drawn, annotated as a rectangle
        cw, ch = max(6, width // rng.randint(5, 8)), max(4, height // rng.randint(9, 14))
        l = rng.randint(0, width - cw - 1)
        t = rng.randint(horizon, max(horizon, height - ch - 1))
        d.rectangle((l, t, l + cw - 1, t + ch - 1), fill=rng.choice([(200, 30, 40), (240, 240, 240), (30, 30, 30)]))
        objects.append(_obj("car", "rectangle", _pts([(l, t), (l + cw - 1, t + ch - 1)])))
    return im, objects


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _annotation(width: int, height: int, objects: list[dict], rng: random.Random, rainy: bool) -> bytes:
    tags: list[dict] = []
    if rng.random() < 0.8:
        tags.append({"name": "weather", "value": "rain" if rainy else rng.choice(WEATHER[:2])})
    if rng.random() < 0.3:
        tags.append({"name": "checked"})
    ann = {"description": "", "size": {"height": height, "width": width},
           "tags": tags, "objects": objects, "customBigData": {}}
    return _dump(ann)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.mode, info.size = 0o644, len(data)
        tar.addfile(info, io.BytesIO(data))


def make_demo(root: str | Path, seed: int = 0, streets: int = 24, rainy: int = 12) -> DemoProject:
    """Write the demo project into ``root`` (created; must be absent or empty).

    Whole or not at all: built in a temporary folder beside ``root`` and renamed into place at
    the end (``blobfs.write.atomic``), so a full disk or Ctrl-C never leaves a partial project
    that looks like a good one. A failure while writing is a ``WriteFailedError``.
    """
    from blobfs.write.atomic import AtomicOutputs
    from blobfs.write.errors import output_failed

    root = Path(root)
    try:
        os.stat(root)
    except FileNotFoundError:
        pass
    except OSError as e:  # a name too long, a loop of links: Path.exists() raises these
        raise output_failed(root, e) from None
    else:
        if not root.is_dir() or any(root.iterdir()):
            raise InputError(f"{root}: exists and is not an empty folder")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_failed(e.filename or root.parent, e) from None
    with AtomicOutputs([root]) as outputs:
        tmp = outputs.directory(root)
        try:
            datasets = _write_demo(tmp, seed, streets, rainy)
        except OSError as e:
            raise output_failed(root, e) from None
        outputs.commit()
    log.info("demo project written to %s (%d items)", root, sum(d.item_count for d in datasets))
    return DemoProject(root, datasets, root / "blob" / f"{TAR_STEM}.tar")


def _write_demo(root: Path, seed: int, streets: int, rainy: int) -> list[DemoDataset]:
    """Every file of the demo project, into the existing empty folder ``root``."""
    from blobfs.format.offsets_write import write_offsets  # written by the format layer
    from blobfs.format.tarindex import index_tar

    rng = random.Random(seed)
    plan = [DemoDataset("streets", "streets", []), DemoDataset("streets/rainy", "streets/datasets/rainy", [])]
    (root / "blob").mkdir()
    (root / "meta.json").write_bytes(_dump(meta_json()))
    tar_path = root / "blob" / f"{TAR_STEM}.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for ds, count, folder, is_rainy in ((plan[0], streets, "streets", False), (plan[1], rainy, "rainy", True)):
            ann_dir = root / ds.dir / "ann"
            ann_dir.mkdir(parents=True)
            _tar_add(tar, folder, None)
            for k in range(count):
                w, h = rng.randint(96, 360), rng.randint(72, 280)
                fmt = "JPEG" if is_rainy or rng.random() < 0.4 else "PNG"
                name = f"{'rain' if is_rainy else 'street'}_{k:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
                im, objects = draw_scene(rng, w, h, is_rainy)
                _tar_add(tar, f"{folder}/{name}", _encode(im, fmt))
                (ann_dir / f"{name}.json").write_bytes(_annotation(w, h, objects, rng, is_rainy))
                ds.members.append(f"{folder}/{name}")
    for ds, folder in ((plan[0], "streets"), (plan[1], "rainy")):
        write_offsets(root / ds.dir / f"{TAR_STEM}_offsets.pkl", index_tar(tar_path, include=[f"{folder}/*"]))
    # One ordinary image beside the blob items (FORMAT.md §1: img/ and offsets coexist).
    im, objects = draw_scene(rng, 200, 150, False)
    (root / "streets" / "img").mkdir()
    (root / "streets" / "img" / "extra_photo.jpg").write_bytes(_encode(im, "JPEG"))
    (root / "streets" / "ann" / "extra_photo.jpg.json").write_bytes(_annotation(200, 150, objects, rng, False))
    plan[0].extra_files.append("extra_photo.jpg")
    return plan
