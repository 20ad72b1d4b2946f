"""The SDK's JSON for an empty annotation, built from an image size (FORMAT.md §7).

``json.dump(sly.Annotation(...).to_json(), f, indent=4)``: no trailing newline, keys in the
SDK's order (checked byte for byte against ``sdk_blob_project/ds1/ann/img_000.png.json``). A
fixed template rather than ``json.dumps``: the mount rebuilds it on every ``getattr`` and
``read`` of a synthesized file (it keeps sizes, not bytes), and this is ~20x cheaper.
"""
from __future__ import annotations

_TEMPLATE = ('{\n    "description": "",\n    "size": {\n        "height": %d,\n'
             '        "width": %d\n    },\n    "tags": [],\n    "objects": [],\n'
             '    "customBigData": {}\n}')


def empty_ann_json(width: int, height: int) -> bytes:
    """The SDK's JSON for an empty annotation of a ``width`` x ``height`` image."""
    width, height = int(width), int(height)
    if width < 0 or height < 0:
        raise ValueError(f"image size {width}x{height} is negative")
    return (_TEMPLATE % (height, width)).encode("ascii")
