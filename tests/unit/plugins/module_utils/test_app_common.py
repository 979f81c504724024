from __future__ import annotations

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils._app import AppError, validate_app
from ansible_collections.selfhost.rollback.plugins.module_utils._common import (
    read_env_file,
    salted_hash,
    scrub,
    secret_values,
    sql_argv,
)


def app(tmp_path, **extra):
    base = {"name": "notes", "project_dir": str(tmp_path), "compose_files": None, "env_file": ".env"}
    base.update(extra)
    return base


@pytest.mark.parametrize("filename", ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"])
def test_default_compose_file_is_found(tmp_path, filename):
    (tmp_path / filename).write_text("services: {}\n")
    resolved = validate_app(app(tmp_path))
    assert resolved["compose_files"] == [str(tmp_path / filename)]
    assert resolved["project_name"] == "notes"
    assert resolved["env_file"] == str(tmp_path / ".env")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Notes App"}, "app name 'Notes App' is not usable"),
        ({"project_dir": "/nonexistent/notes"}, "project_dir /nonexistent/notes does not exist"),
        ({"compose_files": ["missing.yaml"]}, "compose file .*missing.yaml does not exist"),
        ({}, "no compose.yaml, compose.yml"),
    ],
)
def test_bad_app_definitions_say_what_to_fix(tmp_path, overrides, message):
    with pytest.raises(AppError, match=message):
        validate_app(app(tmp_path, **overrides))


def test_env_file_parsing(tmp_path):
    (tmp_path / ".env").write_text(
        "# comment\nA=1\nexport B=two\nC='quoted # not a comment'\nD=\"dq\"\nE=val # trailing\n\nbroken line\n"
    )
    assert read_env_file(str(tmp_path / ".env")) == {"A": "1", "B": "two", "C": "quoted # not a comment", "D": "dq", "E": "val"}
    assert read_env_file(str(tmp_path / "absent")) == {}


def test_secret_values_and_scrub(tmp_path):
    (tmp_path / ".env").write_text("NOTES_DB_PASSWORD=hunter2-secret\nNOTES_PORT=8080\nAPI_TOKEN=tok-123456\n")
    secrets = secret_values({"env_file": str(tmp_path / ".env")})
    assert sorted(secrets) == ["hunter2-secret", "tok-123456"]
    data = {"cmd": "psql password=hunter2-secret", "list": ["tok-123456"], "port": 8080}
    assert scrub(data, secrets) == {"cmd": "psql password=********", "list": ["********"], "port": 8080}


def test_salted_hash_is_stable_per_salt_and_hides_the_value():
    one = salted_hash("hunter2", b"salt-a")
    assert one == salted_hash("hunter2", b"salt-a")
    assert one != salted_hash("hunter2", b"salt-b")
    assert one != salted_hash("hunter3", b"salt-a")
    assert "hunter2" not in one


def test_sql_argv_never_carries_a_password():
    argv = sql_argv("postgres", "notes", "notes", "select 1")
    assert argv[:2] == ["psql", "-X"] and "-W" not in argv and not any("password" in a for a in argv)


def test_env_copy_keeps_no_secret_and_merges_the_live_values():
    from ansible_collections.selfhost.rollback.plugins.module_utils._project import KEEP_LIVE, merge_env, redact_env
    saved = redact_env("# notes\nNOTES_DB_PASSWORD=hunter2-secret\nDSN=postgres://notes:pw@db/notes\nNOTES_VERSION=1.0\n")
    assert "hunter2-secret" not in saved and "pw@" not in saved and saved.count(KEEP_LIVE) == 2
    assert "NOTES_VERSION=1.0\n" in saved and saved.startswith("# notes\n")
    merged, missing = merge_env(saved, "NOTES_VERSION=1.1\nNOTES_DB_PASSWORD='rotated'\nDSN=postgres://notes:pw@db/notes\n")
    assert merged == "# notes\nNOTES_DB_PASSWORD='rotated'\nDSN=postgres://notes:pw@db/notes\nNOTES_VERSION=1.0\n" and missing == []
    assert merge_env(saved, "NOTES_VERSION=1.1\n")[1] == ["NOTES_DB_PASSWORD", "DSN"]
