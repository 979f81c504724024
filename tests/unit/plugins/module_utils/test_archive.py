"""Archives of file data: exact round trips and the extraction rules."""

from __future__ import annotations

import io
import os
import subprocess
import stat
import tarfile
import time

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _extract, _tree


def build_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "empty dir"))
    os.makedirs(os.path.join(root, "sub/deeper"))
    names = ["plain.txt", "with space.txt", "ünïcødé ✓.md", "new\nline", "tab\tname"]
    for index, name in enumerate(names):
        with open(os.path.join(root, "sub", name), "wb") as handle:
            handle.write(f"content {index}\n".encode() * (index + 1))
    raw = os.path.join(root.encode(), b"sub", b"latin1-\xe9t\xe9")
    with open(raw, "wb") as handle:
        handle.write(b"not utf-8 name")
    os.symlink("plain.txt", os.path.join(root, "sub", "link-to-plain"))
    os.symlink("../sub/deeper", os.path.join(root, "sub", "deeper-link"))
    os.link(os.path.join(root, "sub", "plain.txt"), os.path.join(root, "hardlink.txt"))
    sparse = os.path.join(root, "sparse.img")
    with open(sparse, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
        handle.seek(4096 * 100)
        handle.write(b"data in the middle")
        handle.seek(64 * 1024 * 1024 - 10)
        handle.write(b"tail bytes")
    os.chmod(os.path.join(root, "sub", "with space.txt"), 0o604)
    os.chmod(os.path.join(root, "sub", "deeper"), 0o2750)
    os.chmod(os.path.join(root, "empty dir"), 0o711)
    os.chown(os.path.join(root, "sub", "plain.txt"), 1234, 4321)
    os.mkfifo(os.path.join(root, "a fifo"))
    os.chmod(root, 0o750)


def roundtrip(src: str, dest: str) -> dict:
    buffer = io.BytesIO()
    writer = _archive.write_tree(src, buffer)
    assert _archive.verify_stream(io.BytesIO(buffer.getvalue()), writer.files) == []
    os.makedirs(dest)
    _extract.extract_stream(io.BytesIO(buffer.getvalue()), dest)
    return writer.files


@pytest.mark.skipif(os.geteuid() != 0, reason="owners round-trip only as root")
def test_odd_files_round_trip_exactly(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "dest")
    os.makedirs(src)
    build_tree(src)
    files = roundtrip(src, dest)
    assert _archive.compare_trees(files, _tree.scan_tree(dest)) == []
    assert _tree.scan_tree(src) == _tree.scan_tree(dest)
    assert files["sparse.img"]["sparse"] is True
    restored = os.stat(os.path.join(dest, "sparse.img"))
    assert restored.st_size == 64 * 1024 * 1024 and restored.st_blocks * 512 < 1024 * 1024
    with open(os.path.join(dest, "sparse.img"), "rb") as handle:
        handle.seek(4096 * 100)
        assert handle.read(18) == b"data in the middle"
    assert os.stat(os.path.join(dest, "hardlink.txt")).st_ino == os.stat(os.path.join(dest, "sub", "plain.txt")).st_ino
    assert os.readlink(os.path.join(dest, "sub", "deeper-link")) == "../sub/deeper"
    assert stat.S_IMODE(os.stat(os.path.join(dest, "sub", "deeper")).st_mode) == 0o2750
    assert os.stat(os.path.join(dest, "sub", "plain.txt")).st_uid == 1234
    assert os.path.exists(os.path.join(dest.encode(), b"sub", b"latin1-\xe9t\xe9"))
    assert os.listdir(os.path.join(dest, "empty dir")) == []
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o750


def test_a_changed_byte_is_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello world")
    buffer = io.BytesIO()
    writer = _archive.write_tree(str(src), buffer)
    data = bytearray(buffer.getvalue())
    data[data.index(b"hello world")] ^= 0x01
    problems = _archive.verify_stream(io.BytesIO(bytes(data)), writer.files)
    assert problems and "'a.txt': sha256" in problems[0]


def test_symlinks_are_stored_verbatim_and_never_followed(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "releases" / "3").mkdir(parents=True)
    os.symlink("/data/releases/3", src / "current")  # absolute, as the container sees it
    os.symlink("/etc/passwd", src / "escape")
    os.symlink("../../outside", src / "releases" / "up")
    files = roundtrip(str(src), str(dest))
    assert files["current"]["link"] == "/data/releases/3"
    assert os.readlink(dest / "escape") == "/etc/passwd" and os.readlink(dest / "releases" / "up") == "../../outside"
    assert _archive.compare_trees(files, _tree.scan_tree(str(dest))) == []


def hostile(*members: tarfile.TarInfo, data: bytes = b"x") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(data) if member.isreg() else None)
    buffer.seek(0)
    return buffer


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


HOSTILE = {
    "absolute path": [member("/tmp/selfhost-pwned")],
    "dot-dot": [member("../selfhost-pwned")],
    "dot-dot inside": [member("a/../../selfhost-pwned")],
    "write through absolute symlink": [member("link", tarfile.SYMTYPE, "/tmp"), member("link/selfhost-pwned")],
    "write through escaping symlink": [member("link", tarfile.SYMTYPE, "../.."), member("link/selfhost-pwned")],
    "write through symlink": [member("d", tarfile.DIRTYPE), member("d/link", tarfile.SYMTYPE, ".."),
                              member("d/link/pwned")],
    "hard link outside": [member("hard", tarfile.LNKTYPE, "/etc/passwd")],
    "hard link escaping": [member("hard", tarfile.LNKTYPE, "../outside")],
    "hard link to unknown": [member("hard", tarfile.LNKTYPE, "nothing-before")],
    "char device": [member("null", tarfile.CHRTYPE)],
    "block device": [member("sda", tarfile.BLKTYPE)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused(tmp_path, case):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(_archive.UnsafeMember):
        _extract.extract_stream(hostile(*HOSTILE[case]), str(dest))
    assert not (tmp_path / "selfhost-pwned").exists()
    assert not os.path.exists("/tmp/selfhost-pwned")


def test_safe_members_extract(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    count = _extract.extract_stream(hostile(member("dir", tarfile.DIRTYPE), member("dir/file"),
                                            member("dir/rel", tarfile.SYMTYPE, "file"),
                                            member("hard", tarfile.LNKTYPE, "dir/file")), str(dest))
    assert count.count == 4 and count.not_restored == []
    assert (dest / "hard").read_bytes() == b"x" and os.readlink(dest / "dir" / "rel") == "file"


def test_changes_since_a_set_are_read_from_the_tree_without_reading_files(tmp_path):
    (tmp_path / "kept.txt").write_text("same")
    (tmp_path / "grown.txt").write_text("short")
    (tmp_path / "gone.txt").write_text("x")
    expected = _tree.scan_tree(str(tmp_path))
    taken = time.time()
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "grown.txt").write_text("much longer now")
    (tmp_path / "new.txt").write_text("new")
    old = taken - 60
    os.utime(tmp_path / "kept.txt", (old, old))
    changes = _tree.changes_since(expected, str(tmp_path), taken)
    assert (changes["added"], changes["changed"], changes["removed"]) == (1, 1, 1), changes
    assert changes["examples"] == ["gone.txt", "grown.txt", "new.txt"]


def test_a_cut_or_damaged_stream_is_named_not_read_as_less(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(300_000))
    buffer = io.BytesIO()
    writer = _archive.write_tree(str(src), buffer)
    data = buffer.getvalue()
    cut = _archive.verify_stream(io.BytesIO(data[:len(data) // 2]), writer.files)
    assert cut and "ends inside" in cut[0], cut
    damaged = bytearray(data)
    damaged[data.index(b"big.bin") + 100] ^= 0x01  # the mode field of the file's ustar header
    problems = _archive.verify_stream(io.BytesIO(bytes(damaged)), writer.files)
    assert problems and "checksum is wrong" in problems[0], problems
    with pytest.raises(_archive.ArchiveError, match="ends inside"):
        _extract.extract_stream(io.BytesIO(data[:len(data) // 2]), str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="owners round-trip only as root")
def test_what_gnu_tar_writes_is_read_exactly(tmp_path):
    """The reader is not tied to our writer: GNU tar's own pax archives (sparse 1.0, long names) read the same."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / ("n" * 150)).mkdir(parents=True)
    (src / ("n" * 150) / ("f" * 120)).write_text("long names\n")
    with open(src / "holes.img", "wb") as handle:
        handle.write(b"head")
        handle.truncate(8 * 1024 * 1024)
    os.symlink("/elsewhere", src / "abs-link")
    archive = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--format=posix", "--sparse", "--sparse-version=1.0", "-C", str(src), "-cf", str(archive), "."],
                   check=True, capture_output=True)
    dest.mkdir()
    with open(archive, "rb") as handle:
        _extract.extract_stream(handle, str(dest))
    expected, found = _tree.scan_tree(str(src)), _tree.scan_tree(str(dest))
    assert {k: {f: v for f, v in r.items() if f != "mtime"} for k, r in found.items()} == \
           {k: {f: v for f, v in r.items() if f != "mtime"} for k, r in expected.items()}
    assert os.stat(dest / "holes.img").st_blocks * 512 < 1024 * 1024
