"""Listing real folders for the view: filtering by the view's rules and resumable scans.

The kernel reads a directory in buffer-sized chunks and asks again "from offset N". For a real
folder of a million annotation files, re-scanning from the start for every chunk would be
quadratic, so an open scan is kept per folder and continued when the next request starts where
the previous one stopped (libfuse calls back with the offset of the last entry it kept; the
entry it could not fit is yielded again).
"""
from __future__ import annotations

import errno
import logging
import os
import stat as st
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

from blobfs.format.names import is_image_name, name_problem
from blobfs.model.discovery import entry_kind, file_kind, is_dir, is_file, leads_round, not_regular_why
from blobfs.model.folderscan import FolderScan, folder_stamp
from blobfs.model.hidden import Report
from blobfs.model.numbering import real_ino

log = logging.getLogger(__name__)

DIR_MODE = st.S_IFDIR | 0o555
FILE_MODE = st.S_IFREG | 0o444

Hide = Callable[[str], bool]
Entry = tuple[str, int, int]  # name, mode, inode number

#: What a link the view hides because it leads round in a circle is (log line, problem line).
ROUND_KIND = "link leading round in a circle"
ROUND_WHY = "symlink leads round in a circle (to a folder it lies in)"


class _Folder(Protocol):
    real: Path | None


class Around:
    """The real folders a symlink in view folder ``rel`` must not lead back to: the folder's
    own and each of its view ancestors' (realpaths). Computed the first time a symlink to a
    folder asks (rare: ordinary entries cost nothing), then kept for the scan.

    A view folder's real path is its nearest explicit ancestor's real folder (``dirs``: root,
    dataset, ``ann/``) joined with the rest of the view path; only realpath says where it is.
    Checking the link's own folder is not enough: for ``a/x -> ../b`` and ``b/y -> ../a``,
    view path ``a/x/y`` leads back to the real folder of ``a``, not to that of ``a/x``."""

    __slots__ = ("_rel", "_dirs", "_reals")

    def __init__(self, rel: str, dirs: Mapping[str, _Folder]) -> None:
        self._rel = rel
        self._dirs = dirs
        self._reals: list[str] | None = None

    def circle(self, link: str | os.PathLike) -> bool:
        """Whether the symlink ``link`` (to a folder) in this folder leads round in a circle."""
        if self._reals is None:
            self._reals = self._compute()
        return leads_round(os.path.realpath(link), self._reals)

    def _compute(self) -> list[str]:
        parts = self._rel.split("/") if self._rel else []
        reals: list[str] = []
        cur: Path | None = None
        for i in range(len(parts) + 1):
            d = self._dirs.get("/".join(parts[:i]))
            if d is not None:
                cur = d.real
            elif cur is not None:
                cur = cur / parts[i - 1]
            if cur is not None:
                reals.append(os.path.realpath(cur))
        return reals


class HiddenEntry(Exception):
    """A real entry the view hides by its rules; ``kind`` says what it is (for its log line)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class RealLister:
    """Lists real folders below ``root_real`` (None: no symlink may be followed)."""

    MAX_OPEN_SCANS = 64

    def __init__(self, root_real: str | None) -> None:
        self._root_real = root_real
        # view folder -> (a listing's scan, the offset it stopped at, the entry read after it;
        # None: the scan is at the folder's end)
        self._scans: OrderedDict[str, tuple[FolderScan[Entry], int, tuple[int, Entry] | None]] = (
            OrderedDict())
        self._lock = threading.Lock()

    def inside(self, path: str) -> bool:
        """Whether a symlink's target stays inside the project (the project's root itself
        included: a link to it is hidden as one leading round in a circle)."""
        real = os.path.realpath(path)
        return self._root_real is not None and (real + "/").startswith(self._root_real + "/")

    def _entry(self, entry: os.DirEntry, around: Around | None) -> Entry | None:
        """How the view lists a real entry, or None when it hides it (same rules as lookup:
        symlinks only inside the project and not round in a circle, only regular files and
        folders)."""
        try:
            if entry.is_symlink():
                if not self.inside(entry.path):
                    return None
                if around is not None and entry.is_dir() and around.circle(entry.path):
                    return None
                ino = real_ino(entry.stat().st_ino)
            else:
                ino = real_ino(entry.inode())
            if entry.is_dir():
                return entry.name, DIR_MODE, ino
            if entry.is_file():
                return entry.name, FILE_MODE, ino
        except OSError:
            pass
        return None

    def lookup(self, path: Path, folder: str, dirs: Mapping[str, _Folder]) -> os.stat_result:
        """The stat of real entry ``path`` (in view folder ``folder``; ``dirs`` as for
        :class:`Around`) with symlinks followed, by the rules :meth:`_entry` lists by:
        :class:`HiddenEntry` for an entry the view hides; ``os.lstat``'s errors otherwise."""
        link = False
        try:
            s = os.lstat(path)
            if st.S_ISLNK(s.st_mode):
                link = True
                if self.inside(str(path)):
                    s = os.stat(path)
        except OSError as e:
            if link and e.errno == errno.ENOENT:
                raise HiddenEntry("link leading nowhere") from None
            if link and e.errno == errno.ELOOP:  # p -> q -> p
                raise HiddenEntry(ROUND_KIND) from None
            raise
        if st.S_ISLNK(s.st_mode):  # not followed
            raise HiddenEntry("link leading out of the project")
        if link and st.S_ISDIR(s.st_mode) and Around(folder, dirs).circle(path):
            raise HiddenEntry(ROUND_KIND)
        if not (st.S_ISREG(s.st_mode) or st.S_ISDIR(s.st_mode)):
            raise HiddenEntry(("link to a " if link else "") + file_kind(s.st_mode))
        return s

    def kind(self, entry: os.DirEntry) -> str:
        """What an entry :meth:`_entry` hides is, in a word or two (for the view's log line)."""
        if entry.is_symlink():
            if not self.inside(entry.path):
                return "link leading out of the project"
            if is_dir(entry):  # hidden, though inside: by the circle rule
                return ROUND_KIND
        return entry_kind(entry)

    def img_kind(self, img: Path, name: str) -> str | None:
        """What entry ``name`` of a real ``img/``, no item, is in a word or two (for the view's
        log line), or None when there is no such entry: :meth:`lookup`'s rules, and for a file
        or folder it would show, why ``img/`` does not."""
        try:
            s = self.lookup(img / name, "", {})  # a folder here is "in img/", circle or not
        except HiddenEntry as h:
            return h.kind
        except OSError:
            return None
        if st.S_ISDIR(s.st_mode):
            return "folder in img/"
        # an image name: one no reader can use, or a file added since the project opened
        return "no item" if is_image_name(name) else "no image file name"

    def scan(self, real: Path, hide: Hide | None = None,
             hidden: Report | None = None,
             around: Around | None = None) -> Iterator[Entry]:
        """The entries of ``real`` (the view folder ``around`` stands for) the view shows. With
        ``hidden``, the scan reports to it what it left out by the view's rules, if anything
        (``FolderScan``)."""
        try:
            scan = self._scan(real, hide, hidden, around)
        except OSError:
            return
        try:
            while (item := scan.next()) is not None:
                yield item[1]
        finally:
            scan.close()

    def _scan(self, real: Path, hide: Hide | None, hidden: Report | None,
              around: Around | None) -> FolderScan[Entry]:
        return FolderScan(real, lambda entry: self._entry(entry, around), self.kind, hide, hidden)

    def subfolders(self, real: Path, hide: Hide | None, around: Around | None) -> int:
        """How many folders :meth:`scan` lists in ``real`` (a view folder's link count)."""
        return sum(1 for e in self.scan(real, hide, None, around) if st.S_ISDIR(e[1]))

    def dropped(self, real: Path, hide: Hide | None = None,
                around: Around | None = None) -> list[tuple[str, str]]:
        """(name, why) of the entries of ``real`` that :meth:`scan` leaves out by the view's
        rules (not by ``hide``): FIFOs, sockets, devices, symlinks leading outside the project,
        nowhere or round in a circle; ("", why) when the folder cannot be listed at all. The
        mount can only hide them; ``unpack`` must say that it did not write them."""
        out: list[tuple[str, str]] = []
        try:
            with os.scandir(real) as it:
                for entry in it:
                    if ((hide is not None and hide(entry.name))
                            or self._entry(entry, around) is not None):
                        continue
                    out.append((entry.name, self.why(entry)))
        except OSError as e:
            out.append(("", f"cannot list: {e.strerror or e}"))
        return sorted(out)

    def why(self, entry: os.DirEntry | Path) -> str:
        """Why the view hides real entry ``entry`` (one :meth:`_entry` leaves out), in the
        words of a problem line."""
        if entry.is_symlink() and not self.inside(os.fspath(entry)):
            return "symlink leads outside the project"
        if entry.is_symlink() and is_dir(entry):
            return ROUND_WHY
        return not_regular_why(entry)

    def hidden_why(self, path: Path, folder: str, dirs: Mapping[str, _Folder]) -> str | None:
        """:meth:`why` for real entry ``path`` (as :meth:`lookup` takes it) if the view hides
        it; None when it shows it or there is no such entry."""
        try:
            self.lookup(path, folder, dirs)
        except HiddenEntry:
            return self.why(path)
        except OSError:
            pass
        return None

    def img_why(self, img: Path, name: str) -> str | None:
        """Why entry ``name`` of a dataset's real ``img/``, no item, is not shown (the words
        of :func:`not_items` and of the project's problems); None when there is none."""
        path = img / name
        try:
            s = self.lookup(path, "", {})  # as img_kind: a folder here is "in img/"
        except HiddenEntry:
            return self.why(path)
        except OSError:
            return None
        if st.S_ISDIR(s.st_mode):
            return "sub-folder of img/, no item (only the files of img/ are)"
        if not is_image_name(name):
            return "no image file extension, no item"
        return name_problem(name) or "no item (added since the project was opened?)"

    def entries(self, key: str, real: Path, hide: Hide | None, offset: int, base: int,
                hidden: Report | None = None, around: Around | None = None,
                ) -> Iterator[tuple[str, int, int, int]]:
        """(name, mode, ino, next offset) of ``real``'s entries, the one in place k at offset
        ``base`` + k + 1 (places count hidden entries too: see ``folderscan``), starting after
        ``offset``; ``hidden`` and ``around`` as in :meth:`scan`, for a scan started here."""
        scan, pending = None, None
        if offset > base:  # a listing resumed, not started again
            with self._lock:
                cached = self._scans.pop(key, None)
            if cached is not None:
                scan, at, pending = cached
                # Going back, or going on from elsewhere in a folder changed since the scan
                # began (a scan is kept per folder, so it may be an earlier listing's, and
                # places have moved): only a new scan knows what is there now. Going on
                # exactly where the scan stopped keeps it, changed or not: that is the same
                # listing, and one scan gives each entry that stayed exactly once.
                going_on = offset == at or (pending is not None and offset == base + pending[0] + 1)
                if offset < at or (not going_on and scan.stamp != folder_stamp(real)):
                    scan.close()
                    scan, pending = None, None
                elif pending is None:  # the kernel's last call, past the end: no new scan
                    return
                elif offset - base > pending[0]:
                    pending = None  # the consumer kept it (or hidden ones after it), then stopped
        if scan is None:
            if offset > base:
                log.debug("listing %s resumes at entry %d with a new scan", key, offset - base)
            try:
                scan = self._scan(real, hide, hidden, around)
            except OSError:
                return
        if pending is None:
            scan.skip_to(offset - base)
        item = None
        try:
            while True:
                item = pending if pending is not None else scan.next()
                pending = None
                if item is None:
                    if offset > base:
                        self._keep(key, (scan, offset, None))
                    return
                yield item[1][0], item[1][1], item[1][2], base + item[0] + 1
                offset = base + item[0] + 1
        except GeneratorExit:
            # The consumer filled its reply and dropped this generator at the yield (CPython
            # closes it at once): the kernel asks again from the offset of the last entry it
            # kept, maybe in another process; here it resumes with the entry that did not fit.
            if item is not None:
                scan.flush()
                self._keep(key, (scan, offset, item))
            else:
                scan.close()
            raise

    def close(self) -> None:
        """Close every scan kept for a listing to resume."""
        with self._lock:
            scans, self._scans = list(self._scans.values()), OrderedDict()
        for scan in scans:
            scan[0].close()

    def _keep(self, key: str, state: tuple[FolderScan[Entry], int, tuple[int, Entry] | None]) -> None:
        with self._lock:
            old = self._scans.pop(key, None)
            self._scans[key] = state
            while len(self._scans) > self.MAX_OPEN_SCANS:
                self._scans.popitem(last=False)[1][0].close()
        if old is not None:
            old[0].close()


def not_items(img: Path | None) -> list[tuple[Path, str, bool]]:
    """(path, why, is a problem) of the entries of a dataset's real ``img/`` that are no items
    by the format's rule (FORMAT.md §1: the image files directly inside): sub-folders and names
    without an image extension; the SDK ignores them too, so they are no problem of the source,
    only worth saying when they are left behind. Image-named entries that are no items are
    the project's problems already (``Project.problems``)."""
    if img is None or not img.is_dir():
        return []
    out = []
    try:
        with os.scandir(img) as it:
            for entry in it:
                if is_image_name(entry.name):
                    continue
                if is_dir(entry):
                    why = "sub-folder of img/, no item (only the files of img/ are)"
                elif is_file(entry):
                    why = "no image file extension, no item"
                else:
                    why = f"{not_regular_why(entry)}, no item"
                out.append((img / entry.name, why, False))
    except OSError as e:
        out.append((img, f"cannot list: {e.strerror or e}", True))
    return sorted(out)
