"""Synthesized annotations: byte-equal to the SDK's empty annotations, sized from headers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import blobfs
from blobfs.errors import BlobfsError
from blobfs.preview.imagefacts import image_facts
from blobfs.preview.synth import synth_ann_bytes, synthesize_ann
from mount_helpers import libfuse_params, mounted, requires_fuse
from sdk_rules import read_project


def _empty_annotations(classic_project: Path) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of the fixture whose SDK annotation has no objects and no tags."""
    pairs = []
    for ann in sorted(classic_project.glob("*/ann/*.json")):
        doc = json.loads(ann.read_bytes())
        if not doc["objects"] and not doc["tags"]:
            pairs.append((ann.parent.parent / "img" / ann.name[: -len(".json")], ann))
    return pairs


def test_synthesized_bytes_equal_sdk_empty_annotations(classic_project: Path) -> None:
    pairs = _empty_annotations(classic_project)
    assert len(pairs) >= 10
    sizes = set()
    for image, ann in pairs:
        facts = image_facts(image)
        sizes.add((facts.width, facts.height))
        assert synthesize_ann(facts.width, facts.height) == ann.read_bytes(), ann
        assert synth_ann_bytes(image) == ann.read_bytes(), ann
        with open(image, "rb") as f:
            assert synth_ann_bytes(f, str(image)) == ann.read_bytes(), ann
    assert len(sizes) > 3  # several sizes, so digits/ordering of height and width are exercised


def test_sdk_fixture_layout_of_img_000(blob_project: Path) -> None:
    raw = (blob_project / "ds1/ann/img_000.png.json").read_bytes()
    doc = json.loads(raw)
    assert synthesize_ann(doc["size"]["width"], doc["size"]["height"]) == raw


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        synthesize_ann(-1, 5)
    with pytest.raises(BlobfsError, match="x.png"):
        synth_ann_bytes(b"not an image", "x.png")


def _strip_annotations(src: Path, dst: Path) -> list[str]:
    """Copy the blob project, delete the annotation of every third ds1 item; return their paths."""
    shutil.copytree(src, dst)
    removed = []
    for k, ann in enumerate(sorted((dst / "ds1/ann").glob("*.json"))):
        if k % 3 == 0:
            ann.unlink()
            removed.append(f"ds1/ann/{ann.name}")
    return removed


def test_open_project_synthesizes_missing_annotations(tmp_path: Path, blob_project: Path) -> None:
    proj = tmp_path / "p"
    removed = _strip_annotations(blob_project, proj)
    assert removed
    with blobfs.open_project(proj, synthesize_ann=True) as p:
        files = set(p.files())
        for path in removed:
            assert path in files, path
            img = path.replace("/ann/", "/img/")[: -len(".json")]
            facts = image_facts(p.read(img), img)
            doc = json.loads(p.read(path))
            assert doc["size"] == {"height": facts.height, "width": facts.width}, path
            assert p.read(path) == synthesize_ann(facts.width, facts.height)
            assert p.view.getattr("/" + path).size == len(p.read(path))
        # Real annotation files still win.
        kept = sorted((proj / "ds1/ann").glob("*.json"))[0]
        assert p.read(f"ds1/ann/{kept.name}") == kept.read_bytes()
    with blobfs.open_project(proj) as p:  # without the flag: unchanged behaviour
        assert not set(removed) & set(p.files())


@pytest.mark.mount
@requires_fuse
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_mount_synthesize_ann_opens_whole_under_sdk_rules(tmp_path: Path, blob_project: Path, libfuse: int) -> None:
    proj = tmp_path / "p"
    removed = _strip_annotations(blob_project, proj)
    # Without annotations the SDK drops ds1 whole (FORMAT.md §7).
    assert "ds1" not in read_project(proj).counts()
    want = read_project(blob_project).counts()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(proj, mnt, libfuse=libfuse, args=("--synthesize-ann",)) as m:
        sdk = read_project(m.path())
        assert sdk.warnings == [] and sdk.counts() == want
        for path in removed:
            ann = m.path(path)
            img = m.path(path.replace("/ann/", "/img/")[: -len(".json")])
            facts = image_facts(img)
            raw = ann.read_bytes()
            assert json.loads(raw)["size"] == {"height": facts.height, "width": facts.width}, path
            assert raw == synthesize_ann(facts.width, facts.height)
            assert ann.stat().st_size == len(raw)
        # Real annotation files win over synthesized ones.
        for ann in sorted((proj / "ds1/ann").glob("*.json"))[:5]:
            assert m.path(f"ds1/ann/{ann.name}").read_bytes() == ann.read_bytes()
