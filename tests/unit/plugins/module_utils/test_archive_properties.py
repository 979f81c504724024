"""Property-based round trips of the archive writer and reader (Hypothesis).

Every generated tree (odd and non-UTF-8 names, long paths, sizes around the block and buffer
edges, sparse maps, modes with set-id bits, owners past the ustar fields, mtimes over the whole
signed 64-bit nanosecond range, xattrs whose names hold '=' and '%', symlinks, hard links and
FIFOs) is written by the collection's writer and must

- verify against its own manifest (the check a restore makes before it writes anything),
- extract with the collection's extractor to exactly the tree that was there, and
- extract with GNU tar to exactly the same tree.

A second property does the same for single headers over ranges no file system holds cheaply
(sizes past 8 GiB). Examples per property: ``TREE_EXAMPLES`` and ``HEADER_EXAMPLES`` below,
drawn the same way on every run (``derandomize``), so the unit stage stays fast and repeatable;
``HYPOTHESIS_PROFILE=explore`` draws ten times as many, at random. What Hypothesis found is kept
as explicit ``@example`` cases.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import typing as t

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _extract, _tree

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
import fidelity  # noqa: E402  (tests/fidelity.py: an entry-by-entry snapshot that owes nothing to the collection)

TREE_EXAMPLES = 120
HEADER_EXAMPLES = 400
NS = 10 ** 9
INT64 = (-(2 ** 63), 2 ** 63 - 1)
# the times that matter most: before 1970 with and without a fraction, the epoch, 2038, the ustar
# field's last second (8**11 - 1) and the next, the ends of the range
EDGE_TIMES = [-315_619_199_876_543_211, -315_619_200_000_000_000, -1, 0, 1, NS - 1, -NS, -NS - 1,
              2 ** 31 * NS, (2 ** 31 - 1) * NS + 999_999_999, (8 ** 11 - 1) * NS, 8 ** 11 * NS, INT64[0], INT64[1]]
EDGE_IDS = [0, 1, 65534, 8 ** 7 - 1, 8 ** 7, 2 ** 32 - 2]
EDGE_SIZES = [0, 1, 511, 512, 513, 1024, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 200_000]

settings.register_profile("repeatable", max_examples=TREE_EXAMPLES, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", max_examples=10 * TREE_EXAMPLES, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners and every mode round-trip only as root")

# bytes a name may hold: letters, the characters archivers trip on, and bytes that are not UTF-8
NAME_BYTES = [b"a", b"Z", b"0", b".", b"-", b" ", b"=", b"%", b"\\", b"\n", b"\t", b":", b"\xc3\xa9", b"\xe2\x9c\x93",
              b"\xe9", b"\xff", b"\x80"]
XATTR_NAME_BYTES = [b"a", b"b", b".", b"=", b"%", b"-", b" "]


def scratch_root() -> str:
    """A directory on tmpfs when there is one: it keeps every 64-bit nanosecond time, as ext4 does not."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="selfhost-archive-", dir=base)


def name_part() -> st.SearchStrategy[bytes]:
    """One path component: never empty, never '.' or '..', no '/' or NUL; now and then 255 bytes long."""
    short = st.lists(st.sampled_from(NAME_BYTES), min_size=1, max_size=12).map(b"".join)
    long = st.integers(100, 250).map(lambda n: b"L" * n)
    dotted = st.sampled_from([b"...", b"..a", b".a", b"a..", b".. ", b"-", b"= x"])
    return st.one_of(short, short, short, long, dotted).filter(lambda b: b not in (b".", b"..") and len(b) <= 255)


mtimes = st.one_of(st.sampled_from(EDGE_TIMES), st.integers(*INT64),
                   st.integers(-3 * 10 ** 18, 3 * 10 ** 18))  # from 1875 to 2065: what real trees carry
owners = st.one_of(st.sampled_from(EDGE_IDS), st.integers(0, 2 ** 32 - 2))
xattrs = st.dictionaries(st.lists(st.sampled_from(XATTR_NAME_BYTES), min_size=1, max_size=8).map(lambda b: "user." + b"".join(b).decode()),
                         st.binary(max_size=64), max_size=3)


@st.composite
def trees(draw: t.Any) -> dict[str, t.Any]:
    """A tree to build: directories, then files, sparse files, symlinks, hard links and FIFOs in them."""
    dirs: list[bytes] = [b""]
    taken: set[bytes] = set()

    def fresh(parent: bytes) -> bytes:
        part = draw(name_part())
        path = parent + b"/" + part if parent else part
        if path in taken or len(path) > 3000:  # GNU tar's PATH_MAX, with room for the extraction directory
            path = (parent + b"/" if parent else b"") + b"n%d" % len(taken)
        taken.add(path)
        return path

    for _directory in range(draw(st.integers(0, 4))):
        dirs.append(fresh(draw(st.sampled_from(dirs))))
    entries: list[dict[str, t.Any]] = [{"kind": "dir", "path": d} for d in dirs[1:]]
    for _entry in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["file", "file", "file", "sparse", "symlink", "hardlink", "fifo"]))
        entry = {"kind": kind, "path": fresh(draw(st.sampled_from(dirs)))}
        if kind == "file":
            entry["size"] = draw(st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 5000)))
        elif kind == "sparse":
            blocks = draw(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 3)), max_size=4))
            entry["segments"] = sorted({(offset * 4096, length * 4096) for offset, length in blocks})
            entry["size"] = draw(st.integers(1, 260)) * 4096 + draw(st.integers(0, 4095))
        elif kind == "symlink":
            entry["target"] = draw(st.one_of(st.sampled_from([b"/data/releases/3", b"../../../etc/passwd", b"nowhere"]),
                                             st.lists(name_part(), min_size=1, max_size=3).map(b"/".join)))
        elif kind == "hardlink":
            files = [e for e in entries if e["kind"] == "file"]
            if not files:
                entry = {"kind": "file", "path": entry["path"], "size": 3}
            else:
                entry["to"] = draw(st.sampled_from(files))["path"]
        entries.append(entry)
    for entry in entries:
        if entry["kind"] == "hardlink":
            continue  # a hard link shares its file's inode: owner, mode, time and xattrs travel with the file
        entry["mtime"] = draw(mtimes)
        entry["uid"], entry["gid"] = draw(owners), draw(owners)
        if entry["kind"] != "symlink":
            entry["mode"] = draw(st.integers(0, 0o7777))
        if entry["kind"] in ("file", "dir"):
            entry["xattrs"] = draw(xattrs)
    return {"entries": entries, "root_mtime": draw(mtimes), "seed": draw(st.integers(0, 2 ** 32))}


def build(root: str, tree: dict[str, t.Any]) -> None:
    """Write ``tree`` under ``root``: content first, then owners, xattrs, modes, and times last (deepest first)."""
    rng = random.Random(tree["seed"])
    top = os.fsencode(root)

    def at(path: bytes) -> bytes:
        return top + b"/" + path

    for entry in tree["entries"]:
        path, kind = at(entry["path"]), entry["kind"]
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            with open(path, "wb") as handle:
                handle.write(rng.randbytes(entry["size"]))
        elif kind == "sparse":
            with open(path, "wb") as handle:
                handle.truncate(entry["size"])
                for offset, length in entry["segments"]:
                    if offset < entry["size"]:
                        handle.seek(offset)
                        handle.write(rng.randbytes(min(length, entry["size"] - offset)))
        elif kind == "symlink":
            os.symlink(entry["target"], path)
        elif kind == "hardlink":
            os.link(at(entry["to"]), path)
        else:
            os.mkfifo(path)
    for entry in tree["entries"]:
        if entry["kind"] == "hardlink":
            continue
        path = at(entry["path"])
        os.chown(path, entry["uid"], entry["gid"], follow_symlinks=False)
        for name, value in entry.get("xattrs", {}).items():
            os.setxattr(path, name, value)
        if "mode" in entry:
            os.chmod(path, entry["mode"])  # after the owner: a chown clears set-id bits
    timed = [e for e in tree["entries"] if e["kind"] != "hardlink"]
    for entry in sorted(timed, key=lambda e: e["path"].count(b"/"), reverse=True):
        os.utime(at(entry["path"]), ns=(entry["mtime"], entry["mtime"]), follow_symlinks=False)
    os.utime(top, ns=(tree["root_mtime"], tree["root_mtime"]))


def gnu_tar_extract(archive: bytes, dest: str) -> None:
    proc = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C", dest],
                          input=archive, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]


def check_tree(tree: dict[str, t.Any]) -> None:
    work = scratch_root()
    try:
        src, ours, theirs = (os.path.join(work, d) for d in ("src", "ours", "gnu"))
        for directory in (src, ours, theirs):
            os.mkdir(directory)
        build(src, tree)
        expected = fidelity.snapshot(src)
        buffer = io.BytesIO()
        writer = _archive.write_tree(src, buffer)
        archive = buffer.getvalue()
        assert writer.skipped == []
        # the manifest is the tree as it was: the numbers the headers were written from
        assert _archive.compare_trees(writer.files, _tree.scan_tree(src)) == []
        # (a) the collection's own reader: verification against the manifest, then an exact extraction
        assert _archive.verify_stream(io.BytesIO(archive), writer.files) == []
        result = _extract.extract_stream(io.BytesIO(archive), ours)
        assert result.not_restored == []
        assert fidelity.differences(expected, fidelity.snapshot(ours)) == []
        assert _archive.compare_trees(writer.files, _tree.scan_tree(ours)) == []
        # (b) GNU tar reads the same stream to the same tree
        gnu_tar_extract(archive, theirs)
        assert fidelity.differences(expected, fidelity.snapshot(theirs)) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def single(kind: str, mtime: int, **fields: t.Any) -> dict[str, t.Any]:
    """A one-entry tree, for the regression cases below."""
    entry = {"kind": kind, "path": b"x", "mtime": mtime, "uid": 0, "gid": 0, **fields}
    if kind != "symlink":
        entry.setdefault("mode", 0o644)
    if kind in ("file", "dir"):
        entry.setdefault("xattrs", {})
    if kind == "file":
        entry.setdefault("size", 5)
    return {"entries": [entry], "root_mtime": 0, "seed": 1}


# found by Hypothesis (and the report that led to it), kept as explicit cases
@example(single("file", -315_619_199_876_543_211))  # before 1970 with a fraction: floor division wrote the wrong second
@example(single("dir", -1))
@example(single("symlink", -NS - 1, target=b"t"))
@example(single("file", INT64[0]))
@example(single("file", INT64[1]))
@example(single("file", 8 ** 11 * NS))  # the first second the ustar field cannot hold
@example(single("file", 0, xattrs={"user.a=b": b"v", "user.100%": b"w"}))  # '=' and '%' in an xattr name
@example(single("file", 0, uid=8 ** 7, gid=2 ** 32 - 2))
@example(single("fifo", 2 ** 31 * NS))
@example({**single("file", 0), "entries": [{**single("file", 0)["entries"][0], "path": b"a:"}]})  # not a drive letter
@given(trees())
def test_every_tree_reads_back_and_extracts_exactly(tree):
    check_tree(tree)


@pytest.mark.parametrize("mtime", EDGE_TIMES)
@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_times_before_1970_at_zero_and_after_2038_round_trip(kind, mtime):
    check_tree(single(kind, mtime, **({"target": b"somewhere"} if kind == "symlink" else {})))


@pytest.mark.parametrize("ns, text", [
    (-315_619_199_876_543_211, "-315619199.876543211"),
    (-1, "-0.000000001"),
    (-NS, "-1.000000000"),
    (0, "0.000000000"),
    (1_700_000_000_123_456_789, "1700000000.123456789"),
])
def test_pax_mtime_is_a_signed_decimal(ns, text):
    assert _archive.pax_mtime(ns) == text
    member = _archive.Member()
    member.pax_headers, member.mtime = {"mtime": text}, 0
    assert _archive.member_mtime_ns(member) == ns


HEADER_KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]


@settings(max_examples=HEADER_EXAMPLES * SCALE)
@example(name="x", mode=0o644, uid=0, gid=0, size=8 ** 11, mtime=-315_619_199_876_543_211, kind=tarfile.REGTYPE, link="")
@given(name=st.lists(name_part(), min_size=1, max_size=20).map(lambda parts: os.fsdecode(b"/".join(parts))),
       mode=st.integers(0, 0o7777), uid=owners, gid=owners,
       size=st.one_of(st.sampled_from([0, 8 ** 11 - 1, 8 ** 11, 2 ** 40, 2 ** 63 - 1]), st.integers(0, 2 ** 63 - 1)),
       mtime=mtimes, kind=st.sampled_from(HEADER_KINDS),
       link=st.one_of(st.just(""), st.lists(name_part(), min_size=1, max_size=20).map(lambda p: os.fsdecode(b"/".join(p)))))
def test_every_header_reads_back_exactly(name, mode, uid, gid, size, mtime, kind, link):
    size = size if kind == tarfile.REGTYPE else 0
    header = _archive.tar_header(name, mode, uid, gid, size, mtime, kind, link)
    assert len(header) % _archive.BLOCK == 0
    member = next(iter(_archive.TarReader(io.BytesIO(header))))
    read = (member.name, member.mode, member.uid, member.gid, member.size, _archive.member_mtime_ns(member), member.type,
            member.linkname)
    assert read == (name, mode, uid, gid, size, mtime, kind, link)
    assert stat.S_IMODE(member.mode) == mode
