# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Content digests: SHA-256 of bytes and files, canonical JSON, salted fingerprints (private to the collection).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import typing as t


CHUNK = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def canonical_json(data: t.Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def salted_hash(value: str, salt: bytes) -> str:
    """Fingerprint of a secret-bearing value: comparable between releases, not reversible."""
    return "hmac-sha256:" + hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:32]
