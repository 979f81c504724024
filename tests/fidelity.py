"""A tree that is hostile to archivers, and an entry-by-entry comparison that owes nothing to the collection.

``build(root)`` writes every case a faithful backup must keep: symlinks that point outside
(absolute, escaping, dangling), a path longer than PATH_MAX, nanosecond mtimes on files,
directories and symlinks, user xattrs with binary values, POSIX ACLs (access and default,
set with setfacl), a file capability (setcap), a sparse file that ends in a hole and one
that is all hole, hard links, set-id modes, numeric owners, a FIFO, a name that is not
UTF-8, and files, directories and symlinks dated before 1970, at the epoch and after 2038.
``snapshot(root)`` reads a tree back with the standard library (``os.fwalk``) and the
stock tools only, so a test compares what our archives restore with what was there.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

MiB = 1024 * 1024

# how an operator extracts a stored archive with the stock tools alone (the restore runbook and
# docs/backup.md give these lines; the fidelity tests run them)
BY_HAND = {
    "gnu tar": "zstd -dc {archive} | tar --xattrs --xattrs-include='*' --acls --numeric-owner -xpf - -C {dest}",
    "bsdtar": "bsdtar --xattrs --acls --numeric-owner -xpf {archive} -C {dest}",
}
LONG_PARTS = ["deep-" + "x" * 200 + f"-{index:02d}" for index in range(22)]  # 22 x 209 bytes: over 4,096
MTIME_NS = 1_700_000_000_123_456_789
DIR_MTIME_NS = 1_650_000_000_000_000_001
LINK_MTIME_NS = 1_600_000_000_987_654_321
BINARY = bytes(range(256))
# times that stock tools and our own writer once got wrong: before 1970 with a fraction (1960), the
# epoch itself, and after 2038 (2100); ext4 and tmpfs keep all three to the nanosecond
ODD_TIMES = {"before-1970": -315_619_199_876_543_211, "epoch": 0, "after-2038": 4_102_444_800_123_456_789}


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def build(root: str, long_path: bool = True) -> None:
    """Write the hostile tree under ``root`` (an existing, empty directory). Needs root, setfacl and setcap.

    Stock GNU tar and bsdtar stop at paths longer than PATH_MAX ("File name too long"), so a tree
    meant for them is built with ``long_path=False``.
    """
    join = os.path.join
    os.makedirs(join(root, "releases", "3"))
    with open(join(root, "releases", "3", "app.txt"), "w") as handle:
        handle.write("release three\n")
    os.symlink("/data/releases/3", join(root, "current"))  # absolute, as the container sees it
    os.symlink("../../../etc/passwd", join(root, "releases", "escape"))
    os.symlink("nowhere/at/all", join(root, "dangling"))

    if long_path:
        _long_path(root)
    _the_rest(root)


def _long_path(root: str) -> None:
    """A path longer than PATH_MAX, made one directory at a time."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in LONG_PARTS:
        os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    leaf = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
    os.write(leaf, b"at the bottom of a very long path\n")
    os.close(leaf)
    os.close(fd)


def _the_rest(root: str) -> None:
    join = os.path.join
    meta = join(root, "meta")
    os.makedirs(join(meta, "shared"))
    with open(join(meta, "tagged.bin"), "wb") as handle:
        handle.write(b"tagged\n")
    os.setxattr(join(meta, "tagged.bin"), "user.origin", b"upload-7")
    os.setxattr(join(meta, "tagged.bin"), "user.binary", BINARY)
    os.setxattr(join(meta, "shared"), "user.note", "dir attribute \u2713".encode())
    with open(join(meta, "acl.txt"), "w") as handle:
        handle.write("acl\n")
    _run("setfacl", "-m", "u:1000:rwx,g:2000:r-x", join(meta, "acl.txt"))
    _run("setfacl", "-d", "-m", "u:1000:rwx,g::r-x", join(meta, "shared"))
    _run("setfacl", "-m", "u:1001:r-x", join(meta, "shared"))
    with open(join(meta, "server"), "wb") as handle:
        handle.write(b"#!/bin/sh\necho serving\n")
    os.chmod(join(meta, "server"), 0o755)
    _run("setcap", "cap_net_bind_service=+ep", join(meta, "server"))

    with open(join(root, "tail-hole.img"), "wb") as handle:
        handle.write(os.urandom(MiB))
        handle.truncate(64 * MiB)  # ends in a hole: the case GNU tar truncates without a final map entry
    with open(join(root, "all-hole.img"), "wb") as handle:
        handle.truncate(8 * MiB)

    with open(join(root, "linked-a.txt"), "w") as handle:
        handle.write("one inode, two names\n")
    os.link(join(root, "linked-a.txt"), join(root, "linked-b.txt"))
    with open(join(root, "setid"), "w") as handle:
        handle.write("#!/bin/sh\n")
    os.chown(join(root, "setid"), 1234, 4321)
    os.chmod(join(root, "setid"), 0o6755)
    os.mkfifo(join(root, "a fifo"))
    with open(os.path.join(root.encode(), b"latin1-\xe9t\xe9"), "wb") as handle:
        handle.write(b"not a utf-8 name")
    os.mkdir(join(root, "locked"), 0o500)
    os.mkdir(join(root, "times"))
    for label in ODD_TIMES:
        os.mkdir(join(root, "times", f"dir-{label}"))
        with open(join(root, "times", f"file-{label}"), "w") as handle:
            handle.write(f"a file dated {label}\n")
        os.symlink(f"file-{label}", join(root, "times", f"link-{label}"))

    # times last: every write above changed them
    for path in (join(root, "releases", "3", "app.txt"), join(meta, "tagged.bin"), join(root, "tail-hole.img")):
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
    for path in (join(root, "current"), join(root, "dangling")):
        os.utime(path, ns=(LINK_MTIME_NS, LINK_MTIME_NS), follow_symlinks=False)
    for label, ns in ODD_TIMES.items():
        os.utime(join(root, "times", f"file-{label}"), ns=(ns, ns))
        os.utime(join(root, "times", f"link-{label}"), ns=(ns, ns), follow_symlinks=False)
        os.utime(join(root, "times", f"dir-{label}"), ns=(ns, ns))
    for path in (join(root, "releases", "3"), join(root, "locked"), meta, join(root, "times")):
        os.utime(path, ns=(DIR_MTIME_NS, DIR_MTIME_NS))


def _segments(fd: int, size: int) -> list[tuple[int, int]]:
    segments, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        segments.append((start, min(end, size) - start))
        offset = end
    return segments


def snapshot(root: str) -> dict[str, dict]:
    """Every entry under ``root``, by relative path (bytes), with all it carries."""
    entries: dict[bytes, dict] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(os.fsencode(root)):
        rel_dir = os.path.relpath(dirpath, os.fsencode(root))
        names = [(b".", None)] if rel_dir == b"." else []
        names += [(name, dirfd) for name in dirnames + filenames]
        for name, parent in names:
            rel = name if rel_dir == b"." else os.path.join(rel_dir, name)
            if parent is None:
                st, where = os.lstat(os.fsencode(root)), os.fsencode(root)
            else:
                st = os.lstat(name, dir_fd=parent)
                where = b"/proc/self/fd/%d/%s" % (parent, name)
            entry = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                     "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
            try:
                entry["xattrs"] = {n: os.getxattr(where, n, follow_symlinks=False)
                                   for n in sorted(os.listxattr(where, follow_symlinks=False))}
            except OSError:
                entry["xattrs"] = {}
            if stat.S_ISLNK(st.st_mode):
                entry["link"] = os.readlink(name, dir_fd=parent) if parent is not None else os.readlink(where)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=parent)
                try:
                    digest = hashlib.sha256()
                    while True:
                        block = os.read(fd, MiB)
                        if not block:
                            break
                        digest.update(block)
                    entry.update(size=st.st_size, sha256=digest.hexdigest(), segments=_segments(fd, st.st_size),
                                 sparse=st.st_blocks * 512 < st.st_size)
                finally:
                    os.close(fd)
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            entries[rel] = entry
    for names in inodes.values():
        for rel in names:
            entries[rel]["hardlinks"] = sorted(names)
    return entries


def differences(expected: dict[bytes, dict], found: dict[bytes, dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """What differs, entry by entry and field by field (``ignore`` names fields a tool is known not to keep)."""
    problems = []
    for rel in sorted(set(expected) | set(found)):
        if rel not in found:
            problems.append(f"{rel!r}: missing")
            continue
        if rel not in expected:
            problems.append(f"{rel!r}: not in the original")
            continue
        for key in sorted(set(expected[rel]) | set(found[rel])):
            if key in ignore:
                continue
            if expected[rel].get(key) != found[rel].get(key):
                problems.append(f"{rel!r}: {key} was {expected[rel].get(key)!r}, now {found[rel].get(key)!r}")
    return problems


def long_path(root: str) -> bytes:
    """The relative path of the file at the bottom of the long path."""
    return os.path.join(*[p.encode() for p in LONG_PARTS], b"bottom.txt")


def bsdtar_time(ns: int) -> int:
    """The time bsdtar (libarchive 3.6) sets for a pax time: a negative value's fraction is added, not taken away."""
    if ns >= 0:
        return ns
    whole, fraction = divmod(-ns, 10 ** 9)
    return -whole * 10 ** 9 + fraction


def tool_differences(tool: str, expected: dict[bytes, dict], found: dict[bytes, dict]) -> list[str]:
    """``differences`` after a stock tool's extraction, with the tools' known limits checked, not ignored.

    bsdtar leaves the time of the directory it extracts into as it was, and reads a pax time
    before 1970 that has a fraction up to two seconds late (GNU tar reads both exactly); the
    entries it gets wrong must be wrong in exactly that way.
    """
    found = {rel: dict(entry) for rel, entry in found.items()}
    if tool == "bsdtar":
        found[b"."]["mtime_ns"] = expected[b"."]["mtime_ns"]
        for rel, entry in expected.items():
            if rel in found and found[rel].get("mtime_ns") == bsdtar_time(entry["mtime_ns"]):
                found[rel]["mtime_ns"] = entry["mtime_ns"]
    return differences(expected, found)
