"""Item names and file-name rules of the Supervisely project format (FORMAT.md §1, §7).

One place decides which names are acceptable as item names (they become file names in the
mount, so they must be single, safe path components) and which files count as images.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable

#: FORMAT.md §1: image extensions of files in ``img/``, matched case-insensitively.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".mpo", ".bmp", ".png", ".webp", ".tiff", ".tif", ".nrrd", ".jfif"}
)

#: Linux NAME_MAX: the kernel refuses longer path components (ENAMETOOLONG).
NAME_MAX = 255

# C0 controls and DEL. NUL and "/" are impossible in a file name; the other controls are
# legal on Linux but break line-based tools and terminals, so blobfs refuses them too.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f/]")
_BAD_BYTES = re.compile(b"[\x00-\x1f\x7f/]")
# C1 controls (U+0080-U+009F): terminals act on them as on C0 (U+009B is CSI), so blobfs does
# not make such names (pack, pack-project, index: ``new_name_problem``). Readers still serve
# the ones a project has: the SDK reads any name, and hiding an item would lose it.
_C1_CHARS = re.compile("[\x80-\x9f]")


#: Characters of a name quoted in a problem line: a member name from a tar's PAX or GNU
#: extension header may be megabytes long, and the line must stay readable.
QUOTE_MAX = 100


def fit_name(name: str, limit: int) -> str:
    """``name``, or when its bytes exceed ``limit``, its first whole characters, ``~`` and a
    16-hex digest of the whole name (at most ``limit`` bytes): names made from a legal name
    plus a suffix must not fail with "File name too long", and the digest keeps two long
    names that start alike apart."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    cut = raw[: limit - 17].decode("utf-8", "ignore")
    return f"{cut}~{hashlib.sha256(raw).hexdigest()[:16]}"


def quoted(name: str) -> str:
    """``repr(name)``, cut to ``QUOTE_MAX`` characters with the length said."""
    if len(name) <= QUOTE_MAX:
        return repr(name)
    return f"{name[:QUOTE_MAX]!r}... ({len(name)} characters)"


def is_image_name(name: str) -> bool:
    """True when ``name`` has one of the SDK's image extensions (case-insensitive)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an item name, or None when it can.

    An item name becomes ``img/<name>`` and ``ann/<name>.json``, so it must be one path
    component: non-empty, not ``.``/``..``, no ``/``, no NUL or other control character, and
    at most 250 bytes of UTF-8 so that ``<name>.json`` still fits in NAME_MAX.
    """
    if not isinstance(name, str):
        return f"name is {type(name).__name__}, not str"
    if not name:
        return "empty name"
    if name in (".", ".."):
        return f"name {name!r} is not a file name"
    m = _BAD_CHARS.search(name)
    if m:
        return f"name {quoted(name)} contains {m.group()!r}"
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"name {quoted(name)} is not valid UTF-8"
    if n > NAME_MAX - len(".json"):
        return f"name of {n} bytes is too long (at most {NAME_MAX - len('.json')})"
    return None


def new_name_problem(name: object) -> str | None:
    """``name_problem`` for a name blobfs writes into an offsets file (``pack``,
    ``pack-project``, ``index``): C1 control characters are refused as C0 ones are."""
    problem = name_problem(name)
    if problem is None and isinstance(name, str) and not name.isascii():
        m = _C1_CHARS.search(name)
        if m:
            return f"name {quoted(name)} contains {m.group()!r}"
    return problem


def nfc_twins(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of different names that are one name after Unicode normalization (NFC): ``é``
    precomposed and ``e`` + U+0301. Both are items (the SDK does not normalize, FORMAT.md §7),
    but macOS file systems (APFS, HFS+) hold only one of them, so an unpack there loses one
    (NTFS does not normalize names).
    Pure-ASCII names are their own NFC and are only looked at when a non-ASCII name
    normalizes to ASCII (the Kelvin sign U+212A is ``K``)."""
    names = names if isinstance(names, list) else list(names)
    by_key: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    to_ascii = False
    for name in names:
        if name.isascii():
            continue
        key = unicodedata.normalize("NFC", name)
        first = by_key.setdefault(key, name)
        if first != name:
            pairs.append((first, name))
        to_ascii = to_ascii or key.isascii()
    if to_ascii:
        ascii_names = {name for name in names if name.isascii()}
        pairs += [(key, name) for key, name in by_key.items() if key in ascii_names]
    return pairs


def shown(name: str) -> str:
    """``name`` in quotes, with each character that normalization would change escaped
    (``'cafe\\u0301.png'``), so that the two names of an ``nfc_twins`` pair look different."""
    def one(c: str) -> str:
        if c.isascii() or (not unicodedata.combining(c) and unicodedata.is_normalized("NFC", c)):
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
    return "'" + "".join(map(one, name)) + "'"


def twins_note(pairs: list[tuple[str, str]], where: str) -> str:
    """The one warning line about ``nfc_twins`` pairs found in ``where``."""
    a, b = pairs[0]
    more = f"; {len(pairs) - 1} more such pair(s)" if len(pairs) > 1 else ""
    return (f"{where}: items {shown(a)} and {shown(b)} are one name after Unicode normalization "
            f"(NFC): both are kept, but a macOS file system cannot hold both after unpack{more}")


def name_bytes_problem(raw: bytes) -> str | None:
    """``name_problem`` for a UTF-8 encoded name, without building a str when it is fine."""
    if not raw:
        return "empty name"
    if raw in (b".", b".."):
        return f"name {raw.decode()!r} is not a file name"
    if len(raw) > NAME_MAX - len(".json"):
        return f"name of {len(raw)} bytes is too long (at most {NAME_MAX - len('.json')})"
    m = _BAD_BYTES.search(raw)
    if m:
        return f"name {raw.decode('utf-8', 'backslashreplace')!r} contains {m.group().decode()!r}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"name {raw.decode('utf-8', 'backslashreplace')!r} is not valid UTF-8"
    return None


def ann_names(item: str) -> tuple[str, str | None]:
    """The annotation file names an item may use, new rule first (FORMAT.md §7).

    ``x.png`` → (``x.png.json``, ``x.json``); a name without extension has no old form.
    """
    dot = item.rfind(".")
    old = item[:dot] + ".json" if dot > 0 else None
    return item + ".json", old
