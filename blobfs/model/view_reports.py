"""What the classic view leaves out, and why: for the commands that report it, not the mount.

``unpack`` copies plain folders whole (``real_folder``) and lists what it did not copy
(``dropped``); ``cat`` and ``ls`` say why a path the mount would answer with ENOENT is hidden
(``hidden_why``). The mount never calls these: a FUSE lookup can only say ENOENT.
"""
from __future__ import annotations

import errno
import stat as st
from pathlib import Path
from typing import TYPE_CHECKING

from blobfs.model.listing import Around, not_items

if TYPE_CHECKING:
    from blobfs.model.view import ClassicView


class OutsideTheView:
    """Mixed into :class:`blobfs.model.view.ClassicView`; uses its path resolution."""

    __slots__ = ()

    def real_folder(self: "ClassicView", path: str) -> Path | None:
        """The real folder whose files the view lists unchanged under folder ``path`` (same
        bytes, same mtime), or None when a listed file may be virtual (items, overlays,
        synthesized annotations). Lets ``blobfs unpack`` copy a folder of 100k annotation files
        without resolving each path."""
        rel = self._rel(path)
        d = self._dirs.get(rel)
        if d is not None:
            plain = d.items_of is None and d.ann_of is None and all(
                node[0] == "dir" for node in d.overlay.values())
            return d.real if plain else None
        node = self._resolve(rel)
        return node[1] if node[0] == "real" and st.S_ISDIR(node[2].st_mode) else None

    def dropped(self: "ClassicView", path: str) -> list[tuple[Path, str, bool]]:
        """(real path, why, whether it is a problem of the source) of what the real folder
        behind folder ``path`` holds but the view does not show, beyond the format's hiding of
        ``blob/`` and offsets files: ``RealLister.dropped`` (problems), and in ``img/`` what is
        no item by the format's rule (``listing.not_items``)."""
        rel = self._rel(path)
        node = self._resolve(rel)
        if node[0] == "real" and st.S_ISDIR(node[2].st_mode):
            real, hide = node[1], None
        elif node[0] == "dir":
            d = self._dirs[node[1]]
            if d.items_of is not None:
                return not_items(d.items_of.items.img_dir)
            real, hide = d.real, d.hides
        else:
            return []
        if real is None:
            return []
        return [(real / name if name else real, why, True)
                for name, why in self._lister.dropped(real, hide, Around(rel, self._dirs))]

    def hidden_why(self: "ClassicView", path: str) -> tuple[Path, str] | None:
        """(real path, why) when view path ``path``, not found, names a real entry the view
        hides by its rules, or a folder on the way to it does (the mount can only say
        ENOENT; ``cat`` and ``ls`` say why)."""
        parent_rel, _, name = self._rel(path).rpartition("/")
        try:
            node = self._resolve(parent_rel)
        except OSError as e:
            return self.hidden_why(parent_rel) if e.errno == errno.ENOENT and parent_rel else None
        d = self._dirs.get(node[1]) if node[0] == "dir" else None
        if d is not None and d.items_of is not None:
            img = d.items_of.items.img_dir
            why = self._lister.img_why(img, name) if img is not None and name else None
            return (img / name, why) if why else None
        real = node[1] if node[0] == "real" else d.real if d and not d.hides(name) else None
        why = self._lister.hidden_why(real / name, parent_rel, self._dirs) if real and name else None
        return (real / name, why) if why else None
