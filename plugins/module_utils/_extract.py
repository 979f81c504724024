# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extracting an archive stream under a directory (private to the collection).

Every member is checked against the extraction rules (``_archive.check_member``) before it is
written; everything is written through directory file descriptors (``O_NOFOLLOW``, files
``O_EXCL``), so nothing is followed and nothing lands outside the target. Owners, xattrs,
ACLs, file capabilities, modes and nanosecond mtimes are put back in an order that keeps each
of them; what the target filesystem refuses is listed, never dropped silently.
"""

from __future__ import annotations

import errno
import os
import stat
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._archive import (
    Member,
    TarReader,
    UnsafeMember,
    check_member,
    member_mtime_ns,
    normalize_member_name,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._tree import DIR_FLAGS, PAX_ACL, record_xattrs, remove_at


class Extracted(t.NamedTuple):
    """What an extraction wrote: the member count, and what the target filesystem could not hold."""

    count: int
    not_restored: list[dict[str, str]]  # {path, what, reason}, at most NOT_RESTORED_LIMIT of them
    not_restored_total: int


NOT_RESTORED_LIMIT = 20


class _Extractor:
    """Writes members under a directory through directory fds: nothing is followed, nothing escapes."""

    def __init__(self, dest: str) -> None:
        self.dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.chain: list[tuple[str, int]] = []  # the open directories of the last member's parent
        self.directories: list[tuple[str, Member]] = []
        self.not_restored: list[dict[str, str]] = []
        self.not_restored_total = 0

    def close(self) -> None:
        for _name, fd in self.chain:
            os.close(fd)
        self.chain = []
        os.close(self.dest_fd)

    def _note(self, name: str, what: str, exc: Exception) -> None:
        self.not_restored_total += 1
        if len(self.not_restored) < NOT_RESTORED_LIMIT:
            self.not_restored.append({"path": name, "what": what, "reason": getattr(exc, "strerror", None) or str(exc)})

    def _open_child(self, fd: int, part: str, create: bool) -> int:
        try:
            return os.open(part, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(part, 0o700, dir_fd=fd)
            return os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeMember(f"{part!r} in the target is not a directory; nothing is written through a link") from exc
            raise

    def parent(self, parts: list[str]) -> int:
        """The fd of the directory ``parts`` (relative to the target), reusing what the last member opened."""
        keep = 0
        while keep < len(self.chain) and keep < len(parts) and self.chain[keep][0] == parts[keep]:
            keep += 1
        for _name, fd in self.chain[keep:]:
            os.close(fd)
        del self.chain[keep:]
        fd = self.chain[-1][1] if self.chain else self.dest_fd
        for part in parts[keep:]:
            fd = self._open_child(fd, part, create=True)
            self.chain.append((part, fd))
        return fd

    def open_directory(self, parts: list[str]) -> int:
        """A new fd of an existing directory (the caller closes it); the chain is left alone."""
        fd = os.dup(self.dest_fd)
        for part in parts:
            child = self._open_child(fd, part, create=False)
            os.close(fd)
            fd = child
        return fd

    def member(self, reader: TarReader, member: Member, name: str) -> None:
        if name == ".":
            self.directories.append((name, member))
            return
        parts = name.split("/")
        fd = self.parent(parts[:-1])
        leaf = parts[-1]
        if member.isdir():
            try:
                os.mkdir(leaf, 0o700, dir_fd=fd)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(leaf, dir_fd=fd).st_mode):
                    os.unlink(leaf, dir_fd=fd)
                    os.mkdir(leaf, 0o700, dir_fd=fd)
            self.directories.append((name, member))
            return
        self._clear(fd, leaf)
        if member.isreg():
            self._file(reader, member, fd, leaf, name)
        elif member.issym():
            os.symlink(member.linkname, leaf, dir_fd=fd)
            self._attributes(member, name, path=(fd, leaf), symlink=True)
        elif member.islnk():
            target = normalize_member_name(member.linkname).split("/")
            source = self.open_directory(target[:-1])
            try:
                os.link(target[-1], leaf, src_dir_fd=source, dst_dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(source)
        elif member.isfifo():
            os.mkfifo(leaf, 0o600, dir_fd=fd)
            self._attributes(member, name, path=(fd, leaf))

    @staticmethod
    def _clear(fd: int, leaf: str) -> None:
        try:
            st = os.lstat(leaf, dir_fd=fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            remove_at(fd, leaf)
        else:
            os.unlink(leaf, dir_fd=fd)

    def _file(self, reader: TarReader, member: Member, parent: int, leaf: str, name: str) -> None:
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            if member.sparse is not None:  # data segments written back at their offsets: holes stay holes
                for offset, length in member.sparse:
                    if length:
                        os.lseek(fd, offset, os.SEEK_SET)
                        _write_all(fd, reader.chunks(length))
                os.ftruncate(fd, member.size)
            else:
                _write_all(fd, reader.chunks(member.stored))
            self._attributes(member, name, fd=fd)
        finally:
            os.close(fd)

    def _attributes(self, member: Member, name: str, fd: int | None = None,
                    path: tuple[int, str] | None = None, symlink: bool = False) -> None:
        """Owner, then xattrs and ACLs (a chown would clear file capabilities), then mode, then times."""
        try:
            if fd is not None:
                os.fchown(fd, member.uid, member.gid)
            else:
                os.chown(path[1], member.uid, member.gid, dir_fd=path[0], follow_symlinks=False)
        except OSError as exc:
            self._note(name, "owner", exc)
        try:
            xattrs = record_xattrs(member.pax_headers)
        except (ValueError, KeyError) as exc:  # an ACL text this host cannot read (a name it does not know)
            self._note(name, "acl", exc)
            xattrs = {}
        for key, value in xattrs.items():
            try:
                if fd is not None:
                    os.setxattr(fd, key, value)
                else:
                    os.setxattr(f"/proc/self/fd/{path[0]}/{path[1]}", key, value, follow_symlinks=False)
            except OSError as exc:
                self._note(name, "acl" if key in PAX_ACL else f"xattr {key}", exc)
        mtime = member_mtime_ns(member)
        if fd is not None:
            os.fchmod(fd, member.mode)
            os.utime(fd, ns=(mtime, mtime))
            return
        if not symlink:
            os.chmod(path[1], member.mode, dir_fd=path[0])
        try:
            os.utime(path[1], ns=(mtime, mtime), dir_fd=path[0], follow_symlinks=False)
        except OSError as exc:
            self._note(name, "mtime", exc)

    def finish(self) -> None:
        """Directories last, deepest first: their modes may forbid writing, their times change as members land."""
        for _name, fd in self.chain:
            os.close(fd)
        self.chain = []
        for name, member in reversed(self.directories):
            fd = os.dup(self.dest_fd) if name == "." else self.open_directory(name.split("/"))
            try:
                self._attributes(member, name, fd=fd)
            finally:
                os.close(fd)


def _write_all(fd: int, chunks: t.Iterable[memoryview]) -> None:
    for chunk in chunks:
        while chunk:
            chunk = chunk[os.write(fd, chunk):]


def extract_stream(stream: t.Any, dest: str) -> Extracted:
    """Extract a tar stream into ``dest`` (which should be empty) under the safety rules.

    Every member is checked before anything is written: relative names without '..',
    no writing through symlinks, hard links to files extracted before, no device files.
    Symlinks are written verbatim and never followed. Owners are restored numerically,
    with xattrs, ACLs, file capabilities, modes and nanosecond mtimes (symlinks' too);
    what the target filesystem refuses is listed in the result, not dropped silently.
    """
    extractor = _Extractor(dest)
    symlinks: set[str] = set()
    regular: set[str] = set()
    count = 0
    try:
        reader = TarReader(stream)
        for member in reader:
            name = check_member(member, symlinks, regular)
            if member.islnk():
                member.linkname = normalize_member_name(member.linkname)
            extractor.member(reader, member, name)
            if member.issym():
                symlinks.add(name)
            elif member.isreg():
                regular.add(name)
            count += 1
        extractor.finish()
    finally:
        extractor.close()
    return Extracted(count, extractor.not_restored, extractor.not_restored_total)


def not_restored_sentence(extracted: Extracted) -> str:
    """What an extraction could not put back, as one sentence for the operator ('' when everything was)."""
    if not extracted.not_restored_total:
        return ""
    kinds = sorted({entry["what"] for entry in extracted.not_restored})
    examples = ", ".join(f"{e['path']} ({e['what']}: {e['reason']})" for e in extracted.not_restored[:3])
    return (f"{extracted.not_restored_total} attribute(s) the target filesystem did not accept "
            f"({', '.join(kinds)}), e.g. {examples}")
