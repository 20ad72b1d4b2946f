"""Header-only image facts against Pillow's full decode, and robustness to garbage."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from blobfs.errors import BlobfsError
from blobfs.preview.imagefacts import (
    HEADER_PREFIX, ImageFacts, ImageHeaderError, facts_from_prefix, image_facts, try_image_facts,
)


def _fixture_images(project: Path) -> list[Path]:
    return sorted(p for p in project.glob("*/img/*") if p.is_file())


def _decoded(path: Path) -> ImageFacts:
    with Image.open(path) as im:
        im.load()  # the full decode the header facts must agree with
        return ImageFacts(im.format, im.mode, im.width, im.height)


def test_facts_match_full_decode_on_fixtures(classic_project: Path) -> None:
    images = _fixture_images(classic_project)
    assert len(images) >= 70
    formats = set()
    for path in images:
        want = _decoded(path)
        assert image_facts(path) == want, path
        assert image_facts(path.read_bytes()) == want, path
        with open(path, "rb") as f:
            assert image_facts(f) == want, path
        formats.add(want.format)
    assert formats >= {"PNG", "JPEG"}


def test_facts_of_other_formats_and_modes(tmp_path: Path) -> None:
    cases = [("RGBA", "PNG"), ("L", "PNG"), ("P", "GIF"), ("RGB", "BMP"), ("RGB", "WEBP"),
             ("I;16", "PNG"), ("CMYK", "TIFF"), ("L", "JPEG")]
    for mode, fmt in cases:
        buf = io.BytesIO()
        Image.new(mode, (37, 23)).save(buf, format=fmt)
        path = tmp_path / f"x.{fmt.lower()}"
        path.write_bytes(buf.getvalue())
        assert image_facts(buf.getvalue()) == _decoded(path), (mode, fmt)


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff",
    b"GIF89a", b"BM" + b"\xff" * 60, b"RIFF\x00\x00\x00\x00WEBPVP8 ",
])
def test_garbage_raises_one_line_blobfs_error(data: bytes) -> None:
    with pytest.raises(BlobfsError) as err:
        image_facts(data, "ds/img/bad.png")
    assert "ds/img/bad.png" in str(err.value) and "\n" not in str(err.value)
    assert try_image_facts(data) is None


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageHeaderError, match="nope.png"):
        image_facts(tmp_path / "nope.png")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    assert try_image_facts(data) is None or isinstance(try_image_facts(data), ImageFacts)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 120), st.integers(0, 255), st.sampled_from(["PNG", "JPEG"]))
def test_damaged_headers_never_crash(pos: int, value: int, fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    data[pos % len(data)] = value
    facts = try_image_facts(bytes(data))
    assert facts is None or (facts.width >= 0 and facts.height >= 0)


def test_prefix_falls_back_to_whole_item_for_long_jpeg_headers() -> None:
    # An ICC profile larger than the prefix puts the JPEG's SOF marker past HEADER_PREFIX.
    buf = io.BytesIO()
    Image.new("RGB", (51, 17), (1, 2, 3)).save(buf, format="JPEG", icc_profile=bytes(HEADER_PREFIX + 5000))
    data = buf.getvalue()
    assert data.find(b"\xff\xc0") > HEADER_PREFIX
    calls = []
    facts = facts_from_prefix(data[:HEADER_PREFIX], lambda: calls.append(1) or data, "big.jpg")
    assert (facts.format, facts.width, facts.height) == ("JPEG", 51, 17)
    assert calls == [1]
    # A short item is its own prefix: no second read, the error names it.
    with pytest.raises(ImageHeaderError, match="short.png"):
        facts_from_prefix(b"not an image", lambda: pytest.fail("re-read a short item"), "short.png")


def test_images_report_against_full_decode(classic_project: Path, tmp_path: Path) -> None:
    import shutil
    from collections import Counter

    import blobfs
    from blobfs.cli.preview import format_images_report, images_report

    proj = tmp_path / "p"
    shutil.copytree(classic_project, proj)
    (proj / "ds2/img/scan 04.png").write_bytes(b"broken")
    images = _fixture_images(proj)
    decoded = [_decoded(p) for p in images if p.name != "scan 04.png"]
    with blobfs.open_project(proj) as p:
        report = images_report(p, progress=True)
    assert report["items"] == len(images) and report["unreadable"] == 1
    assert report["unreadable_examples"] == ["ds2/img/scan 04.png"]
    assert report["formats"] == dict(Counter(f.format for f in decoded))
    assert report["modes"] == dict(Counter(f.mode for f in decoded))
    assert report["width"] == {"min": min(f.width for f in decoded), "max": max(f.width for f in decoded)}
    assert report["height"] == {"min": min(f.height for f in decoded), "max": max(f.height for f in decoded)}
    assert report["bytes"] == sum(p.stat().st_size for p in images)
    hist = report["longest_side"]
    assert sum(b["count"] for b in hist) == len(decoded)
    lo = 0
    for b in hist:  # each image in the bucket of its longest side
        hi = b["upto"] or 10**9
        assert b["count"] == sum(lo < max(f.width, f.height) <= hi for f in decoded)
        lo = hi
    json.dumps(report)  # JSON-serializable for info --json
    text = format_images_report(report)
    assert "unreadable:   1" in text and "JPEG" in text and "PNG" in text


def test_info_images_cli(blob_project: Path) -> None:
    from click.testing import CliRunner

    from blobfs.cli.main import cli

    res = CliRunner().invoke(cli, ["info", str(blob_project), "--images"])
    assert res.exit_code == 0, res.output
    assert "formats:" in res.output and "longest side:" in res.output


def test_info_images_exits_1_when_an_image_does_not_decode(classic_project: Path, tmp_path: Path) -> None:
    # It said "unreadable: 1" and exited 0, so a script checking the status saw no problem.
    import shutil

    from click.testing import CliRunner

    from blobfs.cli.main import cli

    proj = tmp_path / "p"
    shutil.copytree(classic_project, proj)
    assert CliRunner().invoke(cli, ["info", str(proj), "--images"]).exit_code == 0
    (proj / "ds2/img/scan 04.png").write_bytes(b"broken")
    plain = CliRunner().invoke(cli, ["info", str(proj)])
    assert plain.exit_code == 0, plain.output  # without --images nothing reads the header
    for extra in ([], ["--json"]):
        res = CliRunner().invoke(cli, ["info", str(proj), "--images", *extra])
        assert res.exit_code == 1, res.output
        assert "scan 04.png" in res.output
