# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-data archives of backup sets: the tar stream (private to the collection).

One pass over a directory (``_tree.walk``) writes a POSIX (pax) tar stream and records, for
every member, its type, mode, owner, size, mtime (nanoseconds), extended attributes and sha256:
the manifest's ``files`` map. The stream is what GNU tar and bsdtar write and read: sub-second
mtimes in the ``mtime`` record, extended attributes (file capabilities included) as
``SCHILY.xattr.*``, POSIX ACLs as ``SCHILY.acl.access`` / ``.default``, sparse files in the GNU
1.0 layout (holes stay holes, a final hole is mapped), hard links as links, symlinks verbatim
whatever they point at. ``TarReader`` reads the same format back, for verification
(``verify_stream``), the extraction rules (``check_stream``) and extraction (``_extract``).

Only the standard library is used, so these functions are unit-testable and the benchmark
calls the same code the modules run.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._tree import (
    CHUNK,
    ENCODING,
    ERRORS,
    NS,
    TYPE_DIR,
    TYPE_FIFO,
    TYPE_FILE,
    TYPE_HARDLINK,
    TYPE_SYMLINK,
    ArchiveError,
    Node,
    at,
    digest_text,
    mode_string,
    open_for_reading,
    read_xattrs,
    walk,
    xattr_records,
    xattrs_digest,
)

BLOCK = 512
SPARSE_PLACEHOLDER = "GNUSparseFile.0/sparse"


class UnsafeMember(ArchiveError):
    """A member that would land outside the target, or a device file."""


# --------------------------------------------------------------------------- metadata: mtimes, xattrs, ACLs


def pax_mtime(ns: int) -> str:
    """Nanoseconds since the epoch as a pax ``mtime`` value (exact, unlike a float).

    The value is a signed decimal, as GNU tar and bsdtar read it: -1.25 s is "-1.250000000". The
    sign goes in front of the whole number (floor division would write -1.25 s as "-2.750000000",
    which every reader takes for -2.75 s).
    """
    sign = "-" if ns < 0 else ""
    seconds, fraction = divmod(abs(ns), NS)
    return "%s%d.%09d" % (sign, seconds, fraction)


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


# --------------------------------------------------------------------------- rules


def normalize_member_name(name: str) -> str:
    """The member name as a clean relative path ("." for the root); refuse what escapes.

    Extraction opens every name relative to its directory on a POSIX system, so "a:" or "C:x" is
    an ordinary name (a drive letter means nothing there), not an absolute path.
    """
    if name.startswith("/"):
        raise UnsafeMember(f"member {name!r} has an absolute path")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeMember(f"member {name!r} contains '..'")
        parts.append(part)
    return "/".join(parts) or "."


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
        fd = open_for_reading(node, self._shown(relpath))
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
        record["sha256"] = digest_text(hasher)
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


# --------------------------------------------------------------------------- reading


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
                found["sha256"] = digest_text(hasher)
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
