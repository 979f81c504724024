# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors an operator can act on (private to the collection).

An :class:`OperatorError` is one sentence that says what failed, on which app, and what to
do next; the module skeleton reports it as the task's message.
"""

from __future__ import annotations

import typing as t


class OperatorError(Exception):
    """A failure with a message an operator can act on."""

    def __init__(self, message: str, **details: t.Any) -> None:
        super().__init__(message)
        self.details = details


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"
