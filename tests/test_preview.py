"""Contact sheets rendered from the SDK fixtures, checked pixel by pixel."""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import blobfs
from blobfs.cli.main import cli
from blobfs.preview import sheet as sheet_mod
from blobfs.preview.draw import FILL_ALPHA
from blobfs.preview.options import PreviewOptions
from blobfs.preview.sheet import PLACEHOLDER_BG, render_sheet, sample_items, write_sheet
from mount_helpers import libfuse_available, mounted, requires_fuse
from sdk_rules import read_project

THUMB = 96


def _colors(project: Path) -> dict[str, tuple[int, int, int]]:
    meta = json.loads((project / "meta.json").read_bytes())
    return {c["title"]: tuple(int(c["color"][i:i + 2], 16) for i in (1, 3, 5)) for c in meta["classes"]}


def _fit(w: int, h: int, box: int) -> tuple[int, int]:
    s = min(box / w, box / h)
    return max(1, round(w * s)), max(1, round(h * s))


class Rendered:
    """A sheet of one whole dataset in index order, with and without annotations drawn."""

    def __init__(self, source: Path, dataset: str, **kw) -> None:
        with blobfs.open_project(source) as p:
            ds = next(d for d in p.datasets if d.name == dataset)
            self.names = [ds.items.name(i) for i in range(len(ds.items))]
            self.sizes = {}
            for i, n in enumerate(self.names):
                with Image.open(io.BytesIO(ds.items.read(i))) as im:
                    self.sizes[n] = im.size
            self.anns = {n: json.loads(ds.ann_path(n).read_bytes()) for n in self.names}
            opts = PreviewOptions(limit=len(self.names), sample="first", thumb=THUMB, columns=7, labels=False, **kw)
            self.sheet = render_sheet(p, dataset, opts)
            self.plain = render_sheet(p, dataset, PreviewOptions(**{**_asdict(opts), "no_ann": True}))
            self.layout = sheet_mod.layout_for(len(self.names), opts)

    def place(self, name: str) -> tuple[int, int, float, float]:
        """Thumbnail origin on the sheet and the scale from image to thumbnail."""
        k = self.names.index(name)
        w, h = self.sizes[name]
        tw, th = _fit(w, h, THUMB)
        cx, cy = self.layout.cell_origin(k)
        return cx + (THUMB - tw) // 2, cy + (THUMB - th) // 2, tw / w, th / h


def _asdict(o: PreviewOptions) -> dict:
    return {f: getattr(o, f) for f in o.__dataclass_fields__}


def _objects(r: Rendered, geometry: str):
    for name in r.names:
        for obj in r.anns[name]["objects"]:
            if obj["geometryType"] == geometry:
                yield name, obj


@pytest.fixture(scope="module", params=["sdk_blob_project", "sdk_classic_project"])
def rendered(request, fixtures_dir: Path) -> tuple[Path, Rendered]:
    src = fixtures_dir / request.param
    return src, Rendered(src, "ds1")


def test_rectangle_border_in_class_colour_at_scaled_coordinates(rendered) -> None:
    src, r = rendered
    color = _colors(src)["car"]
    rects = list(_objects(r, "rectangle"))
    assert len(rects) >= 3
    on = off = total = 0
    for name, obj in rects:
        ox, oy, sx, sy = r.place(name)
        (left, top), (right, bottom) = obj["points"]["exterior"]
        x0, y0 = ox + round(left * sx), oy + round(top * sy)
        x1, y1 = ox + round((right + 1) * sx) - 1, oy + round((bottom + 1) * sy) - 1
        alone = all(o["geometryType"] == "rectangle" for o in r.anns[name]["objects"])
        hits = 0
        for k in range(1, 6):  # five points along the right and the bottom edge
            y = y0 + (y1 - y0) * k // 6
            x = x0 + (x1 - x0) * k // 6
            for border, outside in (((x1, y), (x1 + 2, y)), ((x, y1), (x, y1 + 2))):
                total += 1
                hits += r.sheet.getpixel(border) == color
                if alone:  # just outside the box the image is untouched: the border is not shifted
                    off += 1
                    assert r.sheet.getpixel(outside) == r.plain.getpixel(outside), (name, outside)
        on += hits
        assert hits, f"{name}: no border pixel in the class colour"
    # Other objects' outlines, drawn later, may cross a border: most samples must still hit.
    assert on >= 0.9 * total and off >= 50, (on, off, total)


def _mask(obj: dict) -> Image.Image:
    png = zlib.decompress(base64.b64decode(obj["bitmap"]["data"]))
    return Image.open(io.BytesIO(png)).convert("RGBA").getchannel("A")


def test_bitmap_mask_blended_in_class_colour(rendered) -> None:
    src, r = rendered
    color = _colors(src)["mask"]
    a = FILL_ALPHA / 255
    inside = inside_ok = outside = 0
    bitmaps = list(_objects(r, "bitmap"))
    assert len(bitmaps) >= 3
    for name, obj in bitmaps:
        ox, oy, sx, sy = r.place(name)
        mx, my = obj["bitmap"]["origin"]
        mask = _mask(obj)
        alone = len(r.anns[name]["objects"]) == 1
        for j in range(mask.height):
            for i in range(mask.width):
                # The centre of image pixel (mx+i, my+j) on the thumbnail.
                p = (ox + int((mx + i + 0.5) * sx), oy + int((my + j + 0.5) * sy))
                got, base = r.sheet.getpixel(p), r.plain.getpixel(p)
                if mask.getpixel((i, j)):
                    want = tuple(c * a + b * (1 - a) for c, b in zip(color, base))
                    inside += 1
                    inside_ok += all(abs(g - w) <= 3 for g, w in zip(got, want))
                elif alone:  # around the mask, inside its box, the image is untouched
                    outside += 1
                    assert got == base, (name, i, j)
    assert inside > 100
    assert inside_ok >= 0.95 * inside, (inside_ok, inside)
    assert outside > 20


def test_polygon_fill_and_labels(fixtures_dir: Path) -> None:
    src = fixtures_dir / "sdk_blob_project"
    with blobfs.open_project(src) as p:
        opts = PreviewOptions(limit=100, sample="first", thumb=THUMB)
        with_labels = render_sheet(p, "ds1", opts)
        without = render_sheet(p, "ds1", PreviewOptions(**{**_asdict(opts), "labels": False}))
        bare = render_sheet(p, "ds1", PreviewOptions(**{**_asdict(opts), "no_ann": True}))
    road = _colors(src)["road"]
    diff_labels = sum(a != b for a, b in zip(_pixels(with_labels), _pixels(without)))
    diff_ann = sum(a != b for a, b in zip(_pixels(without), _pixels(bare)))
    assert diff_labels > 500 and diff_ann > 5000
    assert Counter(_pixels(without))[road] > 100  # polygon outlines in the class colour


def _layout_sheet(source: Path, **kw) -> Image.Image:
    with blobfs.open_project(source) as p:
        return render_sheet(p, None, PreviewOptions(sample="first", **kw))


def test_sheet_size_follows_columns_thumb_limit(blob_project: Path) -> None:
    # The sheet is a grid: width = pad + columns * cell_w, height = pad + rows * cell_h,
    # cell_w = thumb + gap. Measure cell and pad from two sheets, then predict the others.
    base = _layout_sheet(blob_project, limit=12, columns=4, thumb=64)  # 3 rows
    wider = _layout_sheet(blob_project, limit=12, columns=5, thumb=64)  # 3 rows (12 / 5)
    longer = _layout_sheet(blob_project, limit=13, columns=4, thumb=64)  # 4 rows
    cell_w, cell_h = wider.width - base.width, longer.height - base.height
    pad_w, pad_h = base.width - 4 * cell_w, base.height - 3 * cell_h
    assert 64 < cell_w < 64 * 2 and 64 < cell_h < 64 * 2 and 0 <= pad_w < cell_w and 0 <= pad_h < cell_h
    assert wider.height == base.height and longer.width == base.width
    bigger = _layout_sheet(blob_project, limit=12, columns=4, thumb=80)
    assert bigger.size == (pad_w + 4 * (cell_w + 16), pad_h + 3 * (cell_h + 16))
    few = _layout_sheet(blob_project, limit=3, columns=8, thumb=64)  # columns shrink to the items
    assert few.size == (pad_w + 3 * cell_w, pad_h + cell_h)
    tall = _layout_sheet(blob_project, limit=23, columns=2, thumb=64)
    assert tall.size == (pad_w + 2 * cell_w, pad_h + 12 * cell_h)
    with blobfs.open_project(blob_project) as p:
        total = sum(len(d.items) for d in p.datasets)
    everything = _layout_sheet(blob_project, limit=10_000, columns=4, thumb=64)  # limit > items
    assert everything.size == (pad_w + 4 * cell_w, pad_h + -(-total // 4) * cell_h)


def test_layout_matches_rendered_sheet(blob_project: Path) -> None:
    opts = PreviewOptions(limit=11, columns=3, thumb=50)
    with blobfs.open_project(blob_project) as p:
        im = render_sheet(p, None, opts)
    assert im.size == sheet_mod.layout_for(11, opts).size


def test_streamed_png_equals_in_memory_sheet(blob_project: Path, tmp_path: Path) -> None:
    opts = PreviewOptions(limit=30, columns=7, thumb=72, seed=5)
    with blobfs.open_project(blob_project) as p:
        want = render_sheet(p, None, opts)
        layout = write_sheet(p, None, opts, tmp_path / "s.png")
        write_sheet(p, None, opts, tmp_path / "s.jpg")
    with Image.open(tmp_path / "s.png") as got:
        assert got.size == want.size == layout.size
        assert got.convert("RGB").tobytes() == want.tobytes()
    with Image.open(tmp_path / "s.jpg") as jpg:
        assert jpg.format == "JPEG" and jpg.size == want.size


def test_sampling_is_seeded_distinct_and_bounded(blob_project: Path) -> None:
    with blobfs.open_project(blob_project) as p:
        ds = list(p.datasets)
        total = sum(len(d.items) for d in ds)
        pick = lambda **kw: [(d.name, i) for d, i in sample_items(ds, PreviewOptions(**kw))]  # noqa: E731
        a, b, c = pick(limit=20, seed=1), pick(limit=20, seed=1), pick(limit=20, seed=2)
        assert a == b != c and len(set(a)) == 20
        assert a == sorted(a, key=lambda t: ([d.name for d in ds].index(t[0]), t[1]))
        assert len(pick(limit=10_000)) == total
        assert pick(limit=5, sample="first") == [(ds[0].name, i) for i in range(5)]
        names = {d.name for d, _ in sample_items(ds, PreviewOptions(limit=total - 1, seed=3))}
        assert names == {d.name for d in ds}


def _pixels(im: Image.Image) -> list[tuple[int, int, int]]:
    raw = im.convert("RGB").tobytes()
    return list(zip(raw[0::3], raw[1::3], raw[2::3]))


def _placeholder_share(im: Image.Image, box: tuple[int, int, int, int]) -> float:
    """Share of the placeholder colour among the non-background pixels of a thumb box."""
    region = [px for px in _pixels(im.crop(box)) if px != sheet_mod.BACKGROUND]
    return sum(px == PLACEHOLDER_BG for px in region) / len(region)


def test_undecodable_image_gets_placeholder_classic(classic_project: Path, tmp_path: Path, caplog) -> None:
    proj = tmp_path / "p"
    shutil.copytree(classic_project, proj)
    victim = "scan 03.png"
    data = (proj / "ds2/img" / victim).read_bytes()
    (proj / "ds2/img" / victim).write_bytes(data[: len(data) // 3])  # truncated PNG
    (proj / "ds2/img/scan 05.png").write_bytes(b"this is not an image")
    caplog.set_level(logging.WARNING)
    with blobfs.open_project(proj) as p:
        names = [p.datasets[1].items.name(i) for i in range(len(p.datasets[1].items))]
        opts = PreviewOptions(limit=100, sample="first", thumb=THUMB, columns=4)
        im = render_sheet(p, "ds2", opts)
    layout = sheet_mod.layout_for(len(names), opts)
    bad = {victim, "scan 05.png"}
    for k, n in enumerate(names):
        x, y = layout.cell_origin(k)
        share = _placeholder_share(im, (x, y, x + THUMB, y + THUMB))
        assert (share > 0.5) == (n in bad), (n, share)
    for n in bad:
        assert any(n in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records), n


def test_undecodable_blob_item_gets_placeholder(blob_project: Path, tmp_path: Path, caplog) -> None:
    proj = tmp_path / "p"
    shutil.copytree(blob_project, proj)
    sdk = read_project(proj)
    victim = sdk.dataset("ds2").items[2]
    tar, start, end = sdk.dataset("ds2").blob_items[victim]
    with open(proj / tar, "r+b") as f:  # zero the item's bytes inside the real tar
        f.seek(start)
        f.write(bytes(end - start))
    caplog.set_level(logging.WARNING)
    with blobfs.open_project(proj) as p:
        ds = p.datasets[1]
        k = ds.items.find(victim)
        opts = PreviewOptions(limit=100, sample="first", thumb=THUMB, columns=4)
        im = render_sheet(p, "ds2", opts)
    x, y = sheet_mod.layout_for(len(sdk.dataset("ds2").items), opts).cell_origin(k)
    assert _placeholder_share(im, (x, y, x + THUMB, y + THUMB)) > 0.5
    assert any(victim in rec.getMessage() for rec in caplog.records)


def test_nested_dataset_and_caption_prefix(tmp_path: Path) -> None:
    from blobfs.demo import make_demo

    make_demo(tmp_path / "demo", streets=4, rainy=3)
    with blobfs.open_project(tmp_path / "demo") as p:
        one = render_sheet(p, "streets/rainy", PreviewOptions(limit=10, columns=5, thumb=48))
        same = render_sheet(p, "streets/datasets/rainy", PreviewOptions(limit=10, columns=5, thumb=48))
        assert one.tobytes() == same.tobytes()
        assert one.size == sheet_mod.layout_for(3, PreviewOptions(columns=5, thumb=48)).size


def test_cli_preview(blob_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    res = CliRunner().invoke(cli, ["preview", str(blob_project), "ds1", "-o", str(out), "--limit", "9",
                                   "--columns", "3", "--thumb", "40", "--seed", "7"])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.size == sheet_mod.layout_for(9, PreviewOptions(columns=3, thumb=40)).size
    assert "9 items" in res.output
    bad = CliRunner().invoke(cli, ["preview", str(blob_project), "nope", "-o", str(out)])
    assert bad.exit_code == 2 and "nope" in bad.output and "Traceback" not in bad.output
    usage = CliRunner().invoke(cli, ["preview", str(blob_project), "-o", str(out), "--columns", "0"])
    assert usage.exit_code == 2
    notdir = CliRunner().invoke(cli, ["preview", str(blob_project), "-o", str(tmp_path / "no/such/x.png")])
    # No folder to write into: a usage error (2), as `pack -o no/such/x.tar` and `unpack SRC
    # no/such/out` (1 is for an output that could not be written: full disk, permissions).
    assert notdir.exit_code == 2 and "output folder does not exist" in notdir.output
    assert "Traceback" not in notdir.output
    # A missing SOURCE is one line naming it, as for every other command (it was click's
    # three-line usage error).
    missing = tmp_path / "nope"
    gone = subprocess.run([sys.executable, "-m", "blobfs", "preview", str(missing), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and gone.stderr == f"blobfs: {missing}: no such file or directory\n"



def test_cli_preview_of_nothing_names_what_was_given(tmp_path: Path) -> None:
    """"No items" named the project above a dataset folder it was given, and a bare tar as
    "source" (no file at all); now the folder or tar given, and the DATASET asked for."""
    from blobfs.format.offsets_write import dumps_offsets

    proj = tmp_path / "proj"
    (proj / "empty" / "ann").mkdir(parents=True)
    (proj / "meta.json").write_text('{"classes": [], "tags": []}')
    tar = tmp_path / "t.tar"
    tar.write_bytes(bytes(10240))  # an empty archive
    (tmp_path / "t_offsets.pkl").write_bytes(dumps_offsets([]))
    out = tmp_path / "sheet.png"

    def error(*args: object) -> str:
        res = CliRunner().invoke(cli, ["preview", *map(str, args), "-o", str(out)])
        assert res.exit_code == 2 and not out.exists(), res.output
        return res.output.splitlines()[-1]

    assert error(proj / "empty") == f"blobfs: {proj / 'empty'}: no items to preview"
    assert error(proj, "empty") == f"blobfs: {proj}: dataset 'empty' has no items to preview"
    assert error(tar) == f"blobfs: {tar}: no items to preview"
    assert error(tar, "nope") == f"blobfs: {tar}: no dataset 'nope' (datasets: t)"

@pytest.mark.parametrize("args", [["--columns", "1000", "--thumb", "2048"],
                                  ["--columns", "11", "--thumb", "2048", "--limit", "500"]])
def test_cli_preview_rows_over_the_memory_budget(tmp_path: Path, args: list[str]) -> None:
    """A row of 48 (the --limit) 2048 px thumbnails is 98,598 px wide: 584 MiB per strip, ~3 GiB
    of peak memory. Refused with one line naming the options and the limit, before the source
    is even opened: here a file that is no tar, which would be its own error."""
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"no tar at all" * 100)
    out = tmp_path / "sheet.png"
    r = subprocess.run([sys.executable, "-m", "blobfs", "preview", str(junk), "-o", str(out), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line, = r.stderr.splitlines()
    assert line.startswith(f"blobfs: --columns {args[1]} --thumb 2048"), line
    assert "MiB" in line and "at most 128 MiB" in line and "at most 10 columns" in line, line
    assert sorted(tmp_path.iterdir()) == [junk]


def test_preview_row_budget_follows_the_layout(blob_project: Path) -> None:
    """The budget is the strip the sheet renders: what fits is accepted, whatever --columns
    says when --limit keeps the row short, and the row size it checks is the layout's."""
    from blobfs.errors import InputError
    from blobfs.preview.options import MAX_IMAGE_BYTES, row_size

    PreviewOptions(columns=10, thumb=2048)  # the default 8 columns fit at the largest thumb
    PreviewOptions(columns=1000, thumb=2048, limit=10)  # at most 10 thumbnails in a row
    PreviewOptions(columns=1000, thumb=160, limit=1000)  # the default thumb fits any --columns
    with pytest.raises(InputError, match="at most 10 columns"):
        PreviewOptions(columns=11, thumb=2048)
    for columns, thumb in ((3, 40), (10, 2048), (7, 333)):
        layout = sheet_mod.layout_for(columns, PreviewOptions(columns=columns, thumb=thumb, limit=columns))
        assert row_size(columns, thumb) == (layout.size[0], layout.cell_h)
    w, h = row_size(10, 2048)
    assert w * h * 3 <= MAX_IMAGE_BYTES < row_size(11, 2048)[0] * h * 3
    with blobfs.open_project(blob_project) as p:
        opts = PreviewOptions(limit=3, columns=3, thumb=40)
        strips = list(sheet_mod.iter_strips(p, None, opts)[1])
    assert strips[1].size == row_size(3, 40)


@pytest.mark.parametrize("name", ["sheet.jpg", "sheet.gif", "sheet.webp"])
def test_cli_preview_sheet_too_large_for_format(blob_project: Path, tmp_path: Path, name: str) -> None:
    # 40 rows of one 2048 px thumbnail: 82,886 px high (a row is within the memory budget).
    # libjpeg printed its own line on stderr and Pillow "broken data stream" (exit 1, as for a
    # full disk); GIF died with an OverflowError traceback.
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "blobfs", "preview", str(blob_project), "-o", str(out),
                        "--columns", "1", "--thumb", "2048", "--limit", "40"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "too large for" in r.stderr and "2060x82886" in r.stderr, r.stderr
    assert not out.exists() and sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["sheet.jpg", "sheet.tiff"])
def test_cli_preview_whole_sheet_over_the_memory_budget(blob_project: Path, tmp_path: Path, name: str) -> None:
    """Formats other than PNG hold the whole sheet in memory: 10 x 4 thumbnails of 2048 px
    (each row within the budget) make a 488 MiB sheet, 1.4 GiB of peak memory for a JPEG.
    Refused before any image is read, saying that .png is written row by row."""
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "blobfs", "preview", str(blob_project), "-o", str(out),
                        "--columns", "10", "--thumb", "2048", "--limit", "40"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line, = r.stderr.splitlines()
    assert line.startswith(f"blobfs: {out}: a 20,546x8,294 px sheet"), line
    assert "at most 128 MiB" in line and ".png" in line, line
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, why", [("sheet.xbm", "cannot write mode RGB"),
                                       ("sheet.xpm", "has no writer")])
def test_cli_preview_format_without_rgb_writer(blob_project: Path, tmp_path: Path, name: str, why: str) -> None:
    # Pillow's refusals are OSErrors without errno: a usage error (2), not an unwritable output (1).
    out = tmp_path / name
    r = CliRunner().invoke(cli, ["preview", str(blob_project), "-o", str(out), "--limit", "4"])
    assert r.exit_code == 2 and why in r.output and "Traceback" not in r.output, r.output
    assert not out.exists()


@pytest.mark.mount
@requires_fuse
def test_preview_of_mount_point_equals_classic_project(blob_project: Path, classic_project: Path, tmp_path: Path) -> None:
    # A mount point is just a classic project folder: its sheet is pixel-identical to the
    # sheet of the SDK-made classic copy of the same project.
    opts = PreviewOptions(limit=40, seed=3, columns=8, thumb=64)
    with blobfs.open_project(classic_project) as p:
        want = render_sheet(p, None, opts)
    libfuse = next(v for v in (3, 2) if libfuse_available(v))
    with mounted(blob_project, tmp_path, libfuse=libfuse) as m:
        with blobfs.open_project(m.path()) as p:
            got = render_sheet(p, None, opts)
    assert got.tobytes() == want.tobytes()
