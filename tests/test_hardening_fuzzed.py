"""Cases a fuzz run over mutants of the SDK fixture found (issue #5's contract).

Hostile JSON, coordinates and folder names printed tracebacks in ``verify`` and ``preview``;
offsets files that are no regular file were taken silently for datasets without items. Every
case runs the real ``blobfs`` command in a subprocess, as test_hardening_input.py does: no
traceback, the problem named in one line, and the rest still served or drawn.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from PIL import Image

from test_hardening_input import copy_project, info_json, one_line, run

#: Deeper than any recursion limit CPython's json decoder can take (it recurses per level).
DEEP = 100_000


def _deep_array() -> str:
    return "[" * DEEP + "]" * DEEP


def _deep_object() -> str:
    return '{"a":' * DEEP + "1" + "}" * DEEP


def _preview(proj: Path, out: Path, *args: str):
    r = run("preview", str(proj), "-o", str(out), "--sample", "first", "--limit", "100", "--thumb", "48",
            *args, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def test_deeply_nested_annotation_is_one_problem_for_verify(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    ann = proj / "ds2" / "ann"
    (ann / "scan 00.jpg.json").write_text(_deep_array())
    (ann / "scan 01.png.json").write_text(_deep_object())
    for args in ((), ("--decode",)):
        r = run("verify", *args, str(proj), timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        for name in ("scan 00.jpg.json", "scan 01.png.json"):
            got = [ln for ln in r.stdout.splitlines() if ln.startswith(f"{ann / name}:")]
            assert len(got) == 1 and "nested too deeply" in got[0], (name, r.stdout)


def test_deeply_nested_meta_json_verify_and_preview(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    (proj / "meta.json").write_text(_deep_array())
    r = run("verify", str(proj), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert any(ln.startswith(f"{proj / 'meta.json'}:") and "nested too deeply" in ln for ln in r.stdout.splitlines())
    out = tmp_path / "sheet.png"
    r = _preview(proj, out)
    assert r.returncode == 0, r.stderr
    assert "meta.json" in r.stderr and "class colours" in r.stderr  # said, then drawn without them
    with Image.open(out) as im:
        assert im.width > 0


def test_deeply_nested_annotation_is_skipped_by_preview(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    victim = proj / "ds2" / "ann" / "scan 00.jpg.json"
    victim.write_text(_deep_array())
    r = _preview(proj, tmp_path / "sheet.png", "ds2")
    assert r.returncode == 0, r.stderr
    assert any("scan 00.jpg.json" in ln and "annotation not drawn" in ln for ln in r.stderr.splitlines()), r.stderr


def _rect(points: list) -> dict:
    return {"classTitle": "x", "geometryType": "rectangle",
            "points": {"exterior": points, "interior": []}}


def test_out_of_range_coordinates_skip_the_object_not_the_sheet(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    ann_dir = proj / "ds1" / "ann"
    anns = sorted(ann_dir.glob("*.json"))
    assert len(anns) >= 3
    bad = {
        # What the fuzz run found: Pillow takes C longs and failed only when drawing.
        anns[0]: [_rect([[-99999999999, -1e300], [99999999999999999999999, 1e300]])],
        anns[1]: [{"classTitle": "x", "geometryType": "polygon",
                   "points": {"exterior": [[0, 0], [1e30, 5], [5, 1e30]], "interior": []}}],
        anns[2]: [{"classTitle": "x", "geometryType": "point", "points": {"exterior": [[1e20, 3]], "interior": []}}],
    }
    for path, objects in bad.items():
        doc = json.loads(path.read_bytes())
        doc["objects"] = objects + doc["objects"]
        path.write_text(json.dumps(doc))
    out = tmp_path / "sheet.png"
    r = _preview(proj, out, "ds1")
    assert r.returncode == 0, r.stderr
    warned = r.stderr.splitlines()
    for path in bad:
        assert any(path.name.removesuffix(".json") in ln and "out of range" in ln for ln in warned), (path, r.stderr)
    with Image.open(out) as im:
        assert im.width > 0


def test_dataset_folder_with_a_newline_in_its_name(blob_project, tmp_path):
    proj = copy_project(blob_project, tmp_path / "p")
    shutil.move(proj / "ds2", proj / "ds\n2")
    out = tmp_path / "sheet.png"
    r = _preview(proj, out)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.width > 0


def test_offsets_file_that_is_no_regular_file_is_reported(blob_project, tmp_path):
    """A FIFO would block open(2) and /dev/zero never ends: never read, always reported (before,
    the dataset silently showed no items)."""
    for kind in ("fifo", "dev_zero", "folder"):
        proj = copy_project(blob_project, tmp_path / kind)
        pkl = proj / "ds2" / "more_images_offsets.pkl"
        pkl.unlink()
        {"fifo": lambda: os.mkfifo(pkl), "dev_zero": lambda: pkl.symlink_to("/dev/zero"),
         "folder": lambda: pkl.mkdir()}[kind]()
        code, rep = info_json(proj)
        assert code == 1, rep
        assert [p for p in rep["problems"] if str(pkl) in p and "not a regular file" in p], rep["problems"]
        assert [d["items"] for d in rep["datasets"]] == [62, 0]
        r = run("ls", str(proj), timeout=30)  # strict commands stop, as for an unusable tar
        assert r.returncode == 2 and str(pkl) in one_line(r) and "not a regular file" in one_line(r)
