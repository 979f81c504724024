"""Release ids, fingerprints, references and archive retention: the pure parts."""

from __future__ import annotations

import copy
import os
import stat

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils._images import (
    archive_changes,
    familiar_name,
    pinned_reference,
    repo_digest_for,
    retained_releases,
    split_reference,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._release import (
    build_record,
    content_digest,
    ensure_salt,
    fingerprint,
    plan_archive,
    release_id_for,
    releases,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._artifacts import tree_digest

D = "sha256:" + "a" * 64


def state(**changes):
    base = {
        "compose": {"project_name": "notes", "files": [{"path": "compose.yaml", "sha256": D, "content": "services: {}\n"}]},
        "services": {"app": {"image_ref": "r/notes:1.0", "image_id": "sha256:" + "1" * 64, "repo_digest": D}},
        "config_fingerprint": {"NOTES_DB_PASSWORD": "hmac-sha256:00"},
        "runtime": {"engine_version": "20.10.24", "api_version": "1.41", "compose_version": "2.26.1"},
        "schema_version": "1",
        "artifacts": {},
        "volumes": {"dbdata": "notes_dbdata"},
    }
    base.update(changes)
    return base


def test_the_content_digest_ignores_timestamps_ids_and_archive_bookkeeping():
    a = state()
    b = dict(copy.deepcopy(a), recorded_at="2030-01-01T00:00:00Z", release_id="r-x", images_archived={"x": "y"})
    assert content_digest(a) == content_digest(b)


@pytest.mark.parametrize("change", [
    {"schema_version": "2"},
    {"config_fingerprint": {"NOTES_DB_PASSWORD": "hmac-sha256:01"}},
    {"runtime": {"engine_version": "24.0.0", "api_version": "1.43", "compose_version": "2.26.1"}},
    {"artifacts": {"models": {"digest": D}}},
])
def test_any_part_of_the_contract_changes_the_digest(change):
    assert content_digest(state()) != content_digest(state(**change))


def test_the_release_id_is_stable_for_the_same_content():
    digest = content_digest(state())
    assert release_id_for(digest, "20261122T020705Z") == f"r-20261122T020705Z-{digest[7:15]}"
    first = build_record("notes", state(), None)
    assert build_record("notes", state(), first) is first
    assert first["format"] == 1 and first["content_digest"] == digest


def test_fingerprints_never_hold_the_value_and_depend_on_the_salt():
    one = fingerprint({"PW": "hunter22", "EMPTY": "", "UNSET": None}, b"salt-a")
    two = fingerprint({"PW": "hunter22"}, b"salt-b")
    assert "hunter22" not in repr(one)
    assert one["PW"].startswith("hmac-sha256:") and one["PW"] != two["PW"]
    assert one["UNSET"] == "unset" and one["EMPTY"] != one["PW"]
    assert fingerprint({"PW": "hunter22"}, b"salt-a") == {"PW": one["PW"]}


def test_the_salt_is_created_once_and_private(tmp_path):
    ledger = Ledger(str(tmp_path / "store"), "notes")
    salt = ensure_salt(ledger)
    assert ensure_salt(ledger) == salt and len(salt) == 64
    assert stat.S_IMODE(os.stat(ledger.path("salt")).st_mode) == 0o600


def test_a_tree_digest_follows_content_and_names(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.bin").write_bytes(b"weights")
    first = tree_digest(str(tmp_path / "m"))
    assert tree_digest(str(tmp_path / "m")) == first
    (tmp_path / "m" / "a.bin").write_bytes(b"weights2")
    assert tree_digest(str(tmp_path / "m"))[0] != first[0]


@pytest.mark.parametrize("ref,expected", [
    ("postgres", ("postgres", None, None)),
    ("postgres:15", ("postgres", "15", None)),
    ("127.0.0.1:5000/selfhost/notes", ("127.0.0.1:5000/selfhost/notes", None, None)),
    ("127.0.0.1:5000/selfhost/notes:1.0", ("127.0.0.1:5000/selfhost/notes", "1.0", None)),
    ("host:5000/x:1@" + D, ("host:5000/x", "1", D)),
    ("x@" + D, ("x", None, D)),
])
def test_references_split_with_registry_ports(ref, expected):
    assert split_reference(ref) == expected


def test_pinned_reference_and_repo_digest_matching():
    assert pinned_reference("host:5000/x", D) == "host:5000/x:latest@" + D
    assert familiar_name("docker.io/library/postgres") == "postgres"
    attrs = {"RepoDigests": ["other/repo@sha256:" + "b" * 64, "postgres@" + D]}
    assert repo_digest_for(attrs, "docker.io/library/postgres") == D
    assert repo_digest_for(attrs, "mysql") is None


def write_release(ledger, rid, recorded_at, image_ids):
    ledger.write(f"releases/{rid}.json", {
        "release_id": rid, "recorded_at": recorded_at,
        "services": {f"s{i}": {"image_id": image_id, "image_ref": f"r/{i}:1"} for i, image_id in enumerate(image_ids)},
    })


def test_retention_keeps_the_newest_and_the_current_release(tmp_path):
    ledger = Ledger(str(tmp_path), "notes")
    for n in range(5):
        write_release(ledger, f"r-{n}", f"2030-01-0{n + 1}T00:00:00Z", [f"sha256:{n}"])
    ledger.write("current_release.json", {"release_id": "r-0"})
    assert retained_releases(releases(ledger), 2, "r-0") == ["r-3", "r-4", "r-0"]
    assert plan_archive(ledger, 2)["retained"] == ["r-3", "r-4", "r-0"]
    pending = {"release_id": "r-5", "recorded_at": "2030-01-09T00:00:00Z", "services": {}}
    assert plan_archive(ledger, 2, pending)["retained"] == ["r-4", "r-5"]
    assert retained_releases(releases(ledger), 0, "r-gone") == []


def test_an_archive_a_retained_release_needs_is_never_planned_for_removal(tmp_path):
    ledger = Ledger(str(tmp_path), "notes")
    write_release(ledger, "r-old", "2030-01-01T00:00:00Z", ["sha256:shared", "sha256:old-only"])
    write_release(ledger, "r-new", "2030-01-02T00:00:00Z", ["sha256:shared"])
    ledger.ensure("images")
    for name in ("shared", "old-only"):
        open(ledger.path("images", f"{name}.tar.zst"), "wb").close()
    ledger.write("images/index.json", {"format": 1, "archives": {
        "sha256:shared": {"file": "shared.tar.zst", "releases": ["r-new", "r-old"], "refs": ["r/0:1"]},
        "sha256:old-only": {"file": "old-only.tar.zst", "releases": ["r-old"], "refs": ["r/1:1"]},
    }})
    plan = plan_archive(ledger, 1)
    assert plan["retained"] == ["r-new"] and plan["export"] == []
    assert plan["remove"] == ["sha256:old-only"]
    assert archive_changes(plan)
    plan = plan_archive(ledger, 2)
    assert plan["remove"] == [] and plan["export"] == []
    assert not archive_changes(plan)
