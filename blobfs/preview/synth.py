"""Annotations synthesized for items that have none (``--synthesize-ann``).

The SDK drops a whole dataset when one item lacks its annotation (FORMAT.md §7). An empty
annotation only needs the image size, which the image header gives; so blobfs can fill the
gap with exactly the bytes the SDK itself writes for an empty annotation
(``blobfs.format.emptyann``).
"""
from __future__ import annotations

from blobfs.format.emptyann import empty_ann_json
from blobfs.preview.imagefacts import ImageSource, image_facts

#: The SDK's JSON for an empty annotation of a ``width`` x ``height`` image.
synthesize_ann = empty_ann_json


def synth_ann_bytes(image: ImageSource, name: str = "") -> bytes:
    """Empty-annotation bytes sized from ``image``'s header (bytes, path or binary file).

    Reads the header only. Raises ``blobfs.preview.imagefacts.ImageHeaderError`` (a
    ``BlobfsError``, one line naming ``name``) when the header is unreadable; the caller
    decides what an item without a readable size gets.
    """
    facts = image_facts(image, name)
    return synthesize_ann(facts.width, facts.height)
