from __future__ import annotations

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils._app import AppError, normalize_project_name, validate_app
from ansible_collections.selfhost.rollback.plugins.module_utils._database import sql_argv
from ansible_collections.selfhost.rollback.plugins.module_utils._digest import salted_hash
from ansible_collections.selfhost.rollback.plugins.module_utils._project import parse_env_text, read_env_file, secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._secrets import scrub


def app(tmp_path, **extra):
    base = {"name": "notes", "project_dir": str(tmp_path), "compose_files": None, "env_file": ".env"}
    base.update(extra)
    return base


@pytest.mark.parametrize("filename", ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"])
def test_default_compose_file_is_found(tmp_path, filename):
    (tmp_path / filename).write_text("services: {}\n")
    resolved = validate_app(app(tmp_path))
    assert resolved["compose_files"] == [str(tmp_path / filename)]
    assert resolved["project_name"] == normalize_project_name(tmp_path.name)  # what 'docker compose' names it
    assert resolved["project_name_from"] == "the project directory's name"
    assert resolved["env_file"] == str(tmp_path / ".env")


def test_the_override_file_is_read_as_compose_reads_it(tmp_path):
    for name in ("compose.yaml", "docker-compose.yml", "compose.override.yaml", "docker-compose.override.yml"):
        (tmp_path / name).write_text("services: {}\n")
    resolved = validate_app(app(tmp_path))
    assert resolved["compose_files"] == [str(tmp_path / "compose.yaml"), str(tmp_path / "compose.override.yaml")]
    assert resolved["compose_files_from"] == "the default file names"


def test_compose_variables_come_from_the_environment_first_then_the_env_file(tmp_path, monkeypatch):
    for name in ("compose.yaml", "a.yaml", "b.yaml"):
        (tmp_path / name).write_text("services: {}\n")
    (tmp_path / ".env").write_text("COMPOSE_FILE=compose.yaml;a.yaml\nCOMPOSE_PATH_SEPARATOR=;\nCOMPOSE_PROJECT_NAME=shop\n")
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    resolved = validate_app(app(tmp_path))
    assert resolved["compose_files"] == [str(tmp_path / "compose.yaml"), str(tmp_path / "a.yaml")]
    assert (resolved["project_name"], resolved["project_name_from"]) == ("shop", "COMPOSE_PROJECT_NAME")
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "store")
    monkeypatch.setenv("COMPOSE_FILE", "b.yaml")
    resolved = validate_app(app(tmp_path))
    assert resolved["project_name"] == "store" and resolved["compose_files"] == [str(tmp_path / "b.yaml")]
    assert validate_app(app(tmp_path, project_name="mine"))["project_name"] == "mine"


@pytest.mark.parametrize(("directory", "expected"), [("Shop App.v2", "shopappv2"), ("_notes-1", "notes-1"), ("AI_Stack", "ai_stack")])
def test_project_names_are_normalised_as_compose_does(directory, expected):
    assert normalize_project_name(directory) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Notes App"}, "app name 'Notes App' is not usable"),
        ({"project_dir": "/nonexistent/notes"}, "project_dir /nonexistent/notes does not exist"),
        ({"compose_files": ["missing.yaml"]}, "compose file .*missing.yaml does not exist"),
        ({}, "no compose.yaml, compose.yml, docker-compose.yml or docker-compose.yaml"),
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


def test_env_file_parsing_follows_compose(tmp_path):
    """The cases Compose 2.26 was asked about (its answers in the comments); integration tests ask it again."""
    text = (
        'A="x" # comment\n'            # x
        "B='y' # c2\n"                  # y
        "D=plain#nospace\n"             # plain#nospace
        'E="multi\\nline \\"q\\" \\$HOME"\n'   # multi<newline>line "q" $HOME
        "F='lit ${A} \\n'\n"            # lit ${A} \n
        "G=${A}-exp\n"                  # x-exp
        'H="${B}-dq"\n'                 # y-dq
        "I=  spaced  \n"                # spaced
        "J:colon\n"                     # colon
        "O=$A$B\n"                      # xy
        'P="a\nb"\n'                    # a<newline>b
        "Q=${NOPE:-fallback}\n"         # fallback
    )
    assert parse_env_text(text, environ={}) == {
        "A": "x", "B": "y", "D": "plain#nospace", "E": 'multi\nline "q" $HOME', "F": "lit ${A} \\n", "G": "x-exp",
        "H": "y-dq", "I": "spaced", "J": "colon", "O": "xy", "P": "a\nb", "Q": "fallback"}


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


def test_project_files_follow_include_extends_and_env_file(tmp_path):
    from ansible_collections.selfhost.rollback.plugins.module_utils._project import env_files, project_files

    (tmp_path / "compose.yaml").write_text(
        "include:\n  - stacks/db.yaml\n  - path: [stacks/cache.yaml]\n    env_file: cache.env\n"
        "services:\n  app:\n    image: x\n    env_file: [app.env, {path: \"${OPTIONAL}.env\", required: false}]\n"
        "  worker:\n    extends: {file: common/base.yaml, service: base}\n  far:\n    env_file: ../outside.env\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "db.yaml").write_text("services:\n  db:\n    image: y\n    env_file: db.env\n")
    (tmp_path / "stacks" / "cache.yaml").write_text("services:\n  cache:\n    image: z\n")
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.yaml").write_text("services:\n  base:\n    image: w\n")
    for name in ("app.env", "cache.env", "stacks/db.env", ".env"):
        (tmp_path / name).write_text("K=v\n")
    resolved = validate_app(app(tmp_path))
    assert sorted(project_files(resolved)) == [".env", "app.env", "cache.env", "common/base.yaml", "compose.yaml",
                                               "stacks/cache.yaml", "stacks/db.env", "stacks/db.yaml"]
    assert env_files(resolved) == {".env", "app.env", "cache.env", "stacks/db.env"}


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        ([{"name": "q", "path": "/a", "min": 1}, {"name": "q", "path": "/b", "min": 1}], "signal 'q' is declared twice"),
        ([{"name": "q", "min": 1}], "needs exactly one of path .* or command"),
        ([{"name": "q", "path": "/a", "command": ["x"], "min": 1}], "needs exactly one of path"),
        ([{"name": "q", "command": ["depth"], "min": 1}], "names no service"),
        ([{"name": "q", "path": "/a"}], "signal 'q' has no limit"),
    ],
)
def test_bad_signals_say_what_to_fix(tmp_path, signals, message):
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    with pytest.raises(AppError, match=message):
        validate_app(app(tmp_path, signals=signals))


def test_a_smoke_pattern_that_is_not_a_regex_is_named(tmp_path):
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    with pytest.raises(AppError, match="matches '\\(' is not a regular expression"):
        validate_app(app(tmp_path, smoke=[{"path": "/", "matches": "("}]))
