# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secret-looking values: which env entries hold one, and scrubbing them from results (private to the collection).
"""

from __future__ import annotations

import re
import typing as t


SECRET_MARKERS = ("PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE")


CREDENTIALS_IN_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s]+@", re.IGNORECASE)


def is_secret(key: str, value: str) -> bool:
    """Whether an env entry holds a secret: by its name, or a URL that carries credentials."""
    return any(m in key.upper() for m in SECRET_MARKERS) or bool(CREDENTIALS_IN_URL.search(value or ""))


def scrub(data: t.Any, secrets: list[str]) -> t.Any:
    """Replace every occurrence of a secret value in strings inside ``data``."""
    if not secrets:
        return data
    if isinstance(data, str):
        for secret in secrets:
            data = data.replace(secret, "********")
        return data
    if isinstance(data, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [scrub(v, secrets) for v in data]
    return data
