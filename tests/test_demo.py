"""The demo project: a real blob project that blobfs and the SDK's rules both open whole."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import blobfs
from blobfs.cli.main import cli
from blobfs.demo import make_demo
from blobfs.errors import BlobfsError
from sdk_rules import read_project


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("demo") / "project"
    return root, make_demo(root)


def test_sdk_rules_open_every_dataset_and_item(demo) -> None:
    root, made = demo
    sdk = read_project(root)
    assert sdk.warnings == []
    assert sdk.counts() == {d.name: d.item_count for d in made.datasets}
    assert [d.dir for d in sdk.datasets] == [d.dir for d in made.datasets]
    assert "/datasets/" in made.datasets[1].dir  # one nested dataset
    assert any(d.extra_files for d in made.datasets)  # one ordinary img/ file
    with blobfs.open_project(root) as p:
        assert {d.name: len(d.items) for d in p.datasets} == sdk.counts()
        assert not p.problems
        for d in p.datasets:
            for i in range(len(d.items)):
                assert d.ann_path(d.items.name(i)) is not None


def test_blob_ranges_hold_the_annotated_images(demo) -> None:
    root, _ = demo
    sdk = read_project(root)
    checked = 0
    for ds in sdk.datasets:
        for name, (tar, start, end) in ds.blob_items.items():
            with open(root / tar, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            ann = json.loads((root / ds.dir / "ann" / ds.ann_files[name]).read_bytes())
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert {"width": im.width, "height": im.height} == ann["size"], name
                assert im.format == ("PNG" if name.endswith(".png") else "JPEG")
            checked += 1
    assert checked == sum(len(d.blob_items) for d in sdk.datasets) > 30


def test_every_geometry_and_tags_present(demo) -> None:
    root, _ = demo
    kinds, holes, tags, classes = set(), 0, set(), set()
    for ann in root.rglob("ann/*.json"):
        doc = json.loads(ann.read_bytes())
        raw = ann.read_bytes()
        assert raw == json.dumps(doc, indent=4).encode()  # the SDK's layout
        tags |= {t["name"] for t in doc["tags"]}
        for obj in doc["objects"]:
            kinds.add(obj["geometryType"])
            classes.add(obj["classTitle"])
            if obj["geometryType"] == "polygon":
                holes += bool(obj["points"]["interior"])
    assert kinds == {"rectangle", "polygon", "bitmap", "line", "point"}
    assert holes > 0 and tags == {"weather", "checked"}
    meta = json.loads((root / "meta.json").read_bytes())
    assert classes <= {c["title"] for c in meta["classes"]}
    assert all(c["color"].startswith("#") and len(c["color"]) == 7 for c in meta["classes"])


def test_tar_is_pax_like_the_sdk(demo) -> None:
    root, made = demo
    with tarfile.open(made.tar) as t:
        members = t.getmembers()
        assert all(m.pax_headers.get("mtime") for m in members)
        files = [m.name for m in members if m.isfile()]
    assert files == [m for d in made.datasets for m in d.members]
    assert made.tar.stat().st_size % 10240 == 0


def test_deterministic(demo, tmp_path: Path) -> None:
    root, _ = demo
    make_demo(tmp_path / "again")

    def digest(base: Path) -> dict[str, str]:
        return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(base.rglob("*")) if p.is_file()}

    assert digest(tmp_path / "again") == digest(root)
    make_demo(tmp_path / "other", seed=1)
    assert digest(tmp_path / "other") != digest(root)


def test_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(BlobfsError, match=str(tmp_path)):
        make_demo(tmp_path)
    assert (tmp_path / "x").read_text() == "keep me"


def test_cli_demo(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["demo", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    made = make_demo(tmp_path / "api")  # the CLI writes what the API writes
    assert read_project(tmp_path / "d").counts() == {d.name: d.item_count for d in made.datasets}
    nested = made.datasets[1]
    assert f"{nested.name}: {nested.item_count} items" in res.output
    again = CliRunner().invoke(cli, ["demo", str(tmp_path / "d")])
    assert again.exit_code == 2 and "Traceback" not in again.output


def test_directory_name_too_long_is_one_line(tmp_path: Path) -> None:
    """``blobfs demo`` of a name longer than the file system takes was a traceback (from
    ``Path.exists()``); now one line and exit 1, as unpack's or pack-project's output."""
    long = tmp_path / ("d" * 300)
    res = CliRunner().invoke(cli, ["demo", str(long)])
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None))), res.exception
    assert res.output.splitlines() == [f"blobfs: {long}: File name too long; nothing written"]
    assert list(tmp_path.iterdir()) == []
