# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where archive streams go and come back from (private to the collection).

A *sink* takes an uncompressed stream through ``write()`` and stores it: as a
compressed file in the set directory (local backend; ``zstd -T0`` when installed,
``gzip`` otherwise) or as a restic snapshot (restic compresses, deduplicates and
encrypts). ``close()`` returns what the manifest records: bytes stored, sha256 of
what was stored, and the restic snapshot id. A *source* gives the stream back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._archive import CHUNK, HashingReader
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import Restic, ResticError, finish_backup

SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class StorageError(Exception):
    """A stream that could not be stored or read back; the message is for the operator."""


class NoSpace(StorageError):
    """The backup target filled up."""


def pick_compression(requested: str) -> str:
    if requested == "auto":
        return "zstd" if shutil.which("zstd") else "gzip"
    if requested != "none" and not shutil.which(requested):
        raise StorageError(f"compression {requested} was asked for but the {requested} command is not installed")
    return requested


def compressor_argv(compression: str, level: int | None) -> list[str]:
    if compression == "zstd":
        # --no-check: zstd's own content checksum would repeat what the manifest holds (a sha256 per
        # file and per archive) at a cost the backup benchmark shows.
        return ["zstd", "-q", "-c", "-T0", "--no-check", "-%d" % (level or 1)]
    if compression == "gzip":
        return ["gzip", "-c", "-%d" % (level or 1)]
    raise StorageError(f"unknown compression {compression}")


def decompressor_argv(compression: str, path: str) -> list[str]:
    if compression == "zstd":
        return ["zstd", "-q", "-d", "-c", path]
    if compression == "gzip":
        return ["gzip", "-d", "-c", path]
    raise StorageError(f"unknown compression {compression}")


class LocalSink:
    """A compressed archive file (0600) in the set directory.

    The compressor writes the file itself (no copy through Python); the file's sha256
    is taken right after, from the page cache. Measured faster than hashing the
    compressor's output through a pipe on the way to the file.
    """

    def __init__(self, path: str, compression: str, level: int | None = None) -> None:
        self.path = path
        self.compression = compression
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._proc: subprocess.Popen | None = None
        self._direct: t.Any = None
        self._follower: threading.Thread | None = None
        if compression == "none":
            self._direct = os.fdopen(os.dup(self._fd), "wb", buffering=0)
            self.write = self._write_direct  # type: ignore[method-assign]
        else:
            self._proc = subprocess.Popen(compressor_argv(compression, level), stdin=subprocess.PIPE,
                                          stdout=self._fd, stderr=subprocess.PIPE, bufsize=0)
            widen_pipe(self._proc.stdin.fileno())
            self._hasher = hashlib.sha256()
            self._done = threading.Event()
            self._follower = threading.Thread(target=self._follow, daemon=True)
            self._follower.start()

    def _follow(self) -> None:
        """Hash the archive while the compressor writes it (the work overlaps instead of following)."""
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with open(self.path, "rb", buffering=0) as handle:
            while True:
                finished = self._done.is_set()
                count = handle.readinto(buffer)
                if count:
                    self._hasher.update(view[:count])
                elif finished:
                    return
                else:
                    self._done.wait(0.005)

    def _write_direct(self, data: t.Any) -> None:
        try:
            self._direct.write(data)
        except OSError as exc:
            raise self._failure(exc) from exc

    def write(self, data: t.Any) -> None:
        try:
            view = memoryview(data)
            fd = self._proc.stdin.fileno()
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:  # the compressor died: usually the target is full
            raise self._failure(exc) from exc

    def _failure(self, exc: BaseException | None = None) -> StorageError:
        stderr = b""
        if self._proc is not None:
            with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                self._proc.wait(timeout=30)
                stderr = self._proc.stderr.read()
        text = stderr.decode(errors="replace").strip()
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "space left" in text.lower():
            return NoSpace(f"the backup target is full while writing {self.path}; free space and run again")
        return StorageError(f"{self.compression} failed while writing {self.path}: {text or exc or 'no output'}")

    def close(self) -> dict[str, t.Any]:
        try:
            if self._proc is not None:
                with contextlib.suppress(BrokenPipeError):
                    self._proc.stdin.close()
                self._proc.wait()
                if self._proc.returncode != 0:
                    raise self._failure()
            else:
                self._direct.close()
            os.fsync(self._fd)
        except OSError as exc:
            raise self._failure(exc) from exc
        finally:
            self._stop_follower()
            os.close(self._fd)
            self._fd = -1
        digest = "sha256:" + self._hasher.hexdigest() if self._follower is not None else sha256_file(self.path)
        return {"archive": os.path.basename(self.path), "compression": self.compression,
                "bytes": os.path.getsize(self.path), "sha256": digest}

    def _stop_follower(self) -> None:
        if self._follower is not None and self._follower.is_alive():
            self._done.set()
            self._follower.join()

    def abort(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(OSError, ValueError):
                self._proc.wait()
            self._stop_follower()
        if self._direct is not None:
            with contextlib.suppress(OSError):
                self._direct.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.path)


F_SETPIPE_SZ = 1031


def widen_pipe(fd: int) -> None:
    """A larger pipe buffer means fewer context switches between us and the compressor (measured)."""
    for size in (1024 * 1024, 256 * 1024):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            return
        except OSError:
            continue


def sha256_file(path: str) -> str:
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            hasher.update(view[:count])
    return "sha256:" + hasher.hexdigest()


class ResticSink:
    """One ``restic backup --stdin`` snapshot per item; the stream is hashed as it passes."""

    def __init__(self, restic: Restic, filename: str, tags: list[str]) -> None:
        self.filename = filename
        self.hasher = hashlib.sha256()
        self.count = 0
        self._proc = restic.backup_stdin(filename, tags)

    def write(self, data: t.Any) -> None:
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError as exc:
            err = b""
            with contextlib.suppress(OSError, ValueError):
                self._proc.wait(timeout=10)
                err = self._proc.stderr.read()
            raise StorageError(f"restic stopped reading {self.filename} (exit {self._proc.returncode}): "
                               f"{err.decode(errors='replace').strip()[-300:] or 'no output'}") from exc
        self.hasher.update(data)
        self.count += len(data)

    def close(self) -> dict[str, t.Any]:
        try:
            snapshot = finish_backup(self._proc, f"storing {self.filename} in restic")
        except ResticError as exc:
            raise StorageError(str(exc)) from exc
        return {"archive": self.filename, "compression": "restic", "bytes": self.count,
                "sha256": "sha256:" + self.hasher.hexdigest(), "snapshot": snapshot}

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self._proc.communicate(timeout=10)


class ArchiveSource:
    """The uncompressed stream of one stored item; ``finish()`` says whether the stored bytes matched."""

    def __init__(self, set_dir: str, item: dict[str, t.Any], restic: Restic | None = None) -> None:
        self.item = item
        self.digest: str | None = None
        self._thread: threading.Thread | None = None
        self._reader: HashingReader | None = None
        if item.get("snapshot"):
            if restic is None:
                raise StorageError(f"item {item['name']} is stored in restic; give the restic repository and password")
            self._proc = restic.dump(item["snapshot"], item["archive"])
            self._reader = HashingReader(self._proc.stdout)
            self.stream: t.Any = self._reader
            return
        path = os.path.join(set_dir, item["archive"])
        if not os.path.isfile(path):
            raise StorageError(f"archive {item['archive']} of item {item['name']} is missing from {set_dir}")
        if item.get("compression", "none") == "none":
            self._proc = None
            self._reader = HashingReader(open(path, "rb"))
            self.stream = self._reader
            return
        self._proc = subprocess.Popen(decompressor_argv(item["compression"], path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stream = self._proc.stdout
        self._thread = threading.Thread(target=self._hash_file, args=(path,), daemon=True)
        self._thread.start()

    def _hash_file(self, path: str) -> None:
        self.digest = sha256_file(path)

    def finish(self) -> list[str]:
        """Drain and close; return problems (checksum mismatch, decompressor or restic errors)."""
        problems = []
        if self._reader is not None:
            with contextlib.suppress(OSError, ValueError):
                self._reader.drain()
            self.digest = self._reader.digest()
        else:
            with contextlib.suppress(OSError, ValueError):
                while self.stream.read(CHUNK):
                    pass
        if self._proc is not None:
            stderr = b""
            with contextlib.suppress(OSError, ValueError):
                stderr = self._proc.stderr.read()
            self._proc.wait()
            if self._proc.returncode != 0:
                problems.append(f"reading the archive failed (exit {self._proc.returncode}): "
                                f"{stderr.decode(errors='replace').strip()[-300:] or 'no output'}")
        if self._thread is not None:
            self._thread.join()
        if self._reader is not None and self._proc is None:
            self._reader.raw.close()
        if self.digest != self.item.get("sha256"):
            problems.insert(0, f"archive checksum mismatch: stored {self.digest}, manifest says {self.item.get('sha256')}")
        return problems

    def abort(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(OSError, ValueError):
                self._proc.wait()
        if self._thread is not None:
            self._thread.join()
