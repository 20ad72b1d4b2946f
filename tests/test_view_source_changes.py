"""Real folders of the source changed while a project is open: what later listings show.

README ("unmount before changing it") asks users not to do this; these tests pin what a
listing that starts after the change gives: the folder as it is now. Two projects opened on
one source stand for the daemon's two worker processes, each with the listing state it kept
(``blobfs.model.folderscan``). Changes wait one coarse clock tick first: a folder's stamp is its
mtime and ctime, which ext4 takes from the coarse clock (``folderscan.folder_stamp``).
"""
from __future__ import annotations

import collections
import itertools
import os
import shutil
import time
from pathlib import Path

import pytest

from blobfs.format.emptyann import empty_ann_json
from blobfs.model.opening import open_project
from test_model import with_extra_folder

TICK = 0.02  # more than one coarse clock tick (1-4 ms)


def _change(folder: Path, how: str) -> None:
    time.sleep(TICK)
    if how == "add":
        for i in range(1000):
            (folder / f"new{i:04d}.json").write_bytes(b"{}")
    elif how == "remove":
        for name in sorted(os.listdir(folder))[::3]:
            (folder / name).unlink()
    else:  # replaced by rename, as a sync tool or an export writes a folder
        new = folder.with_name("extra.new")
        new.mkdir()
        for i in range(2500):
            (new / f"other{i:05d}.json").write_bytes(b"{}")
        folder.rename(folder.with_name("extra.old"))
        new.rename(folder)


def _names(entries: list) -> list[str]:
    return [e[0] for e in entries if e[0] not in (".", "..")]


@pytest.mark.parametrize("how", ["add", "remove", "replace"])
def test_a_listing_after_a_change_does_not_go_on_with_an_earlier_listings_scan(
        tmp_path: Path, blob_project: Path, how: str) -> None:
    """One process left a listing half way (its scan kept, to go on from there); the folder
    changed; a new listing's first calls go to the other process, the rest to this one. The
    kept scan reads the folder as it was (a replaced one is another folder), and its places
    are not the new listing's: the new listing must get the folder as it is, each name once."""
    proj = with_extra_folder(tmp_path, blob_project, 3000)
    extra = proj / "ds1/extra"
    with open_project(proj) as a, open_project(proj) as b:
        assert len(list(itertools.islice(a.view.readdir("/ds1/extra", 0), 500))) == 500
        _change(extra, how)
        want = sorted(os.listdir(extra))
        first = list(itertools.islice(b.view.readdir("/ds1/extra", 0), 1200))
        rest = list(a.view.readdir("/ds1/extra", first[-1][3]))
    got = _names(first + rest)
    assert [n for n, c in collections.Counter(got).items() if c > 1] == []
    assert sorted(got) == want


def test_the_same_listing_going_on_across_a_change_keeps_its_scan(
        tmp_path: Path, blob_project: Path) -> None:
    """A listing that goes on exactly where it stopped is the same listing, folder changed or
    not: it keeps its scan, which gives every entry that stayed exactly once (as a plain
    ``readdir`` of the folder would), whatever it makes of the ones added meanwhile."""
    proj = with_extra_folder(tmp_path, blob_project, 3000)
    extra = proj / "ds1/extra"
    before = set(os.listdir(extra))
    with open_project(proj) as a:
        first = list(itertools.islice(a.view.readdir("/ds1/extra", 0), 500))
        _change(extra, "add")
        rest = list(a.view.readdir("/ds1/extra", first[-1][3]))
    got = _names(first + rest)
    assert [n for n, c in collections.Counter(got).items() if c > 1] == []
    assert before <= set(got) <= set(os.listdir(extra))


def _synth_project(tmp_path: Path, blob_project: Path) -> tuple[Path, list[str]]:
    """The SDK project with every other annotation of ds1 moved aside: synthesized."""
    proj = shutil.copytree(blob_project, tmp_path / "p")
    aside = tmp_path / "aside"
    aside.mkdir()
    moved = sorted(os.listdir(proj / "ds1/ann"))[::2]
    for name in moved:
        (proj / "ds1/ann" / name).rename(aside / name)
    return proj, moved


def test_an_annotation_put_back_is_listed_once(tmp_path: Path, blob_project: Path) -> None:
    """``--synthesize-ann``: the items without annotation are worked out from the real
    ``ann/`` on first use. An annotation put back afterwards was listed twice (real, and
    synthesized) until unmount; real files win, so it is listed once, and read as itself."""
    proj, moved = _synth_project(tmp_path, blob_project)
    with open_project(proj, synthesize_ann=True) as p:
        listed = p.view.listdir("ds1/ann")
        assert len(listed) == len(set(listed)) and moved[0] in {n for n, _ in listed}
        time.sleep(TICK)
        (tmp_path / "aside" / moved[0]).rename(proj / "ds1/ann" / moved[0])
        names = [n for n, _ in p.view.listdir("ds1/ann")]
        assert [n for n, c in collections.Counter(names).items() if c > 1] == []
        assert sorted(names) == sorted(os.listdir(proj / "ds1/ann") + moved[1:])
        assert p.read(f"ds1/ann/{moved[0]}") == (proj / "ds1/ann" / moved[0]).read_bytes()


def test_an_annotation_taken_away_is_synthesized(tmp_path: Path, blob_project: Path) -> None:
    """The other way round: an item whose real annotation went away after the first listing
    gets a synthesized one, listed and readable (it was missing until unmount)."""
    proj, moved = _synth_project(tmp_path, blob_project)
    with open_project(proj, synthesize_ann=True) as p:
        p.view.listdir("ds1/ann")
        gone = sorted(os.listdir(proj / "ds1/ann"))[0]
        time.sleep(TICK)
        (proj / "ds1/ann" / gone).unlink()
        names = [n for n, _ in p.view.listdir("ds1/ann")]
        assert gone in names and len(names) == len(set(names))
        ann = p.read(f"ds1/ann/{gone}")
        image = p.read(f"ds1/img/{gone[:-len('.json')]}")
    from blobfs.preview.imagefacts import facts_from_prefix
    facts = facts_from_prefix(image, lambda: image, gone)
    assert ann == empty_ann_json(facts.width, facts.height)
