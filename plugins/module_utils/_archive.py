# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-data archives of backup sets (private to the collection).

One pass over a directory writes a POSIX (pax) tar stream and records, for every
member, its type, mode, owner, size and sha256: the manifest's ``files`` map. Sparse
files are written in the GNU 1.0 sparse layout (holes stay holes), hard links as
links, symlinks as links. Reading goes the other way: verify a stream against the
manifest, or extract it under rules that keep every member inside the target.

Only the standard library is used, so these functions are unit-testable and the
benchmark calls the same code the modules run.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
import typing as t

BLOCK = 512
CHUNK = 1024 * 1024
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # names that are not UTF-8 round-trip byte for byte
SPARSE_PLACEHOLDER = "GNUSparseFile.0/sparse"

TYPE_FILE = "file"
TYPE_DIR = "dir"
TYPE_SYMLINK = "symlink"
TYPE_HARDLINK = "hardlink"
TYPE_FIFO = "fifo"


class ArchiveError(Exception):
    """An archive that cannot be written or read; the message is for the operator."""


class UnsafeMember(ArchiveError):
    """A member that would land outside the target, or a device file."""


def _digest(hasher: t.Any) -> str:
    return "sha256:" + hasher.hexdigest()


def mode_string(mode: int) -> str:
    return "%04o" % stat.S_IMODE(mode)


# --------------------------------------------------------------------------- rules


def normalize_member_name(name: str) -> str:
    """The member name as a clean relative path ("." for the root); refuse what escapes."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeMember(f"member {name!r} has an absolute path")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeMember(f"member {name!r} contains '..'")
        parts.append(part)
    return "/".join(parts) or "."


def link_target_inside(member_name: str, target: str) -> bool:
    """Whether a symlink at ``member_name`` pointing to ``target`` stays inside the root."""
    if not target or target.startswith("/"):
        return False
    base = posixpath.dirname(member_name) if member_name != "." else ""
    depth = 0
    for part in posixpath.join(base, target).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        else:
            depth += 1
    return True


def check_member(member: tarfile.TarInfo, symlinks: set[str], regular: set[str]) -> str:
    """Check one member against the extraction rules; return its normalized name.

    ``symlinks`` and ``regular`` are the names seen so far in the archive: no member may
    be written through a symlink, and a hard link must point to a file already extracted.
    """
    name = normalize_member_name(member.name)
    parts = name.split("/")
    for depth in range(1, len(parts)):
        if "/".join(parts[:depth]) in symlinks:
            raise UnsafeMember(f"member {name!r} would be written through the symlink {'/'.join(parts[:depth])!r}")
    if member.ischr() or member.isblk():
        raise UnsafeMember(f"member {name!r} is a device file")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()):
        raise UnsafeMember(f"member {name!r} has an unsupported type {member.type!r}")
    if member.issym():
        if not link_target_inside(name, member.linkname):
            raise UnsafeMember(f"symlink {name!r} points outside the target ({member.linkname!r})")
    if member.islnk():
        target = normalize_member_name(member.linkname)
        if target not in regular:
            raise UnsafeMember(f"hard link {name!r} points to {member.linkname!r}, which is not a file extracted before it")
    if name == "." and not member.isdir():
        raise UnsafeMember("the archive root is not a directory")
    return name


# --------------------------------------------------------------------------- writing


def _data_segments(fd: int, size: int) -> list[tuple[int, int]] | None:
    """Data extents of a sparse file via SEEK_DATA/SEEK_HOLE, or None when not supported."""
    if not hasattr(os, "SEEK_DATA"):
        return None
    segments = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end > start:
                segments.append((start, end - start))
            offset = end
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return segments


class TreeWriter:
    """Write a directory as a tar stream to ``out`` and build its ``files`` map in the same pass."""

    def __init__(self, out: t.Any, buffer_size: int = CHUNK) -> None:
        self.out = out
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)
        self.zeros = bytes(buffer_size)
        self.files: dict[str, dict[str, t.Any]] = {}
        self.skipped: list[dict[str, str]] = []
        self.raw_bytes = 0
        self.written = 0

    def _emit(self, data: t.Any) -> None:
        self.out.write(data)
        self.written += len(data)

    def _header(self, info: tarfile.TarInfo) -> None:
        self._emit(info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS))

    def _pad(self, size: int) -> None:
        remainder = size % BLOCK
        if remainder:
            self._emit(self.zeros[:BLOCK - remainder])

    def write_tree(self, root: str) -> dict[str, dict[str, t.Any]]:
        if not os.path.isdir(root):
            raise ArchiveError(f"{root} is not a directory")
        hardlinks: dict[tuple[int, int], str] = {}
        self._entry(root, ".", os.lstat(root), hardlinks)
        stack = [(root, "")]
        while stack:
            directory, prefix = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                raise ArchiveError(f"cannot list {directory}: {exc.strerror}") from exc
            subdirs = []
            for entry in entries:
                relpath = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                self._entry(entry.path, relpath, st, hardlinks)
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((entry.path, relpath + "/"))
            stack.extend(reversed(subdirs))
        self._emit(bytes(2 * BLOCK))
        return self.files

    def _entry(self, path: str, relpath: str, st: os.stat_result, hardlinks: dict[tuple[int, int], str]) -> None:
        info = tarfile.TarInfo(relpath)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        record: dict[str, t.Any] = {"mode": mode_string(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            info.type = tarfile.DIRTYPE
            record["type"] = TYPE_DIR
            self._header(info)
        elif fmt == stat.S_IFLNK:
            target = os.readlink(path)
            if not link_target_inside(relpath, target):
                raise ArchiveError(
                    f"symlink {path} points outside the captured directory ({target!r}); a restore would refuse it, "
                    "so make it relative and inside, or exclude this source"
                )
            info.type = tarfile.SYMTYPE
            info.linkname = target
            record.update(type=TYPE_SYMLINK, link=target)
            self._header(info)
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in hardlinks:
                info.type = tarfile.LNKTYPE
                info.linkname = hardlinks[key]
                record.update(type=TYPE_HARDLINK, link=hardlinks[key])
                self._header(info)
            else:
                if st.st_nlink > 1:
                    hardlinks[key] = relpath
                record.update(type=TYPE_FILE)
                self._file(path, relpath, st, info, record)
        elif fmt == stat.S_IFIFO:
            info.type = tarfile.FIFOTYPE
            record["type"] = TYPE_FIFO
            self._header(info)
        else:
            self.skipped.append({"path": relpath, "reason": "sockets and device files are not captured"})
            return
        self.files[relpath] = record

    def _file(self, path: str, relpath: str, st: os.stat_result, info: tarfile.TarInfo, record: dict[str, t.Any]) -> None:
        size = st.st_size
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            segments = None
            if size > BLOCK and st.st_blocks * 512 < size:
                segments = _data_segments(fd, size)
            hasher = hashlib.sha256()
            if segments is not None:
                record["sparse"] = True
                self._sparse(fd, relpath, size, segments, info, hasher)
            else:
                info.type = tarfile.REGTYPE
                info.size = size
                self._header(info)
                self._copy(fd, path, size, hasher)
                self._pad(size)
        finally:
            os.close(fd)
        record["size"] = size
        record["sha256"] = _digest(hasher)
        self.raw_bytes += size

    def _copy(self, fd: int, path: str, size: int, hasher: t.Any) -> None:
        remaining = size
        view, out = self.view, self.out
        while remaining > 0:
            count = os.readv(fd, [view[:min(remaining, len(view))]])
            if count == 0:  # the file shrank while being read: keep the stream well-formed
                self.skipped.append({"path": path, "reason": "file shrank while being read; padded with zeros"})
                while remaining > 0:
                    piece = self.zeros[:min(remaining, len(self.zeros))]
                    hasher.update(piece)
                    out.write(piece)
                    remaining -= len(piece)
                break
            chunk = view[:count]
            hasher.update(chunk)
            out.write(chunk)
            remaining -= count
        self.written += size

    def _sparse(self, fd: int, relpath: str, size: int, segments: list[tuple[int, int]],
                info: tarfile.TarInfo, hasher: t.Any) -> None:
        sparse_map = ("%d\n" % len(segments) + "".join("%d\n%d\n" % seg for seg in segments)).encode()
        sparse_map += bytes(-len(sparse_map) % BLOCK)
        data_size = sum(length for _offset, length in segments)
        info.name = SPARSE_PLACEHOLDER
        info.type = tarfile.REGTYPE
        info.size = len(sparse_map) + data_size
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": relpath, "GNU.sparse.realsize": str(size)}
        self._header(info)
        self._emit(sparse_map)
        position = 0
        for offset, length in segments:
            self._hash_zeros(hasher, offset - position)
            os.lseek(fd, offset, os.SEEK_SET)
            self._copy(fd, relpath, length, hasher)
            position = offset + length
        self._hash_zeros(hasher, size - position)
        self._pad(data_size)

    def _hash_zeros(self, hasher: t.Any, count: int) -> None:
        while count > 0:
            piece = min(count, len(self.zeros))
            hasher.update(self.zeros[:piece])
            count -= piece


def write_tree(root: str, out: t.Any) -> TreeWriter:
    writer = TreeWriter(out)
    writer.write_tree(root)
    return writer


def tree_size(root: str) -> int:
    """Bytes the files under ``root`` occupy (a free-space estimate)."""
    total = 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            total += min(st.st_size, st.st_blocks * 512) if stat.S_ISREG(st.st_mode) else 0
    return total


# --------------------------------------------------------------------------- reading


class HashingReader:
    """A read-only file object that hashes everything read through it."""

    def __init__(self, raw: t.Any) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return _digest(self.hasher)


def _open_stream(stream: t.Any) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK, encoding=ENCODING, errors=ERRORS,
                        copybufsize=CHUNK)


def describe_member(member: tarfile.TarInfo, name: str) -> dict[str, t.Any]:
    record: dict[str, t.Any] = {"mode": mode_string(member.mode), "uid": member.uid, "gid": member.gid}
    if member.isdir():
        record["type"] = TYPE_DIR
    elif member.issym():
        record.update(type=TYPE_SYMLINK, link=member.linkname)
    elif member.islnk():
        record.update(type=TYPE_HARDLINK, link=normalize_member_name(member.linkname))
    elif member.isfifo():
        record["type"] = TYPE_FIFO
    elif member.isreg():
        record.update(type=TYPE_FILE, size=member.size)
        if member.sparse is not None:
            record["sparse"] = True
    else:
        record["type"] = "other"
    return record


COMPARED_KEYS = ("type", "mode", "uid", "gid", "size", "sha256", "link")


def compare_record(name: str, expected: dict[str, t.Any] | None, found: dict[str, t.Any]) -> list[str]:
    if expected is None:
        return [f"{name!r}: not in the manifest"]
    problems = []
    for key in COMPARED_KEYS:
        if expected.get(key) != found.get(key):
            problems.append(f"{name!r}: {key} is {found.get(key)!r}, manifest says {expected.get(key)!r}")
    return problems


def verify_stream(stream: t.Any, files: dict[str, dict[str, t.Any]], limit: int = 20) -> list[str]:
    """Read a tar stream and compare every member (and every file's sha256) with ``files``."""
    problems: list[str] = []
    seen: set[str] = set()
    try:
        with _open_stream(stream) as archive:
            for member in archive:
                name = normalize_member_name(member.name)
                seen.add(name)
                found = describe_member(member, name)
                if member.isreg():
                    source = archive.extractfile(member)
                    hasher = hashlib.sha256()
                    if source is not None:
                        for block in iter(lambda: source.read(CHUNK), b""):
                            hasher.update(block)
                    found["sha256"] = _digest(hasher)
                problems.extend(compare_record(name, files.get(name), found))
                if len(problems) >= limit:
                    return problems
    except (tarfile.TarError, EOFError, OSError, UnsafeMember) as exc:
        problems.append(f"the archive cannot be read: {exc}")
        return problems
    missing = sorted(set(files) - seen)
    problems.extend(f"{name!r}: in the manifest but not in the archive" for name in missing[:limit])
    return problems


def check_stream(stream: t.Any) -> int:
    """Apply the extraction rules to every member of a tar stream without writing anything."""
    symlinks: set[str] = set()
    regular: set[str] = set()
    count = 0
    try:
        with _open_stream(stream) as archive:
            for member in archive:
                name = check_member(member, symlinks, regular)
                if member.issym():
                    symlinks.add(name)
                elif member.isreg():
                    regular.add(name)
                count += 1
    except UnsafeMember:
        raise
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"the archive cannot be read: {exc}") from exc
    return count


def extract_stream(stream: t.Any, dest: str) -> int:
    """Extract a tar stream into ``dest`` (which should be empty) under the safety rules.

    Every member is checked before anything is written: relative names without '..',
    no writing through symlinks, symlinks and hard links that stay inside, no device
    files. Owners are restored numerically; directory modes and times are set last.
    """
    dest_real = os.path.realpath(dest)
    symlinks: set[str] = set()
    regular: set[str] = set()
    directories: list[tuple[tarfile.TarInfo, str]] = []
    count = 0
    extra: dict[str, t.Any] = {}
    if hasattr(tarfile, "fully_trusted_filter"):
        extra["filter"] = "fully_trusted"  # our own checks above are stricter where it matters
    try:
        with _open_stream(stream) as archive:
            for member in archive:
                name = check_member(member, symlinks, regular)
                target = os.path.join(dest_real, name) if name != "." else dest_real
                parent = os.path.realpath(os.path.dirname(target)) if name != "." else dest_real
                if parent != dest_real and not parent.startswith(dest_real + os.sep):
                    raise UnsafeMember(f"member {name!r} would be written outside {dest}")
                member.name = name
                if member.islnk():
                    member.linkname = normalize_member_name(member.linkname)
                if member.isdir():
                    os.makedirs(target, exist_ok=True)
                    directories.append((member, target))
                else:
                    if os.path.lexists(target) and not os.path.isdir(target):
                        os.unlink(target)
                    archive.extract(member, dest_real, set_attrs=True, numeric_owner=True, **extra)
                if member.issym():
                    symlinks.add(name)
                elif member.isreg():
                    regular.add(name)
                count += 1
            for member, target in reversed(directories):
                archive.chown(member, target, True)
                archive.chmod(member, target)
                archive.utime(member, target)
    except UnsafeMember:
        raise
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"the archive cannot be read: {exc}") from exc
    return count


def scan_tree(root: str) -> dict[str, dict[str, t.Any]]:
    """A ``files`` map of a directory on disk (used to compare a test restore with the manifest)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    files: dict[str, dict[str, t.Any]] = {}
    inodes: dict[tuple[int, int], str] = {}
    pending = [(root, ".")]
    while pending:
        path, relpath = pending.pop()
        st = os.lstat(path)
        record: dict[str, t.Any] = {"mode": mode_string(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            record["type"] = TYPE_DIR
            for entry in sorted(os.listdir(path), reverse=True):
                pending.append((os.path.join(path, entry), entry if relpath == "." else relpath + "/" + entry))
        elif fmt == stat.S_IFLNK:
            record.update(type=TYPE_SYMLINK, link=os.readlink(path))
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in inodes:
                record.update(type=TYPE_HARDLINK, link=inodes[key])
            else:
                if st.st_nlink > 1:
                    inodes[key] = relpath
                hasher = hashlib.sha256()
                with open(path, "rb", buffering=0) as handle:
                    while True:
                        count = handle.readinto(buffer)
                        if not count:
                            break
                        hasher.update(view[:count])
                record.update(type=TYPE_FILE, size=st.st_size, sha256=_digest(hasher))
        elif fmt == stat.S_IFIFO:
            record["type"] = TYPE_FIFO
        else:
            record["type"] = "other"
        files[relpath] = record
    return files


def changes_since(expected: dict[str, dict[str, t.Any]], root: str, since: float, limit: int = 5) -> dict[str, t.Any]:
    """What differs in ``root`` from a set's ``files`` map, by a walk (no reading): entries added and removed since,
    and regular files whose size differs or that were modified after ``since`` (epoch seconds)."""
    added: list[str] = []
    changed: list[str] = []
    seen = set()
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            seen.add(rel)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            record = expected.get(rel)
            if record is None:
                added.append(rel)
            elif stat.S_ISREG(st.st_mode):
                resized = record.get("type") == TYPE_FILE and record.get("size") != st.st_size
                if resized or st.st_mtime > since:
                    changed.append(rel)
    removed = [rel for rel in expected if rel != "." and rel not in seen]
    return {"added": len(added), "changed": len(changed), "removed": len(removed),
            "examples": sorted(added + changed + removed)[:limit]}


def compare_trees(expected: dict[str, dict[str, t.Any]], found: dict[str, dict[str, t.Any]], limit: int = 20) -> list[str]:
    problems: list[str] = []
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            problems.append(f"{name!r}: in the manifest but missing after extraction")
        else:
            problems.extend(compare_record(name, expected.get(name), found[name]))
        if len(problems) >= limit:
            break
    return problems


def empty_directory(path: str) -> None:
    """Remove everything inside ``path`` (not ``path`` itself), without following symlinks."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _rmtree(path: str) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmtree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)
