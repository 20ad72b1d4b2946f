"""Where an output may go, and the names of its hidden siblings.

Checks made before any input is read (``check_output_folder``, ``check_apart``: a usage error,
exit 2) and the hidden names beside an output (``.NAME.blobfs-tmp-*``, ``-old-*``, ``-lock``)
that ``blobfs.write.atomic`` and ``blobfs.write.outlock`` use.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from blobfs.errors import InputError
from blobfs.format.names import fit_name
from blobfs.write.errors import OutputPathError


def check_apart(src: Path, out: Path) -> None:
    """Refuse an output that is the source or holds it: replacing it (``--force``) would delete
    the source, and writing into it would read what is being written."""
    real_src, real_out = os.path.realpath(src), os.path.realpath(out)
    if (real_src + "/").startswith(real_out + "/"):
        raise InputError(f"{out}: output holds the source {src} (replacing it would delete the source)")
    if (real_out + "/").startswith(real_src + "/"):
        raise InputError(f"{out}: output inside the source {src}")


def check_output_folder(final: Path) -> None:
    """Refuse an output whose folder is missing or no folder, or whose name that folder cannot
    hold (longer than its NAME_MAX): what the user typed, as an existing output is, so exit 2
    before any input is read (1 is for a write that failed)."""
    parent = Path(final).parent
    if not parent.is_dir():
        what = "is not a folder" if os.path.lexists(parent) else "does not exist"
        raise OutputPathError(f"{parent}: output folder {what}")
    size = len(os.fsencode(Path(final).name))
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if size > name_max:
        raise OutputPathError(f"{final}: a name of {size} bytes is too long for its folder "
                              f"(at most {name_max})")


#: Bytes of the output's name kept in its hidden siblings' names: with the dot and the longest
#: suffix (".blobfs-old-PID-xxxxxxxx", at most 36 bytes) the name stays within NAME_MAX (255).
_KEPT = 200


def hidden_stem(final: Path) -> str:
    """``.NAME``, the start of every hidden sibling of ``final`` (temporary, old tree, lock).
    A name too long to take the suffixes keeps its first bytes and a digest of the whole, so a
    legal output name never fails with "File name too long" for its siblings' sake."""
    return "." + fit_name(final.name, _KEPT)


def temp_name(final: Path, tag: str = "tmp") -> Path:
    """Hidden sibling of ``final``: same folder, so renaming it is atomic."""
    return final.parent / f"{hidden_stem(final)}.blobfs-{tag}-{os.getpid()}-{secrets.token_hex(4)}"
