"""Synthesized annotations: byte-equal to the SDK's empty annotations, sized from headers."""
from __future__ import annotations

import gc
import itertools
import os
import json
import shutil
import tracemalloc
from pathlib import Path

import pytest

import blobfs
from blobfs.errors import BlobfsError
from blobfs.format.offsets_write import write_offsets
from blobfs.preview.imagefacts import image_facts
from blobfs.preview.synth import synth_ann_bytes, synthesize_ann
from mount_helpers import libfuse_params, mounted, requires_fuse
from sdk_rules import read_project
from tar_helpers import blob_of, tiny_png


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


def test_template_equals_json_dumps_for_any_size() -> None:
    """The template is the SDK's ``json.dump(..., indent=4)``, digits and all."""
    for width, height in [(0, 0), (1, 1), (7, 10), (640, 480), (65535, 65536), (2**31 - 1, 2**32),
                          (10**30, 3)]:
        doc = {"description": "", "size": {"height": height, "width": width}, "tags": [],
               "objects": [], "customBigData": {}}
        assert synthesize_ann(width, height) == json.dumps(doc, indent=4).encode("ascii")


def _png_project(root: Path, n: int) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """A blob project of ``n`` tiny PNGs, each its own size; every fifth has a real annotation
    (a marker the synthesized JSON never contains). Returns sizes by name and the real ones."""
    sizes = {f"img_{i:05d}.png": (1 + i % 97, 1 + i // 97) for i in range(n)}
    (root / "blob").mkdir(parents=True)
    (root / "ds" / "ann").mkdir(parents=True)
    (root / "meta.json").write_text('{"classes": [], "tags": []}')
    entries = blob_of(root / "blob" / "images.tar", [(k, tiny_png(*v)) for k, v in sizes.items()])
    write_offsets(root / "ds" / "images_offsets.pkl", entries)
    real = {name for i, name in enumerate(sizes) if i % 5 == 0}
    for name in real:
        (root / "ds" / "ann" / f"{name}.json").write_text('{"real": true}')
    return sizes, real


def test_synthesized_listing_resumes_anywhere_without_repeats(tmp_path: Path) -> None:
    """The kernel lists a big folder in many READDIR calls, each resuming at the offset the
    last entry gave: every resume must continue exactly there (no entry twice, none lost)."""
    sizes, real = _png_project(tmp_path / "p", 1500)
    with blobfs.open_project(tmp_path / "p", synthesize_ann=True) as p:
        whole = list(p.view.readdir("/ds/ann", 0))
        names = [e[0] for e in whole[2:]]
        assert sorted(names) == sorted(f"{n}.json" for n in sizes)
        synthesized = [n for n in names if n[: -len(".json")] not in real]
        assert synthesized == [f"{n}.json" for n in sizes if n not in real]  # item order
        for step in (1, 7, 250):
            got, offset = [], 0
            while True:
                chunk = list(itertools.islice(p.view.readdir("/ds/ann", offset), step))
                if not chunk:
                    break
                got += chunk
                offset = chunk[-1][3]
            assert got == whole, step
        for name, mode, ino, _next in whole[2:]:
            assert p.view.getattr(f"/ds/ann/{name}").ino == ino, name


def test_synthesized_annotations_read_from_sizes_kept_compactly(tmp_path: Path) -> None:
    """Every item's annotation read twice: right bytes, sizes from the headers, and the memory
    kept per item is a few array slots, not names and JSON bytes (a mount of 1,000,000 items
    kept ~550 bytes an item, in every worker process)."""
    n = 6000
    sizes, real = _png_project(tmp_path / "p", n)
    with blobfs.open_project(tmp_path / "p", synthesize_ann=True) as p:
        list(p.view.readdir("/ds/ann", 0))
        p.read(f"ds/ann/{min(set(sizes) - real)}.json")  # imports (Pillow) are not per item
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(2):
                for name, (width, height) in sizes.items():
                    raw = p.read(f"ds/ann/{name}.json")
                    if name in real:
                        assert raw == b'{"real": true}'
                    else:
                        assert raw == synthesize_ann(width, height), name
                        assert p.view.getattr(f"/ds/ann/{name}.json").size == len(raw)
            gc.collect()
            # Only what blobfs itself allocated and still holds: the interpreter's own tables
            # (pathlib interns path parts, and that dict grows in one jump) are not per item.
            package = str(Path(blobfs.__file__).parent)
            ours = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, f"{package}/*")])
            kept = sum(stat.size for stat in ours.statistics("filename"))
        finally:
            tracemalloc.stop()
    assert kept / n < 64, f"{kept / n:.0f} bytes kept per item"


def test_no_ann_folder_synthesizes_every_item_in_item_order(tmp_path: Path) -> None:
    sizes, _real = _png_project(tmp_path / "p", 300)
    shutil.rmtree(tmp_path / "p" / "ds" / "ann")
    with blobfs.open_project(tmp_path / "p", synthesize_ann=True) as p:
        listed = [e[0] for e in p.view.readdir("/ds/ann", 0)][2:]
        assert listed == [f"{name}.json" for name in sizes]
        for name, (width, height) in sizes.items():
            assert p.read(f"ds/ann/{name}.json") == synthesize_ann(width, height)
        with pytest.raises(FileNotFoundError):
            p.read("ds/ann/img_00000.png")  # an item name without ".json" is no annotation


@pytest.fixture(scope="module")
def big_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]], set[str]]:
    """12,000 items, every fifth with a real annotation, and a passed-through folder of 12,000
    files: each listing takes the kernel several READDIR calls."""
    root = tmp_path_factory.mktemp("big") / "p"
    sizes, real = _png_project(root, 12_000)
    (root / "ds" / "extra").mkdir()
    for i in range(12_000):
        (root / "ds" / "extra" / f"a_longer_name_to_fill_replies_{i:06d}.txt").write_bytes(b"")
    os.mkfifo(root / "ds" / "extra" / "pipe")  # hidden: said in one log line
    return root, sizes, real


@pytest.mark.mount
@requires_fuse
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_big_folders_list_whole_through_the_kernel(tmp_path: Path, big_folders, libfuse: int) -> None:
    """Through a real mount (with its worker processes, whichever answers each READDIR): every
    name once, real and synthesized annotations alike, and the bytes behind them; one log
    line for the FIFO the real folder hides, whichever worker judged it."""
    root, sizes, real = big_folders
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(root, mnt, libfuse=libfuse, args=("--synthesize-ann",)) as m:
        for _ in range(2):  # the second listing may come from the kernel's cache
            ann = os.listdir(m.path("ds/ann"))
            assert len(ann) == len(set(ann)) == len(sizes)
            assert set(ann) == {f"{name}.json" for name in sizes}
            extra = os.listdir(m.path("ds/extra"))
            assert len(extra) == len(set(extra)) == 12_000
            assert set(extra) == set(os.listdir(root / "ds" / "extra")) - {"pipe"}
        for name in list(sizes)[::997]:
            raw = m.path(f"ds/ann/{name}.json").read_bytes()
            assert raw == (b'{"real": true}' if name in real else synthesize_ann(*sizes[name])), name
        err = m.stderr()
    lines = [x for x in err.splitlines() if "ds/extra: the mount hides" in x]
    assert len(lines) == 1 and lines[0].endswith(" 1 entry of this folder: 'pipe' (FIFO)"), err
