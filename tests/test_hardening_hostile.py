"""Hostile input found by an exploratory pass over every read command (issue #5's contract).

As in test_hardening_input.py: the real ``blobfs`` command in a subprocess, one line naming the
file and the problem, no traceback, bounded memory, and the rest still served or reported.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tarfile
import unicodedata
import zlib
from pathlib import Path

import pytest
from PIL import Image

from blobfs.errors import InputError
from blobfs.model.opening import open_project
from offsets_helpers import pint, su
from tar_helpers import members_tar
from test_hardening_input import PRLIMIT, copy_project, info_json, one_line, run

NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")


def _as_nobody(base: Path) -> tuple[str, ...]:
    """setpriv prefix running as uid 65534, with ``base`` and its parents traversable."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to another user")
    for p in (base, *base.parents):
        if p != Path("/") and not p.stat().st_mode & 0o001:
            p.chmod(p.stat().st_mode | 0o011)
    return (shutil.which("setpriv"), *NOBODY)


@pytest.mark.parametrize("mode", [0o000, 0o644], ids=["no_access", "not_searchable"])
def test_unsearchable_ann_folder_is_one_problem_for_verify(blob_project, tmp_path_factory, mode):
    """ann/ that the user cannot search made ``verify`` print a PermissionError traceback (its
    annotation lookup stat'ed each file); now one line for the folder, exit 1."""
    base = tmp_path_factory.mktemp("annperm")
    nobody = _as_nobody(base)
    proj = copy_project(blob_project, base / "proj")
    for p in [proj, *proj.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o055 if p.is_dir() else 0o044))
    ann = proj / "ds2" / "ann"
    ann.chmod(mode)
    for args in (("verify", str(proj)), ("verify", "--decode", str(proj))):
        r = run(*args, prefix=nobody)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith(str(ann))]
        assert lines == [f"{ann}: cannot read (Permission denied): no item has an annotation "
                         "(the SDK drops the dataset)"], r.stdout


def test_huge_json_files_are_not_read_whole(blob_project, tmp_path):
    """A sparse 3 GB annotation or meta.json (a few bytes on disk) was read whole and decoded:
    ``verify`` and ``preview`` needed 2-3x its size in memory (a MemoryError traceback under a
    limit). Now it is one problem line and the rest is checked or drawn."""
    proj = copy_project(blob_project, tmp_path / "proj")
    ann = proj / "ds2" / "ann" / "scan 00.jpg.json"
    meta = proj / "meta.json"
    os.truncate(ann, 3 << 30)
    os.truncate(meta, 3 << 30)
    limit = (PRLIMIT, "--as=1000000000") if PRLIMIT else ()
    for args in (("verify", str(proj)), ("verify", "--decode", str(proj))):
        r = run(*args, prefix=limit)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        for path in (ann, meta):
            got = [ln for ln in r.stdout.splitlines() if ln.startswith(f"{path}:")]
            assert len(got) == 1 and "too large to read (3221225472 bytes, at most 64 MiB)" in got[0], r.stdout
    out = tmp_path / "sheet.png"
    r = run("preview", str(proj), "ds2", "-o", str(out), "--sample", "first", "--limit", "4", "--thumb", "32",
            prefix=limit)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert out.stat().st_size > 0
    assert any(str(ann) in ln and "annotation not drawn: too large" in ln for ln in r.stderr.splitlines()), r.stderr
    assert any(str(meta) in ln and "too large" in ln for ln in r.stderr.splitlines()), r.stderr


def _bitmap_ann(data: str) -> str:
    return json.dumps({"size": {"height": 10, "width": 10}, "tags": [], "objects": [
        {"classTitle": "x", "geometryType": "bitmap", "bitmap": {"data": data, "origin": [0, 0]}}]})


def _zlib_bomb(gib: int) -> str:
    z = zlib.compressobj(9)
    zeros = bytes(1 << 24)
    out = [z.compress(zeros) for _ in range(64 * gib)]
    return base64.b64encode(b"".join(out) + z.flush()).decode()


def _png_of(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return base64.b64encode(zlib.compress(buf.getvalue())).decode()


@pytest.mark.parametrize("kind,words", [("zlib_bomb", "decompresses to more than 64 MiB"),
                                        ("pixel_bomb", "bitmap mask too large"),
                                        ("big_mask", "too large to draw")])
def test_bitmap_bombs_are_skipped_by_preview(blob_project, tmp_path, kind, words):
    """A bitmap label's ``data`` was decompressed whole (1.5 MB of annotation: 1 GiB of memory)
    and a mask past Pillow's pixel limit raised DecompressionBombError (a traceback). Now the
    object is skipped with one warning line and the sheet is drawn."""
    proj = copy_project(blob_project, tmp_path / "proj")
    ann = proj / "ds2" / "ann" / "scan 00.jpg.json"
    data = {"zlib_bomb": lambda: _zlib_bomb(1), "pixel_bomb": lambda: _png_of(60000, 60000),
            "big_mask": lambda: _png_of(9000, 9000)}[kind]()
    ann.write_text(_bitmap_ann(data))
    out = tmp_path / "sheet.png"
    limit = (PRLIMIT, "--as=1000000000") if PRLIMIT else ()
    r = run("preview", str(proj), "ds2", "-o", str(out), "--sample", "first", "--limit", "2",
            "--thumb", "32", prefix=limit)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(ann) in lines[0] and "object 0 skipped" in lines[0] and words in lines[0], r.stderr
    with Image.open(out) as im:
        assert im.width > 0


LONG = "n" * (1 << 20) + ".png"  # a GNU long name (or PAX path) may be up to 64 MiB


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "truncated"])
def test_a_megabyte_member_name_is_cut_in_problem_lines(tmp_path, cut):
    """A member name of 1 MiB (a GNU ``././@LongLink``) was printed whole, twice, in one
    "line" of 2 MiB by info, verify, ls and index. Now at most 100 characters and its length."""
    bare = members_tar(tmp_path / "long.tar", [(LONG, b"x" * 700), ("ok.png", b"y" * 10)], tarfile.GNU_FORMAT)
    if cut:  # the error names the member too: "truncated: member ... needs N bytes"
        data = bare.read_bytes()
        bare.write_bytes(data[:data.index(b"x" * 700) + 100])
    shown = f"{LONG[:100]!r}... ({len(LONG)} characters)"
    for args in (("info", str(bare)), ("verify", str(bare)), ("ls", str(bare)),
                 ("index", str(bare), "-o", str(tmp_path))):
        r = run(*args)
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        out = r.stdout + r.stderr
        assert shown in out, (args, out[:1000])
        assert max(len(ln) for ln in out.splitlines()) < 400, args
        if cut:
            assert r.returncode == 2 and "truncated" in one_line(r), args


def test_index_with_no_usable_member_says_why_in_one_line(tmp_path):
    """Nothing to index printed a warning about the unusable members and then the error: two
    lines for one problem (exit 2). Now the error line says why."""
    bare = members_tar(tmp_path / "dots.tar", [(".", b"x"), ("a/..", b"y"), (LONG, b"z")], tarfile.GNU_FORMAT)
    r = run("index", str(bare), "-o", str(tmp_path))
    line = one_line(r)
    assert r.returncode == 2 and line == (
        f"blobfs: {bare}: no regular member with a usable name (member '.': name '.' is not a file "
        "name, 2 more such member(s)); nothing written")
    assert not (tmp_path / "dots_offsets.pkl").exists()


def _api_dict(name: str, start: int, end: int) -> bytes:
    return (b"}(" + su("title") + su(name) + su("sourceBlob") + b"}(" + su("offsetStart") + pint(start)
            + su("offsetEnd") + pint(end) + b"uu")


@pytest.mark.parametrize("ref", [b"h\x00", b"2"], ids=["BINGET", "DUP"])
def test_an_api_dict_listed_again_by_reference_is_refused(blob_project, tmp_path, ref):
    """The reader also takes the platform's API dicts as entries; one of them fetched again
    2,000,000 times (4 MB) became 2M entries: 6 s and 300 MB for ``ls``, shadow lines for each.
    Refused like a BlobImageInfo listed again."""
    proj = copy_project(blob_project, tmp_path / "proj")
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    one = _api_dict("x.png", 1536, 1600)
    body = one + b"\x94" + ref * 2_000_000 if ref != b"2" else one + ref * 2_000_000
    pkl.write_bytes(b"\x80\x04](" + body + b"e.")
    r = run("ls", str(proj), "ds2/img")
    line = one_line(r)
    assert r.returncode == 2 and str(pkl) in line and "refused: an entry listed again by reference" in line
    code, rep = info_json(proj)
    assert code == 1 and [d["items"] for d in rep["datasets"]] == [62, 0]
    assert [p for p in rep["problems"] if str(pkl) in p and "listed again" in p], rep["problems"]
    # the same dicts, each its own object (as pickle writes a list of them), are entries
    pkl.write_bytes(b"\x80\x04](" + _api_dict("x.png", 1536, 1600) + _api_dict("y.png", 1536, 1600) + b"e.")
    r = run("ls", str(proj), "ds2/img")
    assert r.returncode == 0 and r.stdout.split() == ["x.png", "y.png"]


def _readable_copy(blob_project: Path, base: Path) -> Path:
    """A copy of the project that uid 65534 can read throughout."""
    proj = copy_project(blob_project, base / "proj")
    for p in [proj, *proj.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o055 if p.is_dir() else 0o044))
    return proj


def test_an_unreadable_folder_is_a_problem_for_info(blob_project, tmp_path_factory):
    """A dataset folder the user cannot list was left out by ``info`` without a word (exit 0,
    ds1 only), though ``verify`` named it. Now ``info`` says so too (exit 1, as for a missing
    meta.json), and ``verify`` still says it once."""
    base = tmp_path_factory.mktemp("dsperm")
    nobody = _as_nobody(base)
    proj = _readable_copy(blob_project, base)
    ds2 = proj / "ds2"
    ds2.chmod(0)
    want = f"{ds2}: cannot list: Permission denied; any dataset in it is left out"
    r = run("info", str(proj), prefix=nobody)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"  {want}" in r.stdout.splitlines(), r.stdout
    r = run("info", "--json", str(proj), prefix=nobody)
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and [d["name"] for d in rep["datasets"]] == ["ds1"] and rep["problems"] == [want]
    r = run("verify", str(proj), prefix=nobody)
    assert r.returncode == 1 and [ln for ln in r.stdout.splitlines() if str(ds2) in ln] == [want], r.stdout


def test_an_unreadable_meta_json_is_a_problem_for_info(blob_project, tmp_path_factory):
    """A missing meta.json is an ``info`` problem, but one the user cannot read was not
    (exit 0, no word; ``cat`` then failed). Now it is, in ``verify``'s words (said once there),
    for a project folder and a dataset folder alike."""
    base = tmp_path_factory.mktemp("metaperm")
    nobody = _as_nobody(base)
    proj = _readable_copy(blob_project, base)
    meta = proj / "meta.json"
    meta.chmod(0)
    want = f"{meta}: cannot read (Permission denied) (the SDK cannot open this project)"
    for source in (proj, proj / "ds1"):
        r = run("info", "--json", str(source), prefix=nobody)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert json.loads(r.stdout)["problems"] == [want], r.stdout
        r = run("verify", str(source), prefix=nobody)
        assert r.returncode == 1 and [ln for ln in r.stdout.splitlines() if "meta.json" in ln] == [want], r.stdout
    r = run("info", str(proj), prefix=nobody)
    assert r.returncode == 1 and f"  {want}" in r.stdout.splitlines(), r.stdout


HIDES = "the mount hides it"


@pytest.mark.parametrize("entry", ["meta_fifo", "meta_dev_zero", "ann_fifo", "ann_link_out",
                                   "img_fifo", "img_no_image_name", "img_subfolder"])
def test_cat_and_ls_of_an_entry_the_view_hides_say_why_in_one_line(blob_project, tmp_path, entry):
    """``cat P meta.json`` of a FIFO (or a link to /dev/zero) printed the view's warning, then
    "meta.json: No such file or directory": two lines, the second not saying why. Now one line
    naming the real file and why the mount hides it (exit 2, as for other unreadable input)."""
    proj = copy_project(blob_project, tmp_path / "proj")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    rel, why = {
        "meta_fifo": ("meta.json", "not a regular file (FIFO)"),
        "meta_dev_zero": ("meta.json", "symlink leads outside the project"),
        "ann_fifo": ("ds1/ann/img_000.png.json", "not a regular file (FIFO)"),
        "ann_link_out": ("ds2/ann/scan 00.jpg.json", "symlink leads outside the project"),
        "img_fifo": ("ds1/img/pipe.png", "not a regular file (FIFO)"),
        "img_no_image_name": ("ds1/img/notes.txt", "no image file extension, no item"),
        "img_subfolder": ("ds1/img/sub", "sub-folder of img/, no item (only the files of img/ are)"),
    }[entry]
    path = proj / rel
    if path.exists():
        path.unlink()
    if entry.endswith("fifo"):
        os.mkfifo(path)
    elif entry == "meta_dev_zero":
        path.symlink_to("/dev/zero")
    elif entry == "ann_link_out":
        path.symlink_to(outside)
    elif entry == "img_subfolder":
        path.mkdir()
    else:
        path.write_text("notes")
    want = f"blobfs: {path}: {why}; {HIDES}"
    for args in (("cat", str(proj), rel), ("ls", str(proj), rel), ("ls", "-l", str(proj), rel)):
        r = run(*args, timeout=30)
        if args[0] == "ls" and entry == "img_subfolder":  # a folder: ls lists it
            continue
        assert r.returncode == 2 and one_line(r) == want and r.stdout == "", (args, r.stderr)
    # a name that is not there at all is still the plain error
    r = run("cat", str(proj), "ds1/ann/nothing.json")
    assert r.returncode == 2 and one_line(r) == "blobfs: ds1/ann/nothing.json: No such file or directory"


def test_verify_tells_nfc_twins_from_a_pickle_apart(blob_project, tmp_path):
    """Two items from an offsets file whose names are one after Unicode normalization (NFC)
    had two identical-looking "missing annotation" lines in ``verify``; ``pack`` and ``index``
    warn about such names. Now the names are shown with the combining character escaped, and
    one warning line says what ``pack``'s says."""
    from blobfs.format.offsets_write import dumps_offsets
    from blobfs.format.tarheaders import regular_members

    nfc, nfd = (unicodedata.normalize(form, "café.png") for form in ("NFC", "NFD"))
    proj = copy_project(blob_project, tmp_path / "proj")
    ms = regular_members(proj / "blob" / "more_images.tar")
    entries = [(m.name, m.offset_data, m.offset_data + m.size) for m in ms]
    entries += [(name, ms[k].offset_data, ms[k].offset_data + ms[k].size) for k, name in enumerate((nfc, nfd))]
    (proj / "ds2" / "more_images_offsets.pkl").write_bytes(dumps_offsets(entries))
    r = run("verify", str(proj))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    missing = [ln for ln in r.stdout.splitlines() if "has no annotation" in ln]
    assert len(missing) == 2 and len(set(missing)) == 2, r.stdout
    assert "item 'café.png' has" in missing[0] and "item 'cafe\\u0301.png' has" in missing[1], missing
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        f"blobfs: WARNING: {proj / 'ds2'}: items 'café.png' and 'cafe\\u0301.png' are one name after "
        "Unicode normalization (NFC): both are kept, but a macOS file system cannot hold both after unpack"]


def test_an_ann_folder_leading_out_of_the_project_is_one_problem(blob_project, tmp_path):
    """``ds2/ann`` a symlink leading out of the project: the mount hides it, but ``verify``
    read the annotations through it and then ended in a FileNotFoundError traceback (its
    hidden-entry check asked the view for the folder it hides); ``info`` said nothing. Now both
    name it in one line and nothing is read through it (``--synthesize-ann`` made the mount
    serve its files)."""
    proj = copy_project(blob_project, tmp_path / "proj")
    ann = proj / "ds2" / "ann"
    shutil.move(ann, tmp_path / "elsewhere")
    ann.symlink_to(tmp_path / "elsewhere")
    want = f"{ann}: symlink leads outside the project; the mount hides it"
    r = run("verify", str(proj))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stdout.splitlines() == [want, "74 items checked, 1 problem(s)"], r.stdout
    code, rep = info_json(proj)
    assert code == 1 and rep["problems"] == [want]
    r = run("cat", str(proj), "ds2/ann/scan 00.jpg.json")
    assert r.returncode == 2 and one_line(r) == f"blobfs: {want}"
    # with synthesized annotations ann/ is the view's own folder: it served any file there
    (tmp_path / "elsewhere" / "secret.txt").write_text("not the project's")
    with open_project(proj, synthesize_ann=True) as p:
        with pytest.raises(FileNotFoundError):
            p.read("ds2/ann/secret.txt")
        assert json.loads(p.read("ds2/ann/scan 00.jpg.json"))["objects"] == []  # synthesized


def test_a_dataset_folder_leading_out_of_the_project_is_a_problem_for_info(blob_project, tmp_path):
    """A dataset folder that is a symlink leading out of the project is not followed (the
    mount hides it): ``info`` showed ds1 only and exited 0, ``verify`` named it. Now ``info``
    does too. ``blob/`` leading out is followed (tars often live on another disk): no problem."""
    proj = copy_project(blob_project, tmp_path / "proj")
    shutil.move(proj / "blob", tmp_path / "disk2")
    (proj / "blob").symlink_to(tmp_path / "disk2")
    code, rep = info_json(proj)
    assert code == 0 and rep["items"] == 74 and rep["problems"] == [], rep
    ds2 = proj / "ds2"
    shutil.move(ds2, tmp_path / "ds2")
    ds2.symlink_to(tmp_path / "ds2")
    want = f"{ds2}: symlink leads outside the project; any dataset in it is left out"
    code, rep = info_json(proj)
    assert code == 1 and [d["name"] for d in rep["datasets"]] == ["ds1"] and rep["problems"] == [want], rep
    r = run("verify", str(proj))
    assert r.returncode == 1 and r.stdout.splitlines() == [want, "62 items checked, 1 problem(s)"], r.stdout


def test_an_empty_file_is_no_tar(blob_project, tmp_path):
    """A 0-byte file (a truncated copy, a failed download) opened as a bare tar gave "0 items",
    exit 0: read by its own headers it holds no archive (GNU tar: "does not look like a tar
    archive"; tarfile: "empty file"), so it is refused in one line, exit 2. With an offsets
    file it is a tar cut short, as in a project (test_short_tar_in_a_project_skips_what_is_missing)."""
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    r = run("info", str(empty))
    assert r.returncode == 2 and r.stderr == f"blobfs: {empty}: not a tar file (it is empty)\n", r.stderr
    pkl = blob_project / "ds2" / "more_images_offsets.pkl"
    r = run("info", "--json", str(empty), "--offsets", str(pkl))
    problems = json.loads(r.stdout)["problems"]
    assert r.returncode == 1 and sum("past the end of the tar" in p for p in problems) == 12, problems


@pytest.mark.parametrize("lead", [b"", bytes(1024)], ids=["text", "zeros_first"])
def test_a_blob_file_that_is_no_tar_is_refused(blob_project, tmp_path, lead):
    """``blob/`` links are followed wherever they lead (tars often live on another disk), so a
    stranger's project can point ``blob/more_images.tar`` at any file (``/etc/shadow``; a file
    system image, whose first 1024 bytes are zeros) and its offsets file at byte ranges of it:
    the mount served those bytes as images (to every user, under ``allow_other``). A file whose
    first block is no tar header, or a zero block (an empty archive) that goes on past one
    record, is now refused like a compressed one: one problem line, none of its bytes served."""
    proj = copy_project(blob_project, tmp_path / "proj")
    secret = tmp_path / "secret"
    secret.write_bytes(lead + b"root:$6$not-for-the-mount$\n" * 4000)   # as long as the tar's ranges
    tar = proj / "blob" / "more_images.tar"
    tar.unlink()
    tar.symlink_to(secret)
    want = f"{tar}: not a tar file (its first 512 bytes are no tar header)"
    code, rep = info_json(proj)
    assert code == 1 and want in rep["problems"], rep
    r = run("verify", str(proj))
    assert r.returncode == 1 and want in r.stdout.splitlines(), r.stdout
    with pytest.raises(InputError, match="not a tar file"):
        open_project(proj)
    with open_project(proj, lenient=True) as p:     # as the mount opens it
        assert p.problems.count(want) == 1, p.problems
        served = [data for _path, data in p.iter_bytes()]
        assert len(served) == 62 and not any(b"not-for-the-mount" in d for d in served)
    # A real tar behind the same link is still followed.
    tar.unlink()
    tar.symlink_to(blob_project / "blob" / "more_images.tar")
    code, rep = info_json(proj)
    assert code == 0 and rep["problems"] == [], rep
