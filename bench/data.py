# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark data: ~570 MB of mixed content (random, text, many small files)."""

from __future__ import annotations

import os
import random

WORDS = ("rollback release backup volume restore schema manifest compose notes upload database "
         "snapshot drill health digest image config retention verify archive ledger migration "
         "the a of and to in is it that for on with as by at from this be or are").split()


def text_block(rng: random.Random, size: int) -> bytes:
    out = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(6, 16))) + "\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def make_dataset(root: str, random_mb: int = 300, text_mb: int = 280, small_files: int = 5000, seed: int = 7) -> int:
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    total = 0
    big = os.path.join(root, "blobs")
    os.makedirs(big, exist_ok=True)
    for index in range(3):
        size = random_mb * 1024 * 1024 // 3
        with open(os.path.join(big, f"random-{index}.bin"), "wb") as handle:
            handle.write(os.urandom(size))
        total += size
    docs = os.path.join(root, "docs")
    os.makedirs(docs, exist_ok=True)
    block = text_block(rng, 4 * 1024 * 1024)
    per_file = 10 * 1024 * 1024
    for index in range(text_mb // 10):
        with open(os.path.join(docs, f"doc-{index:03d}.txt"), "wb") as handle:
            for part in range(per_file // len(block)):
                handle.write(block[part * 997 % 4096:] + block[: part * 997 % 4096])
            handle.write(block[: per_file % len(block)])
        total += per_file
    small = os.path.join(root, "small")
    for index in range(small_files):
        directory = os.path.join(small, f"d{index // 250:02d}")
        os.makedirs(directory, exist_ok=True)
        size = rng.randint(200, 8000)
        data = os.urandom(size) if index % 2 else block[index * 37 % 100000:][:size]
        with open(os.path.join(directory, f"f{index:05d}.dat"), "wb") as handle:
            handle.write(data)
        total += len(data)
    return total
