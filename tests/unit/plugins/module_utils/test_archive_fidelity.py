"""Archives keep everything a hostile tree carries, and stock GNU tar and bsdtar extract them exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _extract, _tree

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
import fidelity  # noqa: E402  (tests/fidelity.py: shared with the integration test)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setfacl") or not shutil.which("setcap"),
                                reason="owners, capabilities and ACLs need root, setfacl and setcap")


def _archived(tmp_path_factory, long_path):
    work = tmp_path_factory.mktemp("fidelity")
    src = work / "src"
    src.mkdir()
    fidelity.build(str(src), long_path=long_path)
    expected = fidelity.snapshot(str(src))
    archive = work / "tree.tar"
    with open(archive, "wb") as handle:
        writer = _archive.write_tree(str(src), handle)
    return work, expected, archive, writer.files


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    return _archived(tmp_path_factory, long_path=True)


@pytest.fixture(scope="module")
def archived_for_tools(tmp_path_factory):
    return _archived(tmp_path_factory, long_path=False)  # the stock tools stop at PATH_MAX


def test_every_case_round_trips_through_our_archive(archived):
    work, expected, archive, files = archived
    assert files[fidelity.long_path("").decode()]["size"] == 34
    assert files["current"]["link"] == "/data/releases/3"
    with open(archive, "rb") as handle:
        assert _archive.verify_stream(handle, files) == []
    dest = work / "ours"
    dest.mkdir()
    with open(archive, "rb") as handle:
        result = _extract.extract_stream(handle, str(dest))
    assert result.not_restored == []
    assert fidelity.differences(expected, fidelity.snapshot(str(dest)))[:10] == []
    assert _archive.compare_trees(files, _tree.scan_tree(str(dest))) == []


@pytest.mark.parametrize("tool", sorted(fidelity.BY_HAND))
def test_stock_tools_extract_the_same_archive_exactly(archived_for_tools, tool):
    work, expected, archive, _files = archived_for_tools
    if not shutil.which(tool.split()[-1]):
        pytest.skip(f"{tool} is not installed")
    dest = work / tool.replace(" ", "-")
    dest.mkdir()
    compressed = work / "tree.tar.zst"
    if not compressed.exists():
        subprocess.run(["zstd", "-q", "-f", str(archive), "-o", str(compressed)], check=True)
    line = fidelity.BY_HAND[tool].format(archive=compressed, dest=dest)
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fidelity.tool_differences(tool, expected, fidelity.snapshot(str(dest)))[:10] == []


def test_a_changed_attribute_fails_the_comparison(archived):
    work, _expected, archive, files = archived
    dest = work / "tampered"
    dest.mkdir()
    with open(archive, "rb") as handle:
        _extract.extract_stream(handle, str(dest))
    os.setxattr(dest / "meta" / "tagged.bin", "user.origin", b"changed")
    os.utime(dest / "current", ns=(1, 1), follow_symlinks=False)
    problems = _archive.compare_trees(files, _tree.scan_tree(str(dest)))
    assert any("'meta/tagged.bin': xattrs" in p for p in problems) and any("'current': mtime" in p for p in problems)


def test_what_the_target_refuses_is_named_not_dropped(archived, monkeypatch):
    work, _expected, archive, files = archived
    dest = work / "refusing"
    dest.mkdir()
    real = os.setxattr

    def refuse_user_xattrs(path, name, value, *args, **kwargs):  # a filesystem without user xattrs
        if name.startswith("user."):
            raise OSError(95, "Operation not supported")
        return real(path, name, value, *args, **kwargs)

    monkeypatch.setattr(os, "setxattr", refuse_user_xattrs)
    with open(archive, "rb") as handle:
        result = _extract.extract_stream(handle, str(dest))
    monkeypatch.undo()
    refused = {(e["path"], e["what"]) for e in result.not_restored}
    assert refused == {("meta/tagged.bin", "xattr user.origin"), ("meta/tagged.bin", "xattr user.binary"),
                       ("meta/shared", "xattr user.note")}
    assert "3 attribute(s) the target filesystem did not accept" in _extract.not_restored_sentence(result)
    # the comparison names nothing else: capabilities and ACLs came back
    assert _archive.compare_trees(files, _tree.scan_tree(str(dest)), not_restored=result.not_restored) == []
    assert _archive.compare_trees(files, _tree.scan_tree(str(dest)))  # and without the list, the loss shows
