# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-app ledger: versioned JSON records and archives on the managed host.

Layout under ``<store>/<app>/``::

    lock                 flock(2) target; holds the owner's pid for error messages
    releases/<id>.json   release records
    backups/<set>/       backup sets (manifest.json written last)
    images/              image archives of retained releases
    notes/ drills/       migration notes, drill records
    journal.json         the operation in progress, if any

Every file is written atomically (temporary file, fsync, rename, fsync of the
directory) with mode 0600 in 0700 directories, whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import typing as t

RECORD_FORMAT = 1
DIR_MODE = 0o700
FILE_MODE = 0o600


class LedgerError(Exception):
    """A ledger problem; the message is for the operator."""


class LockTimeout(LedgerError):
    """Another run holds the app's lock."""


def ensure_dir(path: str) -> str:
    """Create ``path`` and missing parents as 0700 directories; tighten ``path`` if it exists."""
    missing = []
    current = path.rstrip("/") or "/"
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIR_MODE)
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
    if os.stat(path).st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` (``mode``) so that readers see the old or the new file, never a part;
    the directory must exist and keeps its own mode."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600, in a 0700 directory made when missing), never seen half-written."""
    ensure_dir(os.path.dirname(path))
    try:
        replace_file(path, data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise LedgerError(f"no space left to write {path}; free space on that file system and run again") from exc
        raise


def atomic_write_json(path: str, record: t.Any) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> t.Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"ledger file {path} is not valid JSON ({exc}); restore it from a copy or remove it") from exc


class Ledger:
    """The ledger of one app."""

    def __init__(self, store: str, app_name: str) -> None:
        self.store = store
        self.app = app_name
        self.root = os.path.join(store, app_name)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def ensure(self, *parts: str) -> str:
        ensure_dir(self.store)
        return ensure_dir(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return os.path.exists(self.path(*parts))

    def write(self, relpath: str, record: t.Any) -> str:
        path = self.path(relpath)
        self.ensure(os.path.dirname(relpath))
        atomic_write_json(path, record)
        return path

    def read(self, relpath: str, default: t.Any = None) -> t.Any:
        path = self.path(relpath)
        if not os.path.exists(path):
            return default
        return read_json(path)

    def list(self, subdir: str, suffix: str = ".json") -> list[str]:
        directory = self.path(subdir)
        if not os.path.isdir(directory):
            return []
        return sorted(name for name in os.listdir(directory) if name.endswith(suffix) and not name.startswith("."))

    @contextlib.contextmanager
    def lock(self, timeout: float = 0.0, purpose: str = "") -> t.Iterator[None]:
        """Hold the app's exclusive lock.

        flock(2) locks vanish with their owner, so a killed run never leaves a lock that
        blocks the next one; the pid written inside is only for the error message.
        """
        self.ensure()
        path = self.path("lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        held = False
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        owner = _read_owner(fd)
                        raise LockTimeout(
                            f"app {self.app} is busy: another run ({owner}) holds {path}; "
                            "wait for it to finish, or raise lock_timeout"
                        ) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                                      "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
            yield
        finally:
            if held:  # a run that never got the lock must not wipe the owner's details
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "owner unknown"
    if not owner:
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}, {owner.get('purpose') or 'run'} since {owner.get('since')}"
