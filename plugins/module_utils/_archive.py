# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-data archives of backup sets (private to the collection).

One pass over a directory writes a POSIX (pax) tar stream and records, for every
member, its type, mode, owner, size, mtime (nanoseconds), extended attributes and
sha256: the manifest's ``files`` map. The stream is what GNU tar and bsdtar write and
read: sub-second mtimes in the ``mtime`` record, extended attributes (file capabilities
included) as ``SCHILY.xattr.*``, POSIX ACLs as ``SCHILY.acl.access`` / ``.default``,
sparse files in the GNU 1.0 layout (holes stay holes, a final hole is mapped), hard
links as links, symlinks verbatim whatever they point at.

Everything on disk is reached through directory file descriptors (``walk`` and the
extractor), so paths longer than PATH_MAX work, and nothing is ever followed: a
symlink is read and written as a link, and no member is written through one.

Only the standard library is used, so these functions are unit-testable and the
benchmark calls the same code the modules run.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import posixpath
import pwd
import stat
import struct
import tarfile
import typing as t

BLOCK = 512
CHUNK = 1024 * 1024
NS = 1_000_000_000
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # names and values that are not UTF-8 round-trip byte for byte
SPARSE_PLACEHOLDER = "GNUSparseFile.0/sparse"

TYPE_FILE = "file"
TYPE_DIR = "dir"
TYPE_SYMLINK = "symlink"
TYPE_HARDLINK = "hardlink"
TYPE_FIFO = "fifo"

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """An archive that cannot be written or read; the message is for the operator."""


class UnsafeMember(ArchiveError):
    """A member that would land outside the target, or a device file."""


def _digest(hasher: t.Any) -> str:
    return "sha256:" + hasher.hexdigest()


def mode_string(mode: int) -> str:
    return "%04o" % stat.S_IMODE(mode)


# --------------------------------------------------------------------------- metadata: mtimes, xattrs, ACLs


def pax_mtime(ns: int) -> str:
    """Nanoseconds since the epoch as a pax ``mtime`` value (exact, unlike a float)."""
    seconds, fraction = divmod(ns, NS)
    return "%d.%09d" % (seconds, fraction)


def member_mtime_ns(member: t.Any) -> int:
    """A member's mtime in nanoseconds, read from the pax record's text (tarfile keeps only a float)."""
    text = member.pax_headers.get("mtime")
    if text:
        negative = text.startswith("-")
        whole, _dot, fraction = text.lstrip("-").partition(".")
        try:
            value = int(whole or 0) * NS + int((fraction + "000000000")[:9])
            return -value if negative else value
        except ValueError:
            pass
    return int(member.mtime) * NS


ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
PAX_ACL = {ACL_ACCESS: "SCHILY.acl.access", ACL_DEFAULT: "SCHILY.acl.default"}
PAX_XATTR = "SCHILY.xattr."
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
        records[PAX_XATTR + name] = value.decode(ENCODING, ERRORS)
    return records


def record_xattrs(records: t.Mapping[str, str]) -> dict[str, bytes]:
    """Pax records back to extended attribute names and values (ACL text to the kernel's binary form)."""
    xattrs = {}
    for key, value in records.items():
        if key.startswith(PAX_XATTR):
            xattrs[key[len(PAX_XATTR):]] = value.encode(ENCODING, ERRORS)
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
    return _digest(hasher)


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


def _open_for_reading(node: Node, shown: str) -> int:
    try:
        if node.dir_fd is None:
            return os.open(node.name, os.O_RDONLY | os.O_CLOEXEC)
        return os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=node.dir_fd)
    except OSError as exc:
        raise ArchiveError(f"cannot read {shown}: {exc.strerror}") from exc


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
    """Whether a symlink at ``member_name`` pointing to ``target`` resolves inside the root (informative only:
    links are stored and restored verbatim and never followed)."""
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


def check_member(member: t.Any, symlinks: set[str], regular: set[str]) -> str:
    """Check one member against the extraction rules; return its normalized name.

    ``symlinks`` and ``regular`` are the names seen so far in the archive: no member may
    be written through a symlink, and a hard link must point to a file already extracted.
    A symlink's own target is not a rule: it is written as it is and never followed.
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


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """One ``"<length> <keyword>=<value>\n"`` record; the length counts its own digits."""
    size = len(keyword) + len(value) + 3
    length = size + len(str(size))
    if len(str(length)) != len(str(size)):
        length = size + len(str(length))
    return b"%d %s=%s\n" % (length, keyword, value)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


USTAR_MAX = {8: 8 ** 7, 12: 8 ** 11}
PAX_HEADER_NAME = b"././@PaxHeader"


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes, link: bytes) -> bytes:
    block = bytearray(BLOCK)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b"        "
    block[156:157] = kind
    block[157:157 + len(link[:100])] = link[:100]
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_header(name: str, mode: int, uid: int, gid: int, size: int, mtime_ns: int, kind: bytes,
               link: str = "", records: dict[str, str] | None = None) -> bytes:
    """A member's header blocks as GNU tar writes them in the pax format: an extended header with
    the records that the ustar fields cannot hold (long or non-ASCII names, sub-second or large
    numbers, xattrs and ACLs), then the ustar header. Hand-built: tarfile's writer costs more than
    the data's own hashing on a tree of small files."""
    pax: dict[str, str] = dict(records or {})
    raw_name = name.encode(ENCODING, ERRORS)
    raw_link = link.encode(ENCODING, ERRORS)
    if len(raw_name) > 100 or not name.isascii():
        pax["path"] = name
    if len(raw_link) > 100 or not link.isascii():
        pax["linkpath"] = link
    seconds, fraction = divmod(mtime_ns, NS)
    if fraction and "mtime" not in pax:
        pax["mtime"] = pax_mtime(mtime_ns)
    for key, value, width in (("uid", uid, 8), ("gid", gid, 8), ("size", size, 12), ("mtime", seconds, 12)):
        if not 0 <= value < USTAR_MAX[width]:
            pax.setdefault(key, pax_mtime(mtime_ns) if key == "mtime" else str(value))
    ustar = _ustar(raw_name if raw_name.isascii() else name.encode("ascii", "replace"), mode,
                   uid if 0 <= uid < USTAR_MAX[8] else 0, gid if 0 <= gid < USTAR_MAX[8] else 0,
                   size if size < USTAR_MAX[12] else 0, seconds if 0 <= seconds < USTAR_MAX[12] else 0, kind,
                   raw_link if raw_link.isascii() else link.encode("ascii", "replace"))
    if not pax:
        return ustar
    encoded = []
    binary = False
    for key, value in pax.items():
        try:
            encoded.append((key.encode(ENCODING), value.encode(ENCODING, "strict")))
        except UnicodeEncodeError:  # bytes that are not UTF-8 (a name, an xattr value): kept as they are
            binary = True
            encoded.append((key.encode(ENCODING), value.encode(ENCODING, ERRORS)))
    body = (_pax_record(b"hdrcharset", b"BINARY") if binary else b"") + b"".join(_pax_record(k, v) for k, v in encoded)
    extended = _ustar(PAX_HEADER_NAME, 0o644, 0, 0, len(body), 0, tarfile.XHDTYPE, b"")
    return extended + body + bytes(-len(body) % BLOCK) + ustar


SMALL = 64 * 1024  # files up to this size are read in one call and sent with their header


class TreeWriter:
    """Write a directory as a tar stream to ``out`` and build its ``files`` map in the same pass.

    Headers and small files are gathered in one buffer and handed to ``out`` a megabyte at a
    time; larger files go through in chunks. Every file's sha256 is taken on the way.
    """

    def __init__(self, out: t.Any, buffer_size: int = CHUNK) -> None:
        self.out = out
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)
        self.zeros = bytes(buffer_size)
        self.pending = bytearray()
        self.files: dict[str, dict[str, t.Any]] = {}
        self.skipped: list[dict[str, str]] = []
        self.raw_bytes = 0
        self.written = 0

    def _emit(self, data: t.Any) -> None:
        self.pending += data
        if len(self.pending) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.out.write(self.pending)
            self.written += len(self.pending)
            self.pending = bytearray()

    def _pad(self, size: int) -> None:
        remainder = size % BLOCK
        if remainder:
            self._emit(self.zeros[:BLOCK - remainder])

    def write_tree(self, root: str) -> dict[str, dict[str, t.Any]]:
        self.root = root
        hardlinks: dict[tuple[int, int], str] = {}
        for node in walk(root):
            self._entry(node, hardlinks)
        self._emit(bytes(2 * BLOCK))
        self._flush()
        return self.files

    def _entry(self, node: Node, hardlinks: dict[tuple[int, int], str]) -> None:
        st, relpath = node.st, node.rel
        mode = stat.S_IMODE(st.st_mode)
        record: dict[str, t.Any] = {"mode": mode_string(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFREG and st.st_nlink > 1 and (st.st_dev, st.st_ino) in hardlinks:
            link = hardlinks[(st.st_dev, st.st_ino)]  # the inode's metadata travels with its first name
            record.update(type=TYPE_HARDLINK, link=link)
            self._emit(tar_header(relpath, mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, tarfile.LNKTYPE, link))
            self.files[relpath] = record
            return
        if fmt not in (stat.S_IFDIR, stat.S_IFLNK, stat.S_IFREG, stat.S_IFIFO):
            self.skipped.append({"path": relpath, "reason": "sockets and device files are not captured"})
            return
        record["mtime"] = st.st_mtime_ns
        if fmt == stat.S_IFREG:
            if st.st_nlink > 1:
                hardlinks[(st.st_dev, st.st_ino)] = relpath
            record["type"] = TYPE_FILE
            self._file(node, mode, record)
            self.files[relpath] = record
            return
        records = xattr_records(read_xattrs(at(node)))
        if records:
            record["xattrs"] = xattrs_digest(records)
        if fmt == stat.S_IFDIR:
            record["type"] = TYPE_DIR
            self._emit(tar_header(relpath, mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, tarfile.DIRTYPE, "", records))
        elif fmt == stat.S_IFLNK:
            try:
                target = os.readlink(node.name, dir_fd=node.dir_fd)
            except OSError as exc:
                raise ArchiveError(f"cannot read the symlink {self._shown(relpath)}: {exc.strerror}") from exc
            record.update(type=TYPE_SYMLINK, link=target)
            self._emit(tar_header(relpath, mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, tarfile.SYMTYPE, target, records))
        else:
            record["type"] = TYPE_FIFO
            self._emit(tar_header(relpath, mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns, tarfile.FIFOTYPE, "", records))
        self.files[relpath] = record

    def _shown(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)

    def _file(self, node: Node, mode: int, record: dict[str, t.Any]) -> None:
        st, relpath = node.st, node.rel
        size = st.st_size
        fd = _open_for_reading(node, self._shown(relpath))
        try:
            records = xattr_records(read_xattrs(fd))
            if records:
                record["xattrs"] = xattrs_digest(records)
            hasher = hashlib.sha256()
            segments = _data_segments(fd, size) if size > BLOCK and st.st_blocks * 512 < size else None
            if segments is not None:
                record["sparse"] = True
                self._sparse(fd, node, mode, segments, records, hasher)
            else:
                header = tar_header(relpath, mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, tarfile.REGTYPE, "", records)
                if size <= SMALL:
                    data = os.read(fd, size)
                    if len(data) < size:  # the file shrank while being read: keep the stream well-formed
                        self.skipped.append({"path": relpath, "reason": "file shrank while being read; padded with zeros"})
                        data += bytes(size - len(data))
                    hasher.update(data)
                    self._emit(header)
                    self._emit(data)
                else:
                    self._emit(header)
                    self._flush()
                    self._copy(fd, relpath, size, hasher)
                self._pad(size)
        finally:
            os.close(fd)
        record["size"] = size
        record["sha256"] = _digest(hasher)
        self.raw_bytes += size

    def _copy(self, fd: int, relpath: str, size: int, hasher: t.Any) -> None:
        """Stream ``size`` bytes of ``fd`` straight to ``out`` (the pending buffer is flushed)."""
        remaining = size
        view, out = self.view, self.out
        while remaining > 0:
            count = os.readv(fd, [view[:min(remaining, len(view))]])
            if count == 0:  # the file shrank while being read: keep the stream well-formed
                self.skipped.append({"path": relpath, "reason": "file shrank while being read; padded with zeros"})
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

    def _sparse(self, fd: int, node: Node, mode: int, segments: list[tuple[int, int]], records: dict[str, str],
                hasher: t.Any) -> None:
        st, relpath = node.st, node.rel
        size = st.st_size
        mapped = list(segments)
        if not mapped or mapped[-1][0] + mapped[-1][1] < size:
            mapped.append((size, 0))  # a file that ends in a hole: GNU tar sizes the file by its last map entry
        sparse_map = ("%d\n" % len(mapped) + "".join("%d\n%d\n" % seg for seg in mapped)).encode()
        sparse_map += bytes(-len(sparse_map) % BLOCK)
        data_size = sum(length for _offset, length in segments)
        records = dict(records, **{"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                   "GNU.sparse.name": relpath, "GNU.sparse.realsize": str(size)})
        self._emit(tar_header(SPARSE_PLACEHOLDER, mode, st.st_uid, st.st_gid, len(sparse_map) + data_size,
                              st.st_mtime_ns, tarfile.REGTYPE, "", records))
        self._emit(sparse_map)
        self._flush()
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
    for node in walk(root):
        if stat.S_ISREG(node.st.st_mode):
            total += min(node.st.st_size, node.st.st_blocks * 512)
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


class Member:
    """One member as read from a stream, with the names tarfile's TarInfo uses for the same things."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "pax_headers", "sparse",
                 "stored")

    def __init__(self) -> None:
        self.pax_headers: dict[str, str] = {}
        self.sparse: list[tuple[int, int]] | None = None
        self.linkname = ""

    def isreg(self) -> bool:
        return self.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def issym(self) -> bool:
        return self.type == tarfile.SYMTYPE

    def islnk(self) -> bool:
        return self.type == tarfile.LNKTYPE

    def isfifo(self) -> bool:
        return self.type == tarfile.FIFOTYPE

    def ischr(self) -> bool:
        return self.type == tarfile.CHRTYPE

    def isblk(self) -> bool:
        return self.type == tarfile.BLKTYPE


def _field(block: bytes, start: int, length: int) -> bytes:
    raw = block[start:start + length]
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _number(block: bytes, start: int, length: int) -> int:
    raw = block[start:start + length]
    if raw[0] & 0x80:  # GNU base-256, for numbers octal cannot hold
        value = int.from_bytes(raw[1:], "big")
        return value - (1 << (8 * (length - 1))) if raw[0] & 0x40 else value
    text = raw.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError as exc:
        raise ArchiveError(f"the archive cannot be read: a header field holds {text!r}") from exc


# links, directories and special files carry no data, whatever their size field says
NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)


class TarReader:
    """Members of a pax/ustar tar stream, read in large pieces and parsed in place.

    It reads what ``TreeWriter`` writes (and what GNU tar and Python's tarfile write in the pax
    format): ustar headers, pax extended headers, GNU 1.0 sparse files. Anything else is read as
    a member of an unsupported type, which the extraction rules refuse. Member data is handed out
    chunk by chunk (``chunks``) and skipped when the caller does not ask for it.
    """

    def __init__(self, raw: t.Any) -> None:
        self.raw = raw
        self.buf: t.Any = b""
        self.pos = 0
        self.unread = 0  # data (and padding) of the last member still to skip
        self.done = False

    def _refill(self) -> bool:
        self.buf = self.raw.read(CHUNK)
        self.pos = 0
        return bool(self.buf)

    def _take(self, count: int) -> bytes:
        if len(self.buf) - self.pos >= count:
            piece = self.buf[self.pos:self.pos + count]
            self.pos += count
            return bytes(piece)
        parts = []
        while count:
            if self.pos >= len(self.buf) and not self._refill():
                break
            piece = self.buf[self.pos:self.pos + count]
            self.pos += len(piece)
            count -= len(piece)
            parts.append(bytes(piece))
        return b"".join(parts)

    def _skip(self, count: int) -> None:
        while count:
            if self.pos >= len(self.buf) and not self._refill():
                raise ArchiveError("the archive cannot be read: it ends inside a member")
            step = min(count, len(self.buf) - self.pos)
            self.pos += step
            count -= step

    def chunks(self, count: int) -> t.Iterator[memoryview]:
        """The next ``count`` bytes of the current member's data, as views into the read buffer."""
        self.unread -= count
        while count:
            if self.pos >= len(self.buf) and not self._refill():
                raise ArchiveError("the archive cannot be read: it ends inside a file")
            step = min(count, len(self.buf) - self.pos)
            yield memoryview(self.buf)[self.pos:self.pos + step]
            self.pos += step
            count -= step

    def __iter__(self) -> t.Iterator[Member]:
        return self

    def __next__(self) -> Member:
        if self.unread:
            self._skip(self.unread)
            self.unread = 0
        if self.done:
            raise StopIteration
        records: dict[str, str] = {}
        while True:
            block = self._take(BLOCK)
            if not block or block == bytes(BLOCK):  # the end-of-archive blocks (or the end of the stream)
                self.done = True
                raise StopIteration
            if len(block) < BLOCK:
                raise ArchiveError("the archive cannot be read: it ends inside a header")
            stored = _number(block, 148, 8)
            computed = sum(block[:148]) + 256 + sum(block[156:])
            if stored != computed:
                raise ArchiveError("the archive cannot be read: a header's checksum is wrong")
            kind = block[156:157]
            size = _number(block, 124, 12)
            if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                body = self._take(size)
                self._skip(-size % BLOCK)
                if kind == tarfile.XHDTYPE:  # global headers hold nothing this reader uses
                    records.update(_parse_pax(body))
                continue
            return self._member(block, kind, size, records)

    def _member(self, block: bytes, kind: bytes, size: int, records: dict[str, str]) -> Member:
        member = Member()
        name = _field(block, 0, 100)
        if block[257:263] in (b"ustar\0", b"ustar ") and block[345]:
            name = _field(block, 345, 155) + b"/" + name
        member.type = kind
        member.name = records.get("path") or name.decode(ENCODING, ERRORS)
        member.linkname = records.get("linkpath") or _field(block, 157, 100).decode(ENCODING, ERRORS)
        member.mode = _number(block, 100, 8) & 0o7777
        member.uid = int(records["uid"]) if "uid" in records else _number(block, 108, 8)
        member.gid = int(records["gid"]) if "gid" in records else _number(block, 116, 8)
        member.size = int(records["size"]) if "size" in records else size
        member.mtime = _number(block, 136, 12)
        member.pax_headers = records
        member.stored = member.size
        if records.get("GNU.sparse.major") == "1" and records.get("GNU.sparse.minor") == "0":
            self._sparse_map(member, records)
        elif kind in NO_DATA:
            member.stored = 0
        self.unread = member.stored + (-member.stored % BLOCK)
        return member

    def _sparse_map(self, member: Member, records: dict[str, str]) -> None:
        """GNU 1.0: the map ("count\n" then "offset\nlength\n" pairs) fills whole blocks before the data."""
        total = member.size + (-member.size % BLOCK)
        text = b""
        numbers: list[int] = []
        used = 0
        while True:
            block = self._take(BLOCK)
            used += BLOCK
            if len(block) < BLOCK or used > total:
                raise ArchiveError(f"the archive cannot be read: the sparse map of {member.name!r} is cut short")
            text += block
            lines = text.split(b"\n")
            try:
                numbers = [int(line) for line in lines[:-1]]
            except ValueError as exc:
                raise ArchiveError(f"the archive cannot be read: the sparse map of {member.name!r} is damaged") from exc
            if numbers and len(numbers) >= 1 + 2 * numbers[0]:
                break
        count = numbers[0]
        member.sparse = list(zip(numbers[1:1 + 2 * count:2], numbers[2:2 + 2 * count:2]))
        member.name = records.get("GNU.sparse.name") or member.name
        member.stored = member.size - used  # what follows the map: the data segments, one after another
        member.size = int(records.get("GNU.sparse.realsize") or member.stored)

    def content(self, member: Member, zeros: bytes) -> t.Iterator[t.Any]:
        """A regular member's content as chunks, holes of a sparse file as zeros."""
        if member.sparse is None:
            yield from self.chunks(member.stored)
            return
        position = 0
        for offset, length in member.sparse:
            yield from _zeros(offset - position, zeros)
            yield from self.chunks(length)
            position = offset + length
        yield from _zeros(member.size - position, zeros)


def _zeros(count: int, zeros: bytes) -> t.Iterator[bytes]:
    while count > 0:
        piece = min(count, len(zeros))
        yield zeros[:piece]
        count -= piece


def _parse_pax(body: bytes) -> dict[str, str]:
    """Pax records as text; values that are not UTF-8 keep their bytes (surrogateescape), as tarfile does."""
    records: dict[str, str] = {}
    position = 0
    while position < len(body) and body[position:position + 1] not in (b"\0", b""):
        space = body.find(b" ", position)
        try:
            length = int(body[position:space])
        except ValueError as exc:
            raise ArchiveError("the archive cannot be read: a pax record is damaged") from exc
        record = body[space + 1:position + length - 1]  # without the trailing newline
        keyword, equals, value = record.partition(b"=")
        if not equals or length <= 0:
            raise ArchiveError("the archive cannot be read: a pax record is damaged")
        records[keyword.decode(ENCODING, ERRORS)] = value.decode(ENCODING, ERRORS)
        position += length
    return records


def describe_member(member: Member, name: str) -> dict[str, t.Any]:
    record: dict[str, t.Any] = {"mode": mode_string(member.mode), "uid": member.uid, "gid": member.gid}
    if member.islnk():
        record.update(type=TYPE_HARDLINK, link=normalize_member_name(member.linkname))
        return record
    record["mtime"] = member_mtime_ns(member)
    digest = xattrs_digest(member.pax_headers)
    if digest:
        record["xattrs"] = digest
    if member.isdir():
        record["type"] = TYPE_DIR
    elif member.issym():
        record.update(type=TYPE_SYMLINK, link=member.linkname)
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
# recorded since sets kept mtimes and xattrs: compared whenever the manifest has mtimes
NEWER_KEYS = ("mtime", "xattrs")


def compare_record(name: str, expected: dict[str, t.Any] | None, found: dict[str, t.Any],
                   ignore: t.Container[str] = ()) -> list[str]:
    if expected is None:
        return [f"{name!r}: not in the manifest"]
    keys = COMPARED_KEYS + (NEWER_KEYS if "mtime" in expected else ())
    problems = []
    for key in keys:
        if key not in ignore and expected.get(key) != found.get(key):
            problems.append(f"{name!r}: {key} is {found.get(key)!r}, manifest says {expected.get(key)!r}")
    return problems


def verify_stream(stream: t.Any, files: dict[str, dict[str, t.Any]], limit: int = 20) -> list[str]:
    """Read a tar stream and compare every member (and every file's sha256) with ``files``."""
    problems: list[str] = []
    seen: set[str] = set()
    zeros = bytes(CHUNK)
    try:
        reader = TarReader(stream)
        for member in reader:
            name = normalize_member_name(member.name)
            seen.add(name)
            found = describe_member(member, name)
            if member.isreg():
                hasher = hashlib.sha256()
                for chunk in reader.content(member, zeros):
                    hasher.update(chunk)
                found["sha256"] = _digest(hasher)
            problems.extend(compare_record(name, files.get(name), found))
            if len(problems) >= limit:
                return problems
    except (ArchiveError, OSError) as exc:
        problems.append(str(exc) if str(exc).startswith("the archive cannot be read") else f"the archive cannot be read: {exc}")
        return problems
    missing = sorted(set(files) - seen)
    problems.extend(f"{name!r}: in the manifest but not in the archive" for name in missing[:limit])
    return problems


def check_stream(stream: t.Any) -> int:
    """Apply the extraction rules to every member of a tar stream without writing anything."""
    symlinks: set[str] = set()
    regular: set[str] = set()
    count = 0
    for member in TarReader(stream):
        name = check_member(member, symlinks, regular)
        if member.issym():
            symlinks.add(name)
        elif member.isreg():
            regular.add(name)
        count += 1
    return count


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

    def _note(self, name: str, what: str, exc: OSError) -> None:
        self.not_restored_total += 1
        if len(self.not_restored) < NOT_RESTORED_LIMIT:
            self.not_restored.append({"path": name, "what": what, "reason": exc.strerror or str(exc)})

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
        except (ValueError, KeyError) as exc:
            self.not_restored_total += 1
            self.not_restored.append({"path": name, "what": "acl", "reason": str(exc)})
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
            fd = _open_for_reading(node, os.path.join(root, node.rel))
            try:
                while True:
                    count = os.readv(fd, [view])
                    if not count:
                        break
                    hasher.update(view[:count])
            finally:
                os.close(fd)
            record.update(type=TYPE_FILE, size=st.st_size, sha256=_digest(hasher))
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
    return _digest(digest)


def compare_trees(expected: dict[str, dict[str, t.Any]], found: dict[str, dict[str, t.Any]], limit: int = 20,
                  not_restored: t.Iterable[dict[str, str]] = ()) -> list[str]:
    """Differences between a manifest's ``files`` and a tree on disk; attributes an extraction reported as
    not restored (``not_restored``) are not differences again."""
    skipped: dict[str, set[str]] = {}
    for entry in not_restored:
        what = entry["what"]
        skipped.setdefault(entry["path"], set()).update(
            {"uid", "gid"} if what == "owner" else {"xattrs"} if what == "acl" or what.startswith("xattr") else {what})
    problems: list[str] = []
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            problems.append(f"{name!r}: in the manifest but missing after extraction")
        else:
            problems.extend(compare_record(name, expected.get(name), found[name], skipped.get(name, ())))
        if len(problems) >= limit:
            break
    return problems


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
