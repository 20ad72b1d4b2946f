"""The Python API as a training job uses it: README's example, closing, pickling to worker
processes, files changed on disk, the file object."""
from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

import blobfs

REPO = Path(__file__).resolve().parent.parent


def writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for top, dirs, _files in os.walk(dst):
        for d in dirs:
            os.chmod(os.path.join(top, d), 0o755)
    return dst


def digests(p: blobfs.Project) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in p.iter_bytes()}


def test_readme_python_example_runs(blob_project: Path) -> None:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    code = block.replace('"/data/proj"', repr(str(blob_project)))
    exec(compile(code, "README.md", "exec"), {})


def test_public_names_and_hints() -> None:
    assert blobfs.Project.__name__ == "Project" and blobfs.Dataset.__name__ == "Dataset"
    hints = blobfs.open_project.__annotations__
    assert "Project" in hints["return"] and "PathLike" in hints["source"]
    assert set(blobfs.__all__) <= set(dir(blobfs)) | {"Project", "Dataset"}


def test_unclosed_project_releases_its_tars_with_a_resource_warning(blob_project: Path) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.warns(ResourceWarning, match="unclosed blob tar"):
        p = blobfs.open_project(blob_project)
        assert p.read("ds1/img/img_000.png")
        del p
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_iter_bytes_after_close_never_reads_a_file_opened_since(blob_project: Path) -> None:
    p = blobfs.open_project(blob_project / "ds2")  # one tar: the bulk path with one descriptor
    it = p.iter_bytes()
    next(it)
    p.close()
    # The tar's descriptor number is free again: the next open takes it.
    others = [os.open(REPO / "README.md", os.O_RDONLY) for _ in range(4)]
    try:
        with pytest.raises(ValueError, match="closed project"):
            next(it)
        with pytest.raises(ValueError, match="closed project"):
            p.read("ds2/img/scan 01.png")
        with pytest.raises(ValueError, match="closed project"):
            p.datasets[0].items.read(0)
    finally:
        for fd in others:
            os.close(fd)


def _read_in_child(p: blobfs.Project, path: str) -> str:
    with p:
        return hashlib.sha256(p.read(path)).hexdigest()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_project_goes_to_worker_processes(blob_project: Path, method: str) -> None:
    with blobfs.open_project(blob_project) as p:
        want = digests(p)
        paths = sorted(want)[:5]
        with multiprocessing.get_context(method).Pool(2) as pool:
            got = pool.starmap(_read_in_child, [(p, path) for path in paths])
        assert got == [want[path] for path in paths]
        with pickle.loads(pickle.dumps(p)) as q:  # opened anew: no descriptor number copied
            assert q.sources[0].fd not in (p.sources[0].fd, p.sources[1].fd)
            assert digests(q) == want


def test_unpickling_refuses_a_project_whose_tar_changed(blob_project: Path, tmp_path: Path) -> None:
    proj = writable_copy(blob_project, tmp_path / "proj")
    with blobfs.open_project(proj) as p:
        data = pickle.dumps(p)
    with open(proj / "blob" / "more_images.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(blobfs.InputError, match="changed on disk"):
        pickle.loads(data)


@pytest.mark.parametrize("rel", ["sdk_blob_project", "sdk_blob_project/ds1",
                                 "sdk_blob_project/blob/more_images.tar"])
def test_project_opened_by_a_relative_path_unpickles(blob_project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     rel: str) -> None:
    """A project, dataset or tar opened by a relative path (the usual way) goes to a worker
    that opens it again, also from another working folder; it was refused as "changed on
    disk" because its tars were compared by their relative paths."""
    monkeypatch.chdir(blob_project.parent)
    with blobfs.open_project(rel) as p:
        want = digests(p)
        data = pickle.dumps(p)
    monkeypatch.chdir(tmp_path)
    with pickle.loads(data) as q:
        assert digests(q) == want


def test_dataset_and_closed_project_say_they_cannot_be_pickled(blob_project: Path) -> None:
    p = blobfs.open_project(blob_project)
    with pytest.raises(TypeError, match="pickle the Project"):
        pickle.dumps(p.datasets[0])
    with pytest.raises(TypeError, match="pickle the Project"):
        pickle.dumps(p.sources[0])
    p.close()
    with pytest.raises(TypeError, match="closed"):
        pickle.dumps(p)


def test_truncated_tar_while_open_is_a_one_line_read_error(blob_project: Path,
                                                           tmp_path: Path) -> None:
    proj = writable_copy(blob_project, tmp_path / "proj")
    with blobfs.open_project(proj) as p:
        ds = next(d for d in p.datasets if d.name == "ds2")
        last = len(ds.items) - 1
        tar = proj / "blob" / "more_images.tar"
        os.truncate(tar, tar.stat().st_size // 2)
        with pytest.raises(blobfs.ReadError) as e:
            ds.items.read(last)
        assert isinstance(e.value, OSError) and e.value.errno == 5
        assert isinstance(e.value, blobfs.BlobfsError)
        assert str(tar) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(blobfs.ReadError):
            p.read(f"ds2/img/{ds.items.name(last)}")


def test_read_error_prints_nothing_without_logging_setup(blob_project: Path,
                                                         tmp_path: Path) -> None:
    proj = writable_copy(blob_project, tmp_path / "proj")
    code = (f"import blobfs, os\n"
            f"p = blobfs.open_project({str(proj)!r})\n"
            f"os.truncate({str(proj / 'blob' / 'more_images.tar')!r}, 0)\n"
            f"try:\n    p.datasets[1].items.read(0)\nexcept blobfs.ReadError:\n    pass\n"
            f"p.close()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and r.stderr == ""


def test_missing_path_is_file_not_found(blob_project: Path) -> None:
    with blobfs.open_project(blob_project) as p:
        with pytest.raises(FileNotFoundError):
            p.read("ds1/img/nope.png")
        with pytest.raises(FileNotFoundError):
            p.open("ds1/img/nope.png")
        with pytest.raises(IsADirectoryError):
            p.read("ds1/img")


def test_file_object_behaves_like_a_file(blob_project: Path) -> None:
    with blobfs.open_project(blob_project) as p:
        whole = p.read(PurePosixPath("ds1/img/img_000.png"))
        with p.open(PurePosixPath("ds1/img/img_000.png")) as f:
            assert f.seek(-4, os.SEEK_END) == len(whole) - 4
            assert f.read() == whole[-4:]
            with pytest.raises(ValueError, match="whence"):
                f.seek(0, 7)
        with pytest.raises(ValueError, match="closed file"):
            f.read(1)


def test_file_object_readinto_takes_any_writable_bytes_like_object(blob_project: Path) -> None:
    # As FileIO does: the buffer is filled in bytes, whatever its item type (an array of
    # ints, a memoryview cast to 'I', a ctypes array a decoder preallocated).
    import array
    import ctypes

    with blobfs.open_project(blob_project) as p:
        whole = p.read("ds1/img/img_000.png")
        for path, want in (("ds1/img/img_000.png", whole), ("meta.json", p.read("meta.json"))):
            with p.open(path) as f:
                a = array.array("i", [0, 0, 0])
                assert f.readinto(a) == 12 and a.tobytes() == want[:12]
                m = memoryview(bytearray(8)).cast("I")
                assert f.readinto(m) == 8 and m.tobytes() == want[12:20]
                c = (ctypes.c_char * 5)()
                assert f.readinto(c) == 5 and c.raw == want[20:25]
                assert f.tell() == 25
        with p.open("ds1/img/img_000.png") as f:
            f.seek(len(whole) - 2)
            a = array.array("i", [-1, -1])
            assert f.readinto(a) == 2 and a.tobytes() == whole[-2:] + b"\xff" * 6


def test_file_object_seek_refuses_what_a_file_refuses(blob_project: Path) -> None:
    # A float or an offset past what a file position holds fails at the seek, as FileIO's
    # does, not at the next read (a TypeError or OverflowError far from its cause).
    with blobfs.open_project(blob_project) as p:
        for path in ("ds1/img/img_000.png", "meta.json"):
            with p.open(path) as f:
                f.seek(3)
                with pytest.raises(TypeError):
                    f.seek(1.5)
                with pytest.raises(OverflowError):
                    f.seek(2**63)
                assert f.tell() == 3 and f.seek(2**40) == 2**40 and f.read(4) == b""


def test_file_object_says_it_is_read_only_binary_as_a_file_does(blob_project: Path) -> None:
    # write() raised NotImplementedError (io.RawIOBase's placeholder) and there was no mode:
    # a file opened "rb" raises io.UnsupportedOperation and says "rb" (tarfile.open(fileobj=)
    # takes its own mode from it).
    import io

    with blobfs.open_project(blob_project) as p, p.open("ds1/img/img_000.png") as f:
        assert f.mode == "rb" and not f.writable()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        with pytest.raises(OSError):  # what callers catch: UnsupportedOperation is an OSError
            f.write(b"x")
    with pytest.raises(ValueError, match="closed file"):
        f.write(b"x")


@pytest.mark.parametrize("which", ["source", "offsets", "ann"])
def test_empty_path_is_refused_not_the_current_folder(blob_project: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      which: str) -> None:
    """``open_project("")`` opened whatever folder the process was in (pathlib reads "" as
    "."), as ``--offsets ""`` or ``--ann ""`` would have; the CLI refuses an empty path."""
    monkeypatch.chdir(blob_project / "ds1")  # a dataset folder: "" would open as one
    tar = blob_project / "blob" / "small_images.tar"
    kwargs = {"source": tar, which: ""} if which != "source" else {"source": ""}
    with pytest.raises(blobfs.ProjectError, match=f"empty path for {which}"):
        blobfs.open_project(**kwargs)


def test_paths_with_dot_and_empty_parts_read_as_in_a_file_system(blob_project: Path) -> None:
    """``./meta.json`` and ``ds1//img/x`` raised FileNotFoundError naming ``.`` or
    ``ds1/``; a path walk drops those parts. A trailing ``/`` or ``/.`` still means a folder,
    ``..`` is still no parent, and bytes give a TypeError that says what a path is."""
    with blobfs.open_project(blob_project) as p:
        img = next(f for f in p.files() if "/img/" in f)
        ds, _, name = img.partition("/img/")
        want = p.read(img)
        for form in (f"./{img}", f"{ds}//img/{name}", f"{ds}/./img/./{name}", f"/{img}"):
            assert p.read(form) == want, form
            with p.open(form) as f:
                assert f.read() == want, form
        assert p.read("./meta.json") == p.read("meta.json")
        for form in (f"{img}/", f"{img}/."):
            with pytest.raises(NotADirectoryError):
                p.read(form)
        with pytest.raises(FileNotFoundError):
            p.read(f"{ds}/../meta.json")
        with pytest.raises(TypeError, match="a view path is a str"):
            p.read(img.encode())


def test_deep_paths_resolve_without_recursion(blob_project: Path, tmp_path: Path) -> None:
    """A view path was resolved one Python call per level below the last view folder: 1,100
    levels of ``x/`` (``blobfs cat P x/x/.../x``) raised RecursionError, a traceback, and so
    did a real file that deep in a passed-through folder (2,200 bytes: a path Linux takes)."""
    proj = tmp_path / "p"
    shutil.copytree(blob_project, proj)
    deep = "/".join(["a"] * 1100)
    folder = proj / "ds1" / "meta"  # the fixture has one: passed through
    for _ in range(1100):  # os.makedirs and Path.mkdir(parents=True) recurse too
        folder = folder / "a"
        folder.mkdir()
    try:
        (folder / "f.json").write_bytes(b"{}")
        with blobfs.open_project(proj) as p:
            assert p.read(f"ds1/meta/{deep}/f.json") == b"{}"
            with pytest.raises(FileNotFoundError):
                p.read("/".join(["x"] * 1100))
            with pytest.raises(NotADirectoryError):
                p.read(f"ds1/meta/{deep}/f.json/{deep}")
    finally:  # shutil.rmtree (pytest's clean-up of old temporaries) recurses per level too
        subprocess.run(["rm", "-rf", str(proj / "ds1" / "meta" / "a")], check=True, timeout=60)


def test_item_number_minus_one_from_find_is_no_item(blob_project: Path) -> None:
    """``items.read(items.find(name))`` of a name not there raises: -1 (find's "absent")
    read the last item's bytes, and a negative offset the tar bytes before an item."""
    with blobfs.open_project(blob_project) as p:
        items = p.datasets[0].items
        assert items.find("no_such.png") == -1
        for method in (items.read, items.name, items.name_bytes, items.size, items.range,
                       items.is_blob, items.source):
            with pytest.raises(IndexError, match="negative"):
                method(-1)
        with pytest.raises(ValueError, match="negative offset"):
            items.read(0, 10, -512)
        assert items.read(0) == items.read(0, -1, 0)  # unchanged for item numbers


def test_item_number_out_of_range_or_not_a_number_says_so(blob_project: Path) -> None:
    """A sampler one past the end said "array index out of range", and a name given for a
    number "'<' not supported between instances of 'str' and 'int'"."""
    with blobfs.open_project(blob_project) as p:
        items = p.datasets[0].items
        methods = (items.read, items.name, items.name_bytes, items.size, items.range,
                   items.is_blob, items.source)
        for method in methods:
            with pytest.raises(IndexError, match=rf"item number {len(items)} is out of range: "
                                                 rf"the dataset has {len(items)} items"):
                method(len(items))
            with pytest.raises(TypeError, match=r"an item number is an int, not str \(find"):
                method(items.name(0))
            with pytest.raises(TypeError, match="an item number is an int, not float"):
                method(1.0)


def test_dataset_repr_and_help_say_what_a_user_needs(blob_project: Path) -> None:
    """``print(p.datasets)`` gave several lines of internals per dataset (``confine=``, a
    ``Tally`` object, an ``ItemIndex object at 0x…``); ``help(blobfs.Dataset)`` had no text,
    and ``help`` of the item index showed a source comment as ``len``'s doc."""
    import pydoc

    with blobfs.open_project(blob_project) as p:
        ds = p.datasets[0]
        assert repr(ds) == f"<blobfs.Dataset {ds.name!r}: {len(ds.items)} items>"
        assert repr(ds.items) == f"<blobfs item index: {len(ds.items)} items>"
        assert "relpath" in (blobfs.Dataset.__doc__ or "")
        text = pydoc.render_doc(type(ds.items), renderer=pydoc.plaintext)
    assert "# --" not in text


def test_an_open_file_cannot_be_pickled_and_says_why(blob_project) -> None:
    import pickle

    import blobfs

    with blobfs.open_project(blob_project) as p:
        with p.open("meta.json") as f:
            with pytest.raises(TypeError, match=r"cannot pickle an open blobfs file \(meta.json\): pickle the project"):
                pickle.dumps(f)
            assert f.read(1) == b"{"  # still usable after the refusal
