# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where archive streams go and come back from (private to the collection).

A *sink* takes an uncompressed stream through ``write()`` and stores it: as a
compressed file in the set directory (local backend; ``zstd -T0`` when installed,
``gzip`` otherwise) or as a restic snapshot (restic compresses, deduplicates and
encrypts). ``close()`` returns what the manifest records: bytes stored, how the
stored bytes are checked, and the restic snapshot id. A *source* gives the stream back.

The archive's own integrity is checked where it costs least: zstd's frame checksum
(XXH64 of the content, checked by every decompression), gzip's CRC-32, a sha256 of
the stream for uncompressed archives and restic items. Content integrity is the
per-file sha256 in the manifest, which a deep verification checks file by file.
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

from ansible_collections.selfhost.rollback.plugins.module_utils._tree import CHUNK, digest_text
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


# what the manifest's ``checksum`` says guards the stored bytes of a local archive
CHECKSUM = {"zstd": "zstd-xxh64", "gzip": "gzip-crc32", "none": "sha256"}


def compressor_argv(compression: str, level: int | None) -> list[str]:
    if compression == "zstd":
        # the frame carries zstd's content checksum (its default): every decompression checks it
        return ["zstd", "-q", "-c", "-T0", "--check", "-%d" % (level or 1)]
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

    The compressor writes the file itself (no copy through Python). A flusher thread writes
    the file's pages to disk while the compressor still works, so the final fsync, which makes
    the set durable before its manifest is written, has little left to do.
    """

    FLUSH_EVERY = 64 * 1024 * 1024

    def __init__(self, path: str, compression: str, level: int | None = None) -> None:
        self.path = path
        self.compression = compression
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._proc: subprocess.Popen | None = None
        self._direct: t.Any = None
        self._flusher: threading.Thread | None = None
        if compression == "none":
            self._direct = os.fdopen(os.dup(self._fd), "wb", buffering=0)
            self._hasher = hashlib.sha256()
            self.write = self._write_direct  # type: ignore[method-assign]
        else:
            self._proc = subprocess.Popen(compressor_argv(compression, level), stdin=subprocess.PIPE,
                                          stdout=self._fd, stderr=subprocess.PIPE, bufsize=0)
            widen_pipe(self._proc.stdin.fileno())
            self._done = threading.Event()
            self._flusher = threading.Thread(target=self._flush, daemon=True)
            self._flusher.start()

    def _flush(self) -> None:
        """Start writeback of what the compressor wrote so far, every FLUSH_EVERY bytes."""
        flushed = 0
        while not self._done.wait(0.05):
            with contextlib.suppress(OSError):
                size = os.fstat(self._fd).st_size
                if size - flushed >= self.FLUSH_EVERY:
                    os.fdatasync(self._fd)
                    flushed = size

    def _write_direct(self, data: t.Any) -> None:
        try:
            self._direct.write(data)
        except OSError as exc:
            raise self._failure(exc) from exc
        self._hasher.update(data)

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
            self._stop_flusher()
            os.fsync(self._fd)
        except OSError as exc:
            raise self._failure(exc) from exc
        finally:
            self._stop_flusher()
            os.close(self._fd)
            self._fd = -1
        stored = {"archive": os.path.basename(self.path), "compression": self.compression,
                  "bytes": os.path.getsize(self.path), "checksum": CHECKSUM[self.compression]}
        if self.compression == "none":
            stored["sha256"] = "sha256:" + self._hasher.hexdigest()
        return stored

    def _stop_flusher(self) -> None:
        if self._flusher is not None and self._flusher.is_alive():
            self._done.set()
            self._flusher.join()

    def abort(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(OSError, ValueError):
                self._proc.wait()
            self._stop_flusher()
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


class HashingReader:
    """A read-only file object that hashes everything read through it."""

    def __init__(self, raw: t.Any) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return digest_text(self.hasher)


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
        widen_pipe(self._proc.stdout.fileno())
        self.stream = self._proc.stdout
        if item.get("sha256"):  # sets written before the compressor's own checksum was relied on
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
        if self.item.get("sha256") and self.digest != self.item.get("sha256"):
            problems.insert(0, f"archive checksum mismatch: stored {self.digest}, manifest says {self.item.get('sha256')}")
        elif problems and self._thread is None and self._reader is None:
            # zstd and gzip check their own checksum: a damaged archive fails to decompress
            problems[0] = f"archive checksum mismatch ({self.item.get('checksum') or self.item.get('compression')}): {problems[0]}"
        return problems

    def abort(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(OSError, ValueError):
                self._proc.wait()
        if self._thread is not None:
            self._thread.join()
