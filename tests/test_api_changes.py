"""The Python API when the source changes under an open project: a read fails rather than
serving bytes of another size, and a project pickled to a worker process is refused there
when its item numbers would name other images."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

import blobfs
from blobfs.format.offsets_write import write_offsets

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
        with pytest.raises(blobfs.ReadError, match="changed on disk since it was opened") as e:
            p.read(path)
        assert e.value.errno == 5 and str(small) in str(e.value)
        with pytest.raises(blobfs.ReadError):
            p.open(path).read(4)


def _reorder_offsets(proj: Path, ds: blobfs.Dataset, pkl: str) -> None:
    items = ds.items
    entries = [(items.name(i), *items.range(i)) for i in range(len(items)) if items.is_blob(i)]
    write_offsets(proj / ds.relpath / pkl, entries[::-1])


@pytest.mark.parametrize("change", ["offsets reordered", "img file renamed"])
def test_unpickling_refuses_a_project_whose_item_numbers_changed(blob_project: Path,
                                                                 tmp_path: Path,
                                                                 change: str) -> None:
    """Same tars, same item counts, other names behind the numbers: a worker process got the
    project and read another image for the sender's item number (a wrong label, silently)."""
    proj = writable_copy(blob_project, tmp_path / "proj")
    with blobfs.open_project(proj) as p:
        ds2 = next(d for d in p.datasets if d.name == "ds2")
        if change == "offsets reordered":
            _reorder_offsets(proj, ds2, ds2.offsets_files[0])
        else:
            os.rename(proj / "ds1" / "img" / "photo_a.png", proj / "ds1" / "img" / "photo_z.png")
        with pytest.raises(blobfs.InputError, match="changed on disk"):
            pickle.loads(pickle.dumps(p))


def test_unpickling_accepts_an_offsets_file_rewritten_the_same(blob_project: Path,
                                                              tmp_path: Path) -> None:
    proj = writable_copy(blob_project, tmp_path / "proj")
    with blobfs.open_project(proj) as p:
        ds2 = next(d for d in p.datasets if d.name == "ds2")
        want = [ds2.items.name(i) for i in range(len(ds2.items))]
        data = pickle.dumps(p)
        write_offsets(proj / "ds2" / ds2.offsets_files[0],
                      [(n, *ds2.items.range(i)) for i, n in enumerate(want)])
    with pickle.loads(data) as q:
        items = next(d for d in q.datasets if d.name == "ds2").items
        assert [items.name(i) for i in range(len(items))] == want
