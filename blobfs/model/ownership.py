"""``-o uid=,gid=,umask=``: the owner, group and permission mask every entry of a mount shows.

The view applies it in :meth:`blobfs.model.view.ClassicView.getattr`, the one place both FUSE
adapters take attributes from. ``umask`` masks the modes the view would show anyway (source
modes without write bits; images 0444, virtual folders 0555): it only takes bits away. That
differs from libfuse's own high-level ``umask=``, which replaces every mode with
``0777 & ~umask`` and so would make files executable and writable-looking; the view's modes say
what the source allows, and an operator's umask should only narrow that.
"""
from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blobfs.model.viewstat import Stat

#: (uid_t)-1 means "no change" to chown(2) and is no owner a file can have.
_MAX_ID = 2**32 - 2


@dataclass(frozen=True, slots=True)
class Ownership:
    """What to show instead of each entry's own owner, group and permission bits (None: keep)."""

    uid: int | None = None
    gid: int | None = None
    umask: int | None = None

    def __bool__(self) -> bool:
        return not (self.uid is None and self.gid is None and self.umask is None)

    def apply(self, s: "Stat") -> "Stat":
        mode = s.mode if self.umask is None else s.mode & ~self.umask
        return replace(s, mode=mode,
                       uid=s.uid if self.uid is None else self.uid,
                       gid=s.gid if self.gid is None else self.gid)


def parse_id(key: str, value: str) -> int:
    """A ``uid=``/``gid=`` value: a number, else a user (group) name looked up now, as
    mount(8) would; raises ``ValueError`` with one line naming ``key``."""
    if value.isascii() and value.isdigit():
        n = int(value)
        if n > _MAX_ID:
            raise ValueError(f"mount option {key}={value}: an id is at most {_MAX_ID}")
        return n
    kind, lookup = ("user", pwd.getpwnam) if key == "uid" else ("group", grp.getgrnam)
    if not value or value.startswith(("-", "+")) or value.isspace() or "\0" in value:
        # A NUL would reach pwd as Python's own "embedded null character".
        shown = value.replace("\0", "\\0")
        raise ValueError(f"mount option {key}={shown}: not a {kind} id or name")
    try:
        entry = lookup(value)
    except KeyError:
        raise ValueError(f"mount option {key}={value}: no such {kind} (give a number or a {kind} name)") from None
    return entry.pw_uid if isinstance(entry, pwd.struct_passwd) else entry.gr_gid


def parse_umask(value: str) -> int:
    """A ``umask=`` value: octal, 0 to 0777 (``022``, ``0077``); raises ``ValueError``."""
    if not (value.isascii() and 1 <= len(value) <= 4 and all(c in "01234567" for c in value)) \
            or int(value, 8) > 0o777:
        raise ValueError(f"mount option umask={value}: an octal mask from 000 to 777 (such as 022)")
    return int(value, 8)


__all__ = ["Ownership", "parse_id", "parse_umask"]
