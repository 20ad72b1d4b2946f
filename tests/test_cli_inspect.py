"""The inspection commands through click's runner (and the real entry points once)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import blobfs
from blobfs.cli.main import cli


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help(runner: CliRunner) -> None:
    r = run(runner, "--version")
    assert r.exit_code == 0 and blobfs.__version__ in r.output
    for cmd in ("info", "ls", "cat", "index", "verify", "mount", "umount", "pack",
                "pack-project", "unpack", "preview", "demo"):
        r = run(runner, cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_every_option_is_documented_in_readme_and_help() -> None:
    # An operator reads README.md and --help: every option of every command (one of its
    # spellings) and every -o mount option appears in the README, and each option says what
    # it does in --help.
    import re

    import click

    from blobfs.cli.main import COMMANDS
    from blobfs.fuse.options import OWN_OPTIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()

    def in_readme(word: str, pattern: str = r"(?<![\w-]){}(?![\w-])") -> bool:
        return re.search(pattern.format(re.escape(word)), readme) is not None

    ctx = click.Context(cli)
    undocumented, no_help = [], []
    for name in ["", *COMMANDS]:
        cmd = cli.get_command(ctx, name) if name else cli
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name == "help":
                continue
            spellings = p.opts + p.secondary_opts
            if not any(in_readme(s) for s in spellings):
                undocumented.append(f"{name or 'blobfs'} {'/'.join(spellings)}")
            if not p.help:
                no_help.append(f"{name or 'blobfs'} {'/'.join(spellings)}")
    # "subtype": libfuse's generic option, accepted and ignored (the subtype is always blobfs)
    undocumented += [f"-o {k}" for k in OWN_OPTIONS if k != "subtype" and not in_readme(k, r"`{}[`=]")]
    assert undocumented == [], undocumented
    assert no_help == [], no_help


def test_entry_points_run() -> None:
    for argv in ([sys.executable, "-m", "blobfs", "--version"],
                 [str(Path(sys.executable).parent / "blobfs"), "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and blobfs.__version__ in out.stdout


def test_info_text_and_json(runner: CliRunner, blob_project: Path, fixtures_dir: Path) -> None:
    r = run(runner, "info", str(blob_project))
    assert r.exit_code == 0, r.output
    assert "items: 74 in 2 dataset(s)" in r.output
    r = run(runner, "info", str(blob_project), "--json")
    assert r.exit_code == 0
    report = json.loads(r.output)
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["datasets"]
    assert [(d["name"], d["items"], d["blob_items"]) for d in report["datasets"]] == \
        [(d["name"], d["items"], d["blob_items"]) for d in expected]
    assert sorted(Path(b["path"]).name for b in report["blobs"]) == ["more_images.tar", "small_images.tar"]
    assert report["problems"] == []


def test_ls_and_cat(runner: CliRunner, blob_project: Path, classic_project: Path) -> None:
    r = run(runner, "ls", str(blob_project))
    assert r.exit_code == 0
    assert r.output.split() == ["ds1/", "ds2/", "meta.json"]
    r = run(runner, "ls", str(blob_project), "ds2/img")
    assert "scan 00.jpg" in r.output.splitlines()
    r = run(runner, "ls", "-l", str(blob_project), "ds2/img")
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("- ")
    r = runner.invoke(cli, ["cat", str(blob_project), "ds1/img/img_040.png"])
    assert r.exit_code == 0
    assert r.stdout_bytes == (classic_project / "ds1/img/img_040.png").read_bytes()
    r = run(runner, "cat", str(blob_project), "ds1/img/nope.png")
    assert r.exit_code == 2 and "No such file" in r.output


def test_index_matches_sdk_bytes(runner: CliRunner, blob_project: Path, tmp_path: Path) -> None:
    for tar, pkl in (("small_images.tar", "ds1/small_images_offsets.pkl"),
                     ("more_images.tar", "ds2/more_images_offsets.pkl")):
        r = run(runner, "index", str(blob_project / "blob" / tar), "-o", str(tmp_path))
        assert r.exit_code == 0, r.output
        out = tmp_path / (Path(tar).stem + "_offsets.pkl")
        assert out.read_bytes() == (blob_project / pkl).read_bytes()
        r = run(runner, "index", str(blob_project / "blob" / tar), "-o", str(tmp_path))
        assert r.exit_code == 2 and "exists" in r.output  # refused without --force
    r = run(runner, "index", str(blob_project / "blob/small_images.tar"), "-o", str(tmp_path),
            "--force", "--include", "batch2/*", "--exclude", "*.jpg")
    assert r.exit_code == 0
    from blobfs.format.offsets_read import read_offsets

    names = [n for n, _, _ in read_offsets(tmp_path / "small_images_offsets.pkl").table]
    assert names and all(n.endswith(".png") for n in names) and len(names) < 10


def test_index_globs_match_members_named_with_a_leading_dot_slash(runner: CliRunner,
                                                                  tmp_path: Path) -> None:
    """``tar cf x.tar ./a ./b`` names its members ``./a/1.png``: ``--include 'a/*'`` matched
    none of them (nothing indexed, exit 2); it now matches as it does ``a/1.png``."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / f"{d}1.png").write_bytes(b"\x89PNG" + bytes(60))
    tar = tmp_path / "x.tar"
    subprocess.run(["tar", "cf", str(tar), "./a", "./b"], cwd=tmp_path, check=True)
    r = run(runner, "index", str(tar), "-o", str(tmp_path), "--include", "a/*")
    assert r.exit_code == 0, r.output
    from blobfs.format.offsets_read import read_offsets

    assert [n for n, _, _ in read_offsets(tmp_path / "x_offsets.pkl").table] == ["a1.png"]
    r = run(runner, "index", str(tmp_path / "x.tar"), "-o", str(tmp_path), "--force",
            "--exclude", "a/*")
    assert r.exit_code == 0, r.output
    assert [n for n, _, _ in read_offsets(tmp_path / "x_offsets.pkl").table] == ["b1.png"]


def test_verify_clean_and_with_problems(runner: CliRunner, blob_project: Path, tmp_path: Path) -> None:
    r = run(runner, "verify", str(blob_project), "--decode")
    assert r.exit_code == 0, r.output
    assert "74 items checked, 0 problem(s)" in r.output
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    (proj / "ds1/ann/img_003.png.json").unlink()
    (proj / "ds1/ann/img_004.png.json").write_text("{not json")
    ann5 = proj / "ds1/ann/img_005.jpg.json"
    doc = json.loads(ann5.read_text())
    doc["size"]["width"] += 1
    ann5.write_text(json.dumps(doc))
    r = run(runner, "verify", str(proj), "--decode", "--json")
    assert r.exit_code == 1
    problems = json.loads(r.output)["problems"]
    assert any("img_003.png.json: missing" in p for p in problems)
    assert any("img_004.png.json: not valid JSON" in p for p in problems)
    assert any("img_005.jpg" in p and "annotation says" in p for p in problems)


def test_undecodable_image_lines_hold_no_object_address(blob_project: Path, tmp_path: Path) -> None:
    """Pillow's "cannot identify image file <_io.BytesIO object at 0x7f...>" reached verify's
    problem line and preview's warning: an address that changes from run to run (two reports
    of one source differed) and tells the user nothing."""
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    (proj / "ds1/img/photo_a.png").write_bytes(b"\x00" * 300)  # no image any more
    lines = []
    sheet = str(tmp_path / "s.png")
    for args in (["verify", "--decode"], ["preview", "--limit", "100", "-o", sheet]):
        r = subprocess.run([sys.executable, "-m", "blobfs", *args, str(proj)],
                           capture_output=True, text=True)
        lines += [ln for ln in (r.stdout + r.stderr).splitlines() if "photo_a.png:" in ln]
    assert len(lines) == 2, lines
    assert all(" object at 0x" not in ln for ln in lines), lines
    assert all(ln.endswith("UnidentifiedImageError: cannot identify image file")
               or ln.endswith("UnidentifiedImageError: cannot identify image file)")
               for ln in lines), lines


def test_verify_reports_ranges_that_are_not_members(runner: CliRunner, blob_project: Path,
                                                    tmp_path: Path) -> None:
    from blobfs.format.offsets_write import write_offsets

    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    # A range covering a member's header and data: inside the tar, so it is served as given,
    # but verify says it is not a member's data.
    write_offsets(proj / "ds2/more_images_offsets.pkl", [("scan 00.jpg", 0, 2000)])
    r = run(runner, "verify", str(proj))
    assert r.exit_code == 1
    assert "is not the data of a member of this tar" in r.output


def test_unreadable_input_exits_2_with_one_line(runner: CliRunner, tmp_path: Path) -> None:
    for args in (["info", str(tmp_path / "missing")], ["ls", str(tmp_path)],
                 ["verify", str(tmp_path / "missing")], ["index", str(tmp_path / "x.tar")]):
        r = run(runner, *args)
        assert r.exit_code == 2, args
        assert "Traceback" not in r.output
    gz = tmp_path / "fake.tar"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 100)
    r = run(runner, "ls", str(gz))
    assert r.exit_code == 2 and "gzip-compressed" in r.output and len(r.output.strip().splitlines()) == 1


def test_ls_and_preview_say_in_one_line_what_they_leave_out(blob_project: Path, tmp_path: Path) -> None:
    """Lenient commands go on without what a problem skips, as the mount does (exit 0), but say
    so on stderr: the first problem and how many more, in one line."""
    from mount_helpers import BLOBFS

    proj = tmp_path / "p"
    shutil.copytree(blob_project, proj)
    pkl = proj / "ds2" / "more_images_offsets.pkl"
    pkl.chmod(0o644)
    pkl.write_bytes(b"")

    def real(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BLOBFS, *args], capture_output=True, text=True, timeout=120)

    for args in (("ls", str(proj)), ("preview", str(proj), "-o", str(tmp_path / "s.png"), "--thumb", "32")):
        r = real(*args)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and str(pkl) in lines[0] and "left out" in lines[0], r.stderr
    (proj / "ds1" / "img").mkdir(exist_ok=True)
    (proj / "ds1" / "img" / "bad\nname.png").write_bytes(b"x")  # a second problem
    r = real("ls", str(proj))
    lines = r.stderr.splitlines()
    assert r.returncode == 0 and len(lines) == 1 and "1 more problem" in lines[0] and "bad\\nname" in lines[0], r.stderr
    for cmd in ("verify", "info"):  # one line per problem there too, the newline escaped
        r = real(cmd, str(proj))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert not any(ln.startswith("name.png") for ln in r.stdout.splitlines()), r.stdout
        assert any("bad\\nname.png" in ln for ln in r.stdout.splitlines()), r.stdout
    clean = real("ls", str(blob_project))
    assert clean.returncode == 0 and clean.stderr == ""


def test_index_leaves_out_names_no_reader_can_use(runner: CliRunner, tmp_path: Path) -> None:
    """'.', '..', a newline, bytes that are not UTF-8: every reader skips such an entry, so
    index does not write it (it would be dead); one warning line with the count, exit 1."""
    import tarfile

    from blobfs.format.offsets_read import read_offsets
    from tar_helpers import members_tar

    bad = ["d/.", "d/..", "new\nline.png", b"bad\xff.png".decode("utf-8", "surrogateescape")]
    tar = members_tar(tmp_path / "w.tar", [(n, b"abc") for n in ["a.png", *bad, "b.png"]],
                      tarfile.GNU_FORMAT)
    r = subprocess.run([sys.executable, "-m", "blobfs", "index", str(tar)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "not indexed; 3 more" in warnings[0], r.stderr
    assert "2 entries, 4 member(s) not indexed" in r.stdout
    result = read_offsets(tmp_path / "w_offsets.pkl")
    assert [n for n, _, _ in result.table] == ["a.png", "b.png"] and not result.problems


def test_index_says_when_two_members_give_one_item_name(tmp_path: Path) -> None:
    """``a/x.png`` and ``b/x.png`` both become item ``x.png``: both are indexed (the SDK's bytes),
    but a reader shows only the later one and the SDK skips a dataset with a duplicate item
    (verify reports it). index wrote it without a word, exit 0; now one warning line, exit 1."""
    import tarfile

    from blobfs.format.offsets_read import read_offsets
    from tar_helpers import members_tar

    names = ["a/x.png", "a/y.png", "b/x.png", "c/y.png", "c/x.png"]
    tar = members_tar(tmp_path / "d.tar", [(n, b"abc") for n in names], tarfile.GNU_FORMAT)
    r = subprocess.run([sys.executable, "-m", "blobfs", "index", str(tar)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [
        f"blobfs: WARNING: {tar}: item 'x.png' is named by 3 members: all are indexed, but a "
        f"reader shows only the last and the SDK skips the dataset; 1 more such name"], r.stderr
    assert "5 entries" in r.stdout
    assert [n for n, _, _ in read_offsets(tmp_path / "d_offsets.pkl").table] == [
        n.rpartition("/")[2] for n in names]


def test_index_refuses_to_write_an_empty_offsets_file(runner: CliRunner, blob_project: Path,
                                                      tmp_path: Path) -> None:
    tar = blob_project / "blob" / "small_images.tar"
    r = run(runner, "index", str(tar), "-o", str(tmp_path), "--include", "*.gif")
    assert r.exit_code == 2 and "no member matches --include/--exclude; nothing written" in r.output
    assert list(tmp_path.iterdir()) == []


def test_index_refuses_a_dangling_symlink_at_the_output_name(runner: CliRunner, blob_project: Path,
                                                             tmp_path: Path) -> None:
    link = tmp_path / "small_images_offsets.pkl"
    link.symlink_to(tmp_path / "nowhere")
    tar = blob_project / "blob" / "small_images.tar"
    r = run(runner, "index", str(tar), "-o", str(tmp_path))
    assert r.exit_code == 2 and "exists" in r.output and link.is_symlink()
    assert run(runner, "index", str(tar), "-o", str(tmp_path), "--force").exit_code == 0
    assert not link.is_symlink() and link.stat().st_size > 0


def test_a_trailing_slash_on_a_file_is_not_a_directory(runner: CliRunner, blob_project: Path) -> None:
    """``cat PROJ ds1/img/x.png/`` printed the image: a trailing slash names a folder."""
    for path in ("ds1/img/img_040.png/", "meta.json/", "ds1/ann/img_040.png.json/"):
        for cmd in ("cat", "ls"):
            r = run(runner, cmd, str(blob_project), path)
            assert r.exit_code == 2 and "Not a directory" in r.output, (cmd, path, r.output)
    r = run(runner, "ls", str(blob_project), "ds1/img/")  # on a folder it changes nothing
    assert r.exit_code == 0 and "img_040.png" in r.output.splitlines()


def test_a_mistyped_command_is_not_taken_for_a_mount(blob_project: Path, tmp_path: Path) -> None:
    # fstab's "blobfs SOURCE MOUNTPOINT" routing took `blobfs infoo PROJECT` for a mount of
    # "infoo" on the project: "mount point is not empty (use -o nonempty ...)".
    r = subprocess.run([sys.executable, "-m", "blobfs", "infoo", str(blob_project)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "No such command 'infoo'" in r.stderr, r.stderr
    assert "mount" not in r.stderr
    # A source that exists (or a path) still means mount, as mount.fuse3 runs it.
    r = subprocess.run([sys.executable, "-m", "blobfs", str(blob_project), str(tmp_path / "nomnt")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "blobfs mount:" in r.stderr and "nomnt" in r.stderr, r.stderr


def test_view_paths_with_dot_dotdot_and_double_slashes(runner: CliRunner, blob_project: Path,
                                                       classic_project: Path) -> None:
    """``ls PROJ ./ds1`` and ``cat PROJ ds1//img/x.png`` said "No such file or directory":
    they name what they name in a shell (and on the mount)."""
    want = (classic_project / "ds1/img/img_040.png").read_bytes()
    for path in ("./ds1/img/img_040.png", "ds1//img/img_040.png", "ds1/./img/img_040.png",
                 "ds2/../ds1/img/img_040.png", "/ds1/img/img_040.png"):
        r = runner.invoke(cli, ["cat", str(blob_project), path])
        assert r.exit_code == 0 and r.stdout_bytes == want, (path, r.output)
    listing = run(runner, "ls", str(blob_project), "ds1/img").output
    for path in ("./ds1/img", "ds1//img/", "ds1/img/.", "ds2/../ds1/img"):
        r = run(runner, "ls", str(blob_project), path)
        assert r.exit_code == 0 and r.output == listing, (path, r.output)
    r = run(runner, "ls", str(blob_project), ".")
    assert r.output.split() == ["ds1/", "ds2/", "meta.json"]
    # A trailing slash or dot on a file still says it is no folder; errors name the path given.
    for path in ("ds1/img/img_040.png/.", "./ds1/img/img_040.png/"):
        r = run(runner, "cat", str(blob_project), path)
        assert r.exit_code == 2 and r.output == f"blobfs: {path}: Not a directory\n", r.output
    r = run(runner, "cat", str(blob_project), "")
    assert r.exit_code == 2 and r.output == "blobfs: /: Is a directory\n"


def test_info_of_a_dataset_folder_names_that_folder(runner: CliRunner, blob_project: Path) -> None:
    """``info PROJ/ds1`` said "dataset: PROJ" (the absolute project root found for meta.json)."""
    r = run(runner, "info", str(blob_project / "ds1"))
    assert r.exit_code == 0 and r.output.splitlines()[0] == f"dataset: {blob_project / 'ds1'}", r.output
    report = json.loads(run(runner, "info", str(blob_project / "ds1"), "--json").output)
    assert report["kind"] == "dataset" and report["source"] == str(blob_project / "ds1")
    assert [d["name"] for d in report["datasets"]] == ["ds1"]


def test_info_json_of_a_bare_tar_names_the_tar(runner: CliRunner, blob_project: Path) -> None:
    """``info --json TAR`` gave ``"source": null`` while the text said "tar: TAR"."""
    tar = blob_project / "blob" / "small_images.tar"
    r = run(runner, "info", str(tar))
    assert r.exit_code == 0 and r.output.splitlines()[0] == f"tar: {tar}", r.output
    report = json.loads(run(runner, "info", str(tar), "--json").output)
    assert report["kind"] == "tar" and report["source"] == str(tar), report


def test_ann_that_is_a_file_is_named_as_such(runner: CliRunner, blob_project: Path) -> None:
    """``--ann meta.json`` said "annotation folder not found" of a file that is there."""
    tar = next((blob_project / "blob").glob("*.tar"))
    r = run(runner, "info", str(tar), "--ann", str(blob_project / "meta.json"))
    assert r.exit_code == 2 and r.output == f"blobfs: {blob_project / 'meta.json'}: annotation folder is not a folder\n"
    r = run(runner, "info", str(tar), "--ann", str(blob_project / "nope"))
    assert r.exit_code == 2 and r.output == f"blobfs: {blob_project / 'nope'}: annotation folder not found\n"


def test_info_prints_names_with_a_newline_on_one_line(runner: CliRunner, blob_project: Path, tmp_path: Path) -> None:
    """A dataset folder named ``a\\nb`` (and the project folder holding it) split the report's
    lines; they are escaped as problem lines are, and --json keeps them exact."""
    proj = tmp_path / "pro\nject"
    shutil.copytree(blob_project, proj, symlinks=True)
    (proj / "ds1").rename(proj / "d\ns1")
    r = run(runner, "info", str(proj))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    escaped = str(proj).replace("\n", "\\n")
    assert lines[0] == f"project: {escaped}", lines
    assert any(ln.startswith("  d\\ns1 ") for ln in lines), lines
    assert len(lines) == 2 + 2 + len(list((proj / "blob").glob("*.tar")))  # kind, items, 2 datasets, blobs
    report = json.loads(run(runner, "info", str(proj), "--json").output)
    assert "d\ns1" in [d["name"] for d in report["datasets"]] and report["source"] == str(proj)


@pytest.mark.parametrize("command", ["info", "verify", "ls"])
def test_source_name_too_long_is_one_line(tmp_path: Path, command: str) -> None:
    """A SOURCE whose name is longer than the file system takes (ENAMETOOLONG) was a
    traceback from ``Path.exists()`` (which answers only "missing" quietly): now unreadable
    input, one line, exit 2."""
    long = tmp_path / ("a" * 300)
    r = subprocess.run([sys.executable, "-m", "blobfs", command, str(long)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"blobfs: {long}: File name too long"], r.stderr
