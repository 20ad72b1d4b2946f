"""An independent reader that applies the SDK's project rules (FORMAT.md §1, §5, §7, §9).

Written from the spec, sharing no code with blobfs, so tests can ask "would
``sly.Project(dir, READ)`` open this, with which datasets and items?" of a generated project
or of a mount point. Like the SDK it never raises for a bad dataset: the dataset is dropped
and a warning recorded; only a missing meta.json or an empty project raise.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = {".jpg", ".jpeg", ".mpo", ".bmp", ".png", ".webp", ".tiff", ".tif", ".nrrd", ".jfif"}
NOT_DATASET_SUFFIXES = ("img", "ann", "img_info", "seg", "meta", "blob", "datasets")
NO_DESCEND_SUFFIXES = ("img", "ann", "img_info", "seg", "meta", "blob")


@dataclass
class SdkDataset:
    name: str  # "A/B" for A/datasets/B
    dir: str  # project-relative folder
    items: list[str]  # img/ files first (sorted), then offsets entries in file order
    blob_items: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # name -> (tar, start, end)
    ann_files: dict[str, str] = field(default_factory=dict)  # item -> ann file name


@dataclass
class SdkProject:
    root: Path
    datasets: list[SdkDataset]
    warnings: list[str]

    def dataset(self, name: str) -> SdkDataset:
        return next(d for d in self.datasets if d.name == name)

    def counts(self) -> dict[str, int]:
        return {d.name: len(d.items) for d in self.datasets}


class _BlobImageInfo:
    pass


class _SdkUnpickler(pickle.Unpickler):
    """The SDK's restricted unpickler allowlist (FORMAT.md §5)."""

    _BUILTINS = {"list", "str", "int", "float", "bool", "bytes", "bytearray", "dict", "tuple", "NoneType"}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) == ("supervisely.api.image_api", "BlobImageInfo"):
            return _BlobImageInfo
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"blocked {module}.{name}")


def load_offsets(path: Path) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Entries of an offsets pickle the way the SDK loads them: stop silently at the first error."""
    out: list[tuple[str, int, int]] = []
    warnings: list[str] = []
    with open(path, "rb") as f:
        data = f.read()
    buf = io.BytesIO(data)
    while buf.tell() < len(data):
        try:
            obj = _SdkUnpickler(buf).load()
        except EOFError:
            break
        except Exception as e:  # noqa: BLE001 - the SDK logs any error and keeps the prefix
            warnings.append(f"{path}: {type(e).__name__}: {e}")
            break
        for el in obj if isinstance(obj, list) else [obj]:
            if not isinstance(el, _BlobImageInfo):
                warnings.append(f"{path}: Failed to read blob offset file ({type(el).__name__})")
                return out, warnings
            out.append((el.name, el.offset_start, el.offset_end))
    return out, warnings


def _candidates(root: Path) -> list[str]:
    found: list[str] = []

    def walk(rel: str) -> None:
        with os.scandir(root / rel if rel else root) as it:
            subdirs = sorted(e.name for e in it if e.is_dir())
        for name in subdirs:
            sub = f"{rel}/{name}" if rel else name
            if not sub.endswith(NOT_DATASET_SUFFIXES):
                found.append(sub)
            if not sub.endswith(NO_DESCEND_SUFFIXES):
                walk(sub)

    walk("")
    return found


def _load_dataset(root: Path, rel: str, warnings: list[str]) -> SdkDataset | None:
    folder = root / rel
    name = "/".join(p for p in rel.split("/") if p != "datasets")
    ann_dir, img_dir = folder / "ann", folder / "img"
    if not ann_dir.is_dir():
        warnings.append(f"{rel}: no ann/ folder")
        return None
    offsets = sorted(p for p in folder.iterdir() if p.name.endswith("_offsets.pkl") and p.is_file())
    if not img_dir.is_dir() and not offsets:
        warnings.append(f"{rel}: no img/ folder and no offsets file")
        return None
    items: list[str] = []
    if img_dir.is_dir():
        items = sorted(p.name for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    ds = SdkDataset(name, rel, items)
    blob_names: list[str] = []
    for off in offsets:
        stem = off.name[: -len("_offsets.pkl")]
        entries, w = load_offsets(off)
        warnings.extend(w)
        for n, s, e in entries:
            blob_names.append(n)
            ds.blob_items[n] = (f"blob/{stem}.tar", s, e)  # last match wins, as in the SDK
    if offsets and not blob_names and not items:
        # FORMAT §5: a dataset whose offsets gave no names takes them from ann/.
        blob_names = sorted(p.name[: -len(".json")] for p in ann_dir.iterdir() if p.name.endswith(".json"))
    ds.items.extend(blob_names)
    ann_names = {p.name for p in ann_dir.iterdir() if p.is_file()}
    used: dict[str, str] = {}
    for item in ds.items:
        new, old = f"{item}.json", f"{os.path.splitext(item)[0]}.json"
        ann = new if new in ann_names else old if old in ann_names else None
        if ann is None:
            warnings.append(f"{rel}: no annotation for item {item!r}")
            return None
        if ann in used:
            warnings.append(f"{rel}: Annotation file {ann} matches two different image files")
            return None
        used[ann] = item
        ds.ann_files[item] = ann
    return ds


def read_project(root: str | Path) -> SdkProject:
    """``sly.Project(root, READ)`` per the spec: raises only without meta.json or when empty."""
    root = Path(root)
    if not (root / "meta.json").is_file():
        raise FileNotFoundError(f"{root}/meta.json")
    warnings: list[str] = []
    datasets = [ds for rel in _candidates(root) if (ds := _load_dataset(root, rel, warnings)) is not None]
    if not any(ds.items for ds in datasets):
        raise RuntimeError("Project is empty")
    return SdkProject(root, datasets, warnings)
