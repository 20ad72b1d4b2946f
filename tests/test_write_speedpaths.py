"""blobfs's offsets encoder produces exactly the bytes ``pickle`` produces.

``offsets_encode.encode_batch`` (offsets pickles without ``pickle``, what ``dumps_offsets``,
``write_offsets`` and ``pack`` write) against ``offsets_helpers.pickle_offsets`` (the SDK's
way: ``pickle.dump`` of BlobImageInfo lists), on entry lists chosen to put protocol-4 frame
boundaries at every opcode position and to hit every integer and string opcode.
"""
from __future__ import annotations

import random

import pytest

from blobfs.format.offsets_encode import encode_batch
from blobfs.format.offsets_write import BATCH, dumps_offsets
from offsets_helpers import pickle_offsets


def _encode(entries: list[tuple[str, int, int]]) -> bytes:
    out = []
    for lo in range(0, len(entries), BATCH):
        batch = entries[lo : lo + BATCH]
        out.append(encode_batch([e[0] for e in batch], [e[1] for e in batch],
                                [e[2] for e in batch]))
    return b"".join(out)


def _mixed(n: int, seed: int) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    entries, pos = [], 0
    for i in range(n):
        kind = rng.random()
        if kind < 0.7:
            name = f"img_{i:07d}.png"
        elif kind < 0.8:
            name = "é" * rng.randint(1, 200) + f"{i}.jpg"       # multi-byte, some >= 256 bytes
        elif kind < 0.9:
            name = "x" * rng.randint(90, 300) + f"{i}.png"      # BINUNICODE past 255 bytes
        else:
            name = f"{i}\U0001f600.webp"
        size = rng.choice([0, 5, 300, 4000, 70_000, 1 << 20])
        pos += rng.choice([0, 512, 1536, 1 << 31, 1 << 33, 1 << 40])  # every int opcode
        entries.append((name, pos, pos + size))
        pos += size
    return entries


@pytest.mark.parametrize("n", [1, 2, 999, 1000, 1001, 2001, 9999, 10_000, 10_001, 10_002, 23_456])
def test_encoder_matches_pickle_at_batch_edges(n: int) -> None:
    entries = _mixed(n, n)
    assert _encode(entries) == pickle_offsets(entries) == dumps_offsets(entries)


@pytest.mark.parametrize("name_len", range(1, 40))
def test_encoder_matches_pickle_at_every_frame_boundary(name_len: int) -> None:
    # Entry sizes vary with the name length, so across the sweep a 64 KiB frame closes
    # before every kind of opcode inside an entry.
    entries = [("n" * name_len + f"{i}.png", 600 * i + (1 << 31 if i % 3 == 0 else 70_000),
                600 * i + 80_000) for i in range(2500)]
    assert _encode(entries) == pickle_offsets(entries) == dumps_offsets(entries)


def test_encoder_matches_pickle_on_a_typical_big_tar() -> None:
    # ~4 KB images in a tar past 2 GiB: offsets move from BININT to LONG1 mid-way.
    entries, pos = [], 512
    for i in range(30_000):
        size = 3072 + (i * 7919) % 2048
        pos += 512 + ((1 << 31) if i == 20_000 else 0)
        entries.append((f"img_{i:07d}.png", pos, pos + size))
        pos += size + (-size % 512)
    assert entries[19_999][2] < 2**31 <= entries[20_000][1]
    assert _encode(entries) == pickle_offsets(entries) == dumps_offsets(entries)
