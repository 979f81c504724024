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


def dump_block(rng: random.Random, rows: int, start: int) -> bytes:
    """Rows of a PostgreSQL plain dump's COPY section: ids, timestamps, short text, a vector-ish column."""
    out = []
    for row in range(start, start + rows):
        words = " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))
        vector = ",".join("%.4f" % rng.random() for _dimension in range(8))
        out.append(f"{row}\t2026-11-{1 + row % 28:02d} {row % 24:02d}:{row % 60:02d}:{row % 59:02d}+00\t{words}\t{{{vector}}}\n")
    return "".join(out).encode()


def make_large_dataset(root: str, gigabytes: float = 4.0, small_files: int = 20000, seed: int = 11) -> int:
    """A realistic large app: a few large files (model weights, an upload archive), many small ones
    (uploads, thumbnails, config), logs, and a logical database dump; about ``gigabytes`` GB in all.

    Shares of the whole: 40 % incompressible large files, 20 % text logs, 30 % a database dump,
    the rest small files (half random, half text).
    """
    rng = random.Random(seed)
    total_bytes = int(gigabytes * 1e9)
    os.makedirs(root, exist_ok=True)
    written = 0
    models = os.path.join(root, "models")
    os.makedirs(models, exist_ok=True)
    piece = 64 * 1024 * 1024
    for index, share in enumerate((0.25, 0.15)):  # two "model files"
        size = int(total_bytes * share)
        with open(os.path.join(models, f"weights-{index}.safetensors"), "wb") as handle:
            left = size
            while left > 0:
                handle.write(os.urandom(min(piece, left)))
                left -= min(piece, left)
        written += size
    logs = os.path.join(root, "logs")
    os.makedirs(logs, exist_ok=True)
    block = text_block(rng, 8 * 1024 * 1024)
    log_bytes = int(total_bytes * 0.20)
    per_log = 256 * 1024 * 1024
    for index in range(max(1, log_bytes // per_log)):
        with open(os.path.join(logs, f"app-{index:02d}.log"), "wb") as handle:
            left = min(per_log, log_bytes - index * per_log)
            shift = 0
            while left > 0:
                chunk = block[shift:] + block[:shift]
                handle.write(chunk[:left])
                left -= min(len(chunk), left)
                shift = (shift + 7919) % len(block)
        written += min(per_log, log_bytes - index * per_log)
    dump_bytes = int(total_bytes * 0.30)
    rows = dump_block(rng, 20000, 1)
    with open(os.path.join(root, "notes.sql"), "wb") as handle:
        handle.write(b"COPY public.notes (id, created_at, body, embedding) FROM stdin;\n")
        left, start = dump_bytes, 1
        while left > 0:
            # the same rows with new ids: text that compresses like a real dump, made quickly
            chunk = rows.replace(b"\t2026", b"\t%d\t2026" % start, 1)
            handle.write(chunk[:left])
            left -= min(len(chunk), left)
            start += 20000
        handle.write(b"\\.\n")
    written += dump_bytes
    small_total = max(0, total_bytes - written)
    small = os.path.join(root, "uploads")
    per_file = max(1, small_total // max(1, small_files))
    for index in range(small_files):
        directory = os.path.join(small, f"d{index // 500:03d}")
        os.makedirs(directory, exist_ok=True)
        size = max(64, int(per_file * rng.uniform(0.2, 1.8)))
        data = os.urandom(size) if index % 2 else (block[index * 37 % 100000:] * 2)[:size]
        with open(os.path.join(directory, f"f{index:05d}.dat"), "wb") as handle:
            handle.write(data)
        written += len(data)
    return written
