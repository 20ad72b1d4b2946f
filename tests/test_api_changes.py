"""The Python API when the source changes under an open project: a read fails rather than
serving bytes of another size, and a project pickled to a worker process is refused there
when its item numbers would name other images."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import blobfs

from test_api_python import writable_copy


def test_img_file_rewritten_larger_while_open_is_a_read_error(blob_project: Path,
                                                              tmp_path: Path) -> None:
    """An ``img/`` file replaced in place by a larger image read back cut to the size it had
    when the project was opened: a truncated image, and no error."""
    proj = writable_copy(blob_project, tmp_path / "proj")
    img = proj / "ds1" / "img"
    small, large = sorted((img / "photo_a.png", img / "photo_b.jpeg"), key=os.path.getsize)
    with blobfs.open_project(proj) as p:
        path = f"ds1/img/{small.name}"
        assert p.read(path) == small.read_bytes()
        shutil.copyfile(large, small)
        with pytest.raises(blobfs.ReadError, match="changed since the project was opened") as e:
            p.read(path)
        assert e.value.errno == 5 and str(small) in str(e.value)
        with pytest.raises(blobfs.ReadError):
            p.open(path).read(4)
