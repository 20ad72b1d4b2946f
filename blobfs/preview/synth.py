"""Annotations synthesized for items that have none (``--synthesize-ann``).

The SDK drops a whole dataset when one item lacks its annotation (FORMAT.md §7). An empty
annotation only needs the image size, which the image header gives; so blobfs can fill the
gap with exactly the bytes the SDK itself writes for an empty annotation:
``json.dump(sly.Annotation(...).to_json(), f, indent=4)`` — no trailing newline, keys in the
SDK's order (checked byte for byte against ``sdk_blob_project/ds1/ann/img_000.png.json``).
"""
from __future__ import annotations

import json

from blobfs.preview.imagefacts import ImageSource, image_facts


def synthesize_ann(width: int, height: int) -> bytes:
    """The SDK's JSON for an empty annotation of a ``width`` x ``height`` image."""
    if width < 0 or height < 0:
        raise ValueError(f"image size {width}x{height} is negative")
    ann = {
        "description": "",
        "size": {"height": int(height), "width": int(width)},
        "tags": [],
        "objects": [],
        "customBigData": {},
    }
    return json.dumps(ann, indent=4).encode("ascii")


def synth_ann_bytes(image: ImageSource, name: str = "") -> bytes:
    """Empty-annotation bytes sized from ``image``'s header (bytes, path or binary file).

    Reads the header only. Raises ``blobfs.preview.imagefacts.ImageHeaderError`` (a
    ``BlobfsError``, one line naming ``name``) when the header is unreadable; the caller
    decides what an item without a readable size gets.
    """
    facts = image_facts(image, name)
    return synthesize_ann(facts.width, facts.height)
