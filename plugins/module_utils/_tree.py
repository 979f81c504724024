# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trees on disk, reached through directory file descriptors (private to the collection).

``walk`` visits every entry under a directory without following a link and without ever
handing the kernel a path longer than one name, so trees deeper than PATH_MAX work. On that
walk: the extended attributes of an entry (POSIX ACLs in the text form tar stores, file
capabilities, user xattrs), a tree's ``files`` map (``scan_tree``, the manifest's form), what
changed since a set (``changes_since``), a fingerprint, its size, and its removal.

Only the standard library is used.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import struct
import typing as t

BLOCK = 512
CHUNK = 1024 * 1024
NS = 1_000_000_000
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # names and values that are not UTF-8 round-trip byte for byte
TYPE_FILE = "file"
TYPE_DIR = "dir"
TYPE_SYMLINK = "symlink"
TYPE_HARDLINK = "hardlink"
TYPE_FIFO = "fifo"

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """A tree or an archive that cannot be read or written; the message is for the operator."""


def digest_text(hasher: t.Any) -> str:
    return "sha256:" + hasher.hexdigest()


def mode_string(mode: int) -> str:
    return "%04o" % stat.S_IMODE(mode)


ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
PAX_ACL = {ACL_ACCESS: "SCHILY.acl.access", ACL_DEFAULT: "SCHILY.acl.default"}
PAX_XATTR = "SCHILY.xattr."


def xattr_keyword(name: str) -> str:
    """An xattr name as a pax keyword, as GNU tar writes it: '%' and '=' percent-encoded (a keyword ends at '=')."""
    return PAX_XATTR + name.replace("%", "%25").replace("=", "%3D")


def xattr_name(keyword: str) -> str:
    """The xattr name of a ``SCHILY.xattr.`` keyword: GNU tar's two escapes undone, in one left-to-right pass."""
    parts = keyword[len(PAX_XATTR):].split("%")
    name = [parts[0]]
    for part in parts[1:]:
        code = part[:2].upper()
        name.append(("%" if code == "25" else "=") + part[2:] if code in ("25", "3D") else "%" + part)
    return "".join(name)


ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
ACL_TAG_OF = {("user", False): 0x01, ("user", True): 0x02, ("group", False): 0x04, ("group", True): 0x08,
              ("mask", False): 0x10, ("other", False): 0x20}
ACL_UNDEFINED_ID = 0xFFFFFFFF


def acl_to_text(blob: bytes) -> str:
    """The kernel's binary POSIX ACL (an xattr value) as the text GNU tar and bsdtar store, ids numeric."""
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != 2:
        raise ValueError("not a version 2 POSIX ACL")
    entries = []
    for offset in range(4, len(blob), 8):
        tag, perm, qualifier = struct.unpack_from("<HHI", blob, offset)
        if tag not in ACL_TAGS:
            raise ValueError(f"unknown ACL tag {tag:#x}")
        perms = ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")
        who = str(qualifier) if tag in (0x02, 0x08) else ""
        entries.append(f"{ACL_TAGS[tag]}:{who}:{perms}")
    return ",".join(entries)


def acl_from_text(text: str) -> bytes:
    """Text ACL entries (``user:1000:r-x``, commas or newlines, star's trailing id allowed) as the binary xattr."""
    entries = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        fields = entry.split(":")
        if len(fields) not in (3, 4):
            raise ValueError(f"ACL entry {entry!r} is not tag:qualifier:perms")
        tag = {"u": "user", "g": "group", "m": "mask", "o": "other"}.get(fields[0], fields[0])
        qualifier, perms = fields[1], fields[2]
        key = (tag, bool(qualifier))
        if key not in ACL_TAG_OF:
            raise ValueError(f"ACL entry {entry!r} has an unknown tag")
        ident = ACL_UNDEFINED_ID
        if qualifier:
            if len(fields) == 4 and fields[3].isdigit():
                ident = int(fields[3])
            elif qualifier.isdigit():
                ident = int(qualifier)
            else:
                ident = (pwd.getpwnam(qualifier).pw_uid if tag == "user" else grp.getgrnam(qualifier).gr_gid)
        bits = (4 if "r" in perms else 0) | (2 if "w" in perms else 0) | (1 if "x" in perms else 0)
        entries.append((ACL_TAG_OF[key], ident, bits))
    entries.sort(key=lambda e: (e[0], e[1]))  # the kernel wants them by tag, then by id
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, bits, ident) for tag, ident, bits in entries)


def read_xattrs(path: t.Any) -> dict[str, bytes]:
    """Every extended attribute of ``path`` (a path, not followed, or an open fd); none when unsupported."""
    follow = {} if isinstance(path, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(path, **follow)
    except OSError:
        return {}
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, **follow)
        except OSError:  # removed meanwhile, or not readable: not captured
            continue
    return values


def xattr_records(xattrs: dict[str, bytes]) -> dict[str, str]:
    """Extended attributes as pax records: ACLs as SCHILY.acl text, the rest as SCHILY.xattr (bytes kept exactly)."""
    records = {}
    for name in sorted(xattrs):
        value = xattrs[name]
        if name in PAX_ACL:
            try:
                records[PAX_ACL[name]] = acl_to_text(value)
                continue
            except ValueError:
                pass  # not a form we know: kept as raw bytes
        records[xattr_keyword(name)] = value.decode(ENCODING, ERRORS)
    return records


def record_xattrs(records: t.Mapping[str, str]) -> dict[str, bytes]:
    """Pax records back to extended attribute names and values (ACL text to the kernel's binary form)."""
    xattrs = {}
    for key, value in records.items():
        if key.startswith(PAX_XATTR):
            xattrs[xattr_name(key)] = value.encode(ENCODING, ERRORS)
        elif key == PAX_ACL[ACL_ACCESS]:
            xattrs[ACL_ACCESS] = acl_from_text(value)
        elif key == PAX_ACL[ACL_DEFAULT]:
            xattrs[ACL_DEFAULT] = acl_from_text(value)
    return xattrs


def xattrs_digest(records: t.Mapping[str, str]) -> str | None:
    """One value for a member's xattrs and ACLs (the manifest compares it); None when it has none."""
    keys = sorted(k for k in records if k.startswith(PAX_XATTR) or k in PAX_ACL.values())
    if not keys:
        return None
    hasher = hashlib.sha256()
    for key in keys:
        hasher.update(key.encode(ENCODING, ERRORS) + b"\0" + records[key].encode(ENCODING, ERRORS) + b"\0")
    return digest_text(hasher)


# --------------------------------------------------------------------------- walking a tree by directory fds


class Node(t.NamedTuple):
    """One entry of a tree: its relative path, its name in the directory open as ``dir_fd``, its lstat."""

    rel: str
    name: str
    dir_fd: int | None  # None for the root itself, reached by ``name`` (its path)
    st: os.stat_result


def at(node: Node) -> str:
    """A short path that reaches ``node`` whatever its full length (for calls that take no dir_fd)."""
    if node.dir_fd is None:
        return node.name
    return f"/proc/self/fd/{node.dir_fd}/{node.name}"


def walk(root: str) -> t.Iterator[Node]:
    """Every entry under ``root`` (the root first, as "."), depth first, names sorted, never following a link.

    Directories are opened relative to their parent, so no path ever reaches the kernel longer than
    one name; a node's ``dir_fd`` stays open until the walk moves past it.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"{root} is not a directory that can be read: {exc.strerror}") from exc
    stack: list[tuple[int, str, list[t.Any]]] = []
    try:
        yield Node(".", root, None, os.fstat(root_fd))
        stack.append((root_fd, "", _sorted_entries(root_fd, root)))
        while stack:
            fd, prefix, entries = stack[-1]
            if not entries:
                os.close(fd)
                stack.pop()
                continue
            entry = entries.pop()
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while walking
                continue
            rel = prefix + entry.name
            yield Node(rel, entry.name, fd, st)
            if stat.S_ISDIR(st.st_mode):
                try:
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise ArchiveError(f"cannot open {os.path.join(root, rel)}: {exc.strerror}") from exc
                stack.append((child, rel + "/", _sorted_entries(child, os.path.join(root, rel))))
    finally:
        for fd, _prefix, _entries in stack:
            os.close(fd)


def _sorted_entries(fd: int, shown: str) -> list[t.Any]:
    try:
        with os.scandir(fd) as entries:
            return sorted(entries, key=lambda e: e.name, reverse=True)  # popped from the end: smallest first
    except OSError as exc:
        raise ArchiveError(f"cannot list {shown}: {exc.strerror}") from exc


def open_for_reading(node: Node, shown: str) -> int:
    try:
        if node.dir_fd is None:
            return os.open(node.name, os.O_RDONLY | os.O_CLOEXEC)
        return os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=node.dir_fd)
    except OSError as exc:
        raise ArchiveError(f"cannot read {shown}: {exc.strerror}") from exc


def tree_size(root: str) -> int:
    """Bytes the files under ``root`` occupy (a free-space estimate)."""
    total = 0
    for node in walk(root):
        if stat.S_ISREG(node.st.st_mode):
            total += min(node.st.st_size, node.st.st_blocks * 512)
    return total


def scan_tree(root: str) -> dict[str, dict[str, t.Any]]:
    """A ``files`` map of a directory on disk (used to compare a restore with the manifest)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    files: dict[str, dict[str, t.Any]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for node in walk(root):
        st = node.st
        record: dict[str, t.Any] = {"mode": mode_string(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        fmt = stat.S_IFMT(st.st_mode)
        key = (st.st_dev, st.st_ino)
        if fmt == stat.S_IFREG and st.st_nlink > 1 and key in inodes:
            record.update(type=TYPE_HARDLINK, link=inodes[key])
            files[node.rel] = record
            continue
        record["mtime"] = st.st_mtime_ns
        digest = xattrs_digest(xattr_records(read_xattrs(at(node))))
        if digest:
            record["xattrs"] = digest
        if fmt == stat.S_IFDIR:
            record["type"] = TYPE_DIR
        elif fmt == stat.S_IFLNK:
            record.update(type=TYPE_SYMLINK, link=os.readlink(node.name, dir_fd=node.dir_fd))
        elif fmt == stat.S_IFREG:
            if st.st_nlink > 1:
                inodes[key] = node.rel
            hasher = hashlib.sha256()
            fd = open_for_reading(node, os.path.join(root, node.rel))
            try:
                while True:
                    count = os.readv(fd, [view])
                    if not count:
                        break
                    hasher.update(view[:count])
            finally:
                os.close(fd)
            record.update(type=TYPE_FILE, size=st.st_size, sha256=digest_text(hasher))
        elif fmt == stat.S_IFIFO:
            record["type"] = TYPE_FIFO
        else:
            record["type"] = "other"
        files[node.rel] = record
    return files


def changes_since(expected: dict[str, dict[str, t.Any]], root: str, since: float, limit: int = 5) -> dict[str, t.Any]:
    """What differs in ``root`` from a set's ``files`` map, by a walk (no reading): entries added and removed since,
    and regular files whose size differs or that were modified after ``since`` (epoch seconds)."""
    added: list[str] = []
    changed: list[str] = []
    seen = set()
    for node in walk(root):
        if node.rel == ".":
            continue
        seen.add(node.rel)
        record = expected.get(node.rel)
        if record is None:
            added.append(node.rel)
        elif stat.S_ISREG(node.st.st_mode):
            resized = record.get("type") == TYPE_FILE and record.get("size") != node.st.st_size
            if resized or node.st.st_mtime > since:
                changed.append(node.rel)
    removed = [rel for rel in expected if rel != "." and rel not in seen]
    return {"added": len(added), "changed": len(changed), "removed": len(removed),
            "examples": sorted(added + changed + removed)[:limit]}


def tree_fingerprint(root: str) -> str:
    """A value that changes whenever anything under ``root`` does (names, types, modes, owners, sizes, mtimes)."""
    digest = hashlib.sha256()
    for node in walk(root):
        if node.rel == ".":
            continue
        st = node.st
        line = "%s\0%o\0%d\0%d\0%d\0%d\n" % (node.rel, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
        digest.update(line.encode(ENCODING, ERRORS))
    return digest_text(digest)


def remove_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` in the directory open as ``parent_fd``, a whole tree if it is one, without following
    symlinks, at any depth and path length (iterative, by directory fds)."""
    if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    stack = [(parent_fd, name, os.open(name, DIR_FLAGS, dir_fd=parent_fd))]
    try:
        while stack:
            parent, own, fd = stack[-1]
            with os.scandir(fd) as entries:
                listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
            for child, is_dir in listed:
                if not is_dir:
                    os.unlink(child, dir_fd=fd)
            subdir = next((child for child, is_dir in listed if is_dir), None)
            if subdir is None:
                os.close(fd)
                stack.pop()
                os.rmdir(own, dir_fd=parent)
            else:
                stack.append((fd, subdir, os.open(subdir, DIR_FLAGS, dir_fd=fd)))
    finally:
        for _parent, _own, fd in stack:
            os.close(fd)


def empty_directory(path: str) -> None:
    """Remove everything inside ``path`` (not ``path`` itself), without following symlinks, at any depth."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            remove_at(fd, name)
    finally:
        os.close(fd)
