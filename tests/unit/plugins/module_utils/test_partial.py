"""Partial rollbacks: which keys, files and images come back, what stays, and what is refused."""

from __future__ import annotations

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _partial, _project

REG = "127.0.0.1:5000/selfhost"


def structure(compose_extra: str = "") -> dict:
    return {
        "services": {
            "app": {"image": REG + "/notes:${NOTES_VERSION}", "environment": {"ANSWER_STYLE": "${ANSWER_STYLE}", "TZ": "${TZ}"}},
            "worker": {"image": REG + "/notes:${WORKER_VERSION}", "command": ["work"] + ([compose_extra] if compose_extra else []),
                       "environment": {"THREADS": "${WORKER_THREADS}", "TZ": "${TZ}"}},
            "db": {"image": REG + "/postgres:15"},
        },
        "volumes": {"dbdata": {}},
    }


def env(**values) -> bytes:
    base = {"NOTES_VERSION": "1.0", "WORKER_VERSION": "1.0", "WORKER_THREADS": "2", "ANSWER_STYLE": "short", "TZ": "UTC",
            "COMPOSE_PROFILES": "jobs"}
    base.update(values)
    return ("# the stack\n" + "".join(f"{k}={v}\n" for k, v in base.items())).encode()


def release(**versions) -> dict:
    v = {"app": "1.0", "worker": "1.0"}
    v.update(versions)
    return {"release_id": "r-old", "compose": {"config": structure()},
            "services": {"app": {"image_ref": f"{REG}/notes:{v['app']}", "image_id": "sha256:app" + v["app"]},
                         "worker": {"image_ref": f"{REG}/notes:{v['worker']}", "image_id": "sha256:worker" + v["worker"]},
                         "db": {"image_ref": REG + "/postgres:15", "image_id": "sha256:db"}}}


APP = {"name": "shop", "project_dir": "/srv/shop", "env_file": "/srv/shop/.env", "version_locks": []}
LIVE_IMAGES = {"app": {"image_ref": REG + "/notes:1.1", "image_id": "sha256:app1.1"},
               "worker": {"image_ref": REG + "/notes:1.1", "image_id": "sha256:worker1.1"},
               "db": {"image_ref": REG + "/postgres:15", "image_id": "sha256:db"}}
COMPOSE = b"services: {}\n"


def plan(services=(), scope="all", live_env=None, live_compose=COMPOSE, live_structure=None, app=None, target=None):
    live_env = live_env or env(NOTES_VERSION="1.1", WORKER_VERSION="1.1", WORKER_THREADS="4", ANSWER_STYLE="long")
    return _partial.plan(app or APP, target or release(), {".env": env(), "compose.yaml": COMPOSE},
                         {".env": live_env, "compose.yaml": live_compose}, live_structure or structure(), LIVE_IMAGES,
                         list(services), scope)


def env_of(result) -> dict:
    return dict(line.split("=", 1) for line in result["files"][".env"].decode().splitlines() if "=" in line)


def test_one_service_takes_back_its_image_and_its_own_keys_only():
    result = plan(["worker"])
    assert result["blocking"] == []
    assert result["back"] == {"images": ["worker"], "env": ["WORKER_THREADS", "WORKER_VERSION"], "files": []}
    assert result["images"] == {"app": "sha256:app1.1", "worker": "sha256:worker1.0", "db": "sha256:db"}
    assert env_of(result)["NOTES_VERSION"] == "1.1" and env_of(result)["ANSWER_STYLE"] == "long"
    assert env_of(result)["WORKER_VERSION"] == "1.0" and env_of(result)["WORKER_THREADS"] == "2"
    assert result["files"][".env"].decode().startswith("# the stack\n")  # every other line as it was
    assert result["kept"]["env"]["ANSWER_STYLE"] == "outside the part"
    assert sorted(result["kept"]["images"]) == ["app", "db"]


def test_a_setting_shared_with_a_service_that_stays_is_kept_and_named():
    result = plan(["worker"], live_env=env(NOTES_VERSION="1.1", WORKER_VERSION="1.1", TZ="Europe/Berlin"))
    assert result["kept"]["env"]["TZ"] == "also read by app"
    assert env_of(result)["TZ"] == "Europe/Berlin"
    assert "keep TZ as it is now (also read by app)" in result["actions"]


def test_an_image_key_shared_with_a_service_that_stays_blocks_with_the_service_to_add():
    shared = structure()
    shared["services"]["worker"]["image"] = REG + "/notes:${NOTES_VERSION}"
    target = release(worker="1.0")
    target["compose"]["config"] = shared
    result = plan(["worker"], live_structure=shared, target=target)
    assert len(result["blocking"]) == 1, result["blocking"]
    assert "worker cannot go back to" in result["blocking"][0]
    assert "reads NOTES_VERSION, which app also reads; add app to rollback_services" in result["blocking"][0]


def test_a_version_lock_takes_the_partner_along():
    result = plan(["worker"], app=dict(APP, version_locks=[["app", "worker"]]))
    assert result["services"] == ["app", "worker"]
    assert result["partners"] == ["app goes too: version lock ['app', 'worker']"]
    assert result["back"]["images"] == ["app", "worker"]


def test_config_scope_brings_settings_back_and_keeps_every_image():
    result = plan(scope="config")
    assert result["blocking"] == []
    assert result["back"]["images"] == []
    assert result["images"] == {"app": "sha256:app1.1", "worker": "sha256:worker1.1", "db": "sha256:db"}
    assert env_of(result)["ANSWER_STYLE"] == "short" and env_of(result)["WORKER_THREADS"] == "2"
    assert env_of(result)["NOTES_VERSION"] == "1.1" and env_of(result)["WORKER_VERSION"] == "1.1"
    assert result["kept"]["env"]["NOTES_VERSION"] == "outside the part"


def test_images_scope_brings_images_back_and_keeps_the_settings():
    result = plan(scope="images")
    assert result["back"]["images"] == ["app", "worker"]
    assert result["back"]["env"] == ["NOTES_VERSION", "WORKER_VERSION"]
    assert env_of(result)["ANSWER_STYLE"] == "long"


def test_compose_files_come_back_only_when_their_changes_lie_in_the_part():
    changed = structure("--fast")  # the worker's command changed in compose.yaml since the release
    result = plan(["worker"], live_compose=b"services: {worker: {}}\n", live_structure=changed)
    assert result["back"]["files"] == ["compose.yaml"]
    assert result["files"]["compose.yaml"] == COMPOSE

    both = structure("--fast")
    both["services"]["app"]["command"] = ["serve", "--new"]
    result = plan(["worker"], live_compose=b"services: {worker: {}}\n", live_structure=both)
    assert result["back"]["files"] == []
    assert result["kept"]["files"]["compose.yaml"] == "it changes app too"


def test_an_unknown_service_is_one_sentence_naming_the_option():
    result = plan(["wrker"])
    assert result["blocking"] == ["rollback_services names wrker, which release r-old does not run (its services: app, db, worker); "
                                  "fix rollback_services"]


def test_nothing_differs_in_the_part_means_no_change():
    result = plan(["db"])
    assert not _partial.changes(result)
    assert result["actions"] == []


@pytest.mark.parametrize("live, target, keys, expected", [
    ("A=1\nB=2\n", "A=0\nB=9\n", ["A"], "A=0\nB=2\n"),
    ("A=1\n", "A=1\nC=3\n", ["C"], "A=1\nC=3\n"),
    ("A=1\nC=3\n", "A=1\n", ["C"], "A=1\n"),
    ('# c\nS="x y" # note\n', 'S="a b" # was\n', ["S"], '# c\nS="a b" # was\n'),
])
def test_take_keys_moves_lines_as_written(live, target, keys, expected):
    assert _project.take_keys(live, target, keys) == expected


def test_a_pinned_image_line_moves_to_the_release_digest_for_the_service_that_goes_back_only():
    old, new = "@sha256:" + "1" * 64, "@sha256:" + "2" * 64
    text = ("services:\n  app:\n    image: reg/notes:${APP}" + new + "\n  worker:\n    image: reg/notes:${WORKER}" + new + "\n").encode()
    files = {"compose.yaml": text}
    assert _partial.repin(files, ["compose.yaml"], "worker", old, {"app"}) is None
    assert files["compose.yaml"].decode().count(old) == 1 and files["compose.yaml"].decode().count(new) == 1
    anchored = b"x: &img reg/notes:1" + new.encode() + b"\nservices:\n  app:\n    image: *img\n  worker:\n    image: *img\n"
    problem = _partial.repin({"compose.yaml": anchored}, ["compose.yaml"], "worker", old, {"app"})
    assert problem == "its image line (line 1 of compose.yaml) is shared with app, which stays"


# --------------------------------------------------------------------------- an image line others share: the images file

PINS = "/var/lib/selfhost-rollback/shop/pins.yaml"
DIGEST_OLD = "@sha256:" + "a" * 64
SHARED_APP = dict(APP, compose_files=["/srv/shop/compose.yaml"])
ANCHORED = "x-notes: &notes {ref}\nservices:\n  app:\n    image: *notes\n  worker:\n    image: *notes\n  db:\n    image: {db}\n"


def shared_case(shape: str, held: dict | None = None, services=("worker",), offered: bool = True, live_worker: str = "1.1",
                app: dict | None = None, live_env_values: dict | None = None) -> dict:
    """A project whose app and worker share one image line: through NOTES_VERSION (``variable``), through a YAML
    anchor (``anchor``), or a worker built here that reads NOTES_VERSION too (``build``); ``unpinned``: the release
    recorded the worker's image without a registry digest."""
    def project(version: str) -> dict:
        out = structure()
        line = REG + "/notes:${NOTES_VERSION}" if shape != "anchor" else f"{REG}/notes:{version}"
        out["services"]["app"]["image"] = out["services"]["worker"]["image"] = line
        if shape == "build":
            out["services"]["worker"]["build"] = {"context": "."}
        return out

    target = release()
    target["compose"]["config"] = project("1.0")
    worker = target["services"]["worker"]
    worker["pinned_ref"] = None if shape == "unpinned" else f"{REG}/notes:1.0{DIGEST_OLD}"
    worker["build"] = shape == "build"
    files = {"compose.yaml": COMPOSE}
    live_files = {"compose.yaml": COMPOSE}
    if shape == "anchor":
        files["compose.yaml"] = ANCHORED.format(ref=f"{REG}/notes:1.0", db=f"{REG}/postgres:15").encode()
        live_files["compose.yaml"] = ANCHORED.format(ref=f"{REG}/notes:1.1", db=f"{REG}/postgres:15").encode()
    live_images = dict(LIVE_IMAGES)
    if live_worker == "1.0":
        live_images["worker"] = {"image_ref": f"{REG}/notes:1.0{DIGEST_OLD}", "image_id": "sha256:worker1.0"}
    values = {"NOTES_VERSION": "1.1", "WORKER_VERSION": "1.1", "WORKER_THREADS": "4", "ANSWER_STYLE": "long"}
    values.update(live_env_values or {})
    files[".env"], live_files[".env"] = env(), env(**values)
    return _partial.plan(app or SHARED_APP, target, files, live_files, project("1.1"), live_images, list(services), "all",
                         {}, {"path": PINS, "held": held or {}} if offered else None)


@pytest.mark.parametrize("shape", ["variable", "anchor"])
def test_an_image_line_others_share_comes_back_through_the_images_file(shape):
    result = shared_case(shape)
    assert result["blocking"] == []
    assert result["back"]["images"] == ["worker"] and result["images"]["worker"] == "sha256:worker1.0"
    assert result["images"]["app"] == "sha256:app1.1"
    assert result["images_file"] == {"path": PINS, "services": {"worker": f"{REG}/notes:1.0{DIGEST_OLD}"}, "write": True,
                                     "hold": ["worker"], "release": []}
    plan = "; ".join(result["actions"])
    assert f"hold worker on {REG}/notes:1.0{DIGEST_OLD} in {PINS}, the collection's images file" in plan, plan
    assert f"a plain 'docker compose up -d' without that file brings worker forward again; COMPOSE_FILE=compose.yaml:{PINS} " \
           "in .env keeps it" in plan, plan
    kept_compose = COMPOSE if shape == "variable" else ANCHORED.format(ref=f"{REG}/notes:1.1", db=f"{REG}/postgres:15").encode()
    assert result["files"]["compose.yaml"] == kept_compose
    if shape == "variable":  # the user's files keep the shared variable
        assert env_of(result)["NOTES_VERSION"] == "1.1"
        assert "keep NOTES_VERSION as it is now (also read by app's image)" in result["actions"]
    assert _partial.changes(result)
    assert _partial.mixed("r-old", result)["images_file"] == {"worker": f"{REG}/notes:1.0{DIGEST_OLD}"}


@pytest.mark.parametrize("case, blocked", [
    ({"shape": "variable", "offered": False}, "reads NOTES_VERSION, which app also reads; add app to rollback_services"),
    ({"shape": "build"}, f"the collection's images file {PINS} cannot hold it either: the service is built here (build:)"),
    ({"shape": "unpinned"}, f"cannot hold it either: {REG}/notes:1.0 has no registry digest"),
    ({"shape": "anchor", "offered": False}, "its image line (line 1 of compose.yaml) is shared with app, which stays"),
])
def test_what_the_images_file_cannot_hold_stays_refused(case, blocked):
    result = shared_case(**case)
    assert len(result["blocking"]) == 1 and blocked in result["blocking"][0], result["blocking"]
    assert result["blocking"][0].startswith(f"worker cannot go back to {REG}/notes:1.0 alone: ")
    assert result["actions"] == [] and result["images_file"] is None


@pytest.mark.parametrize("case, services, write, release", [
    ("a second run", ("worker",), False, []),                  # the images file holds it already: nothing changes
    ("the app goes back too", ("app", "worker"), True, ["worker"]),  # NOTES_VERSION comes back: the worker's own line gives it
    ("another service goes back", ("db",), False, []),         # the worker stays, held
])
def test_what_the_images_file_holds_already(case, services, write, release):
    held = {"worker": f"{REG}/notes:1.0{DIGEST_OLD}"}
    result = shared_case("variable", held=held, services=services, live_worker="1.0", live_env_values={"WORKER_THREADS": "2"})
    assert result["blocking"] == [], (case, result["blocking"])
    assert result["images"]["worker"] == "sha256:worker1.0", case
    assert result["images_file"]["write"] is write and result["images_file"]["release"] == release, (case, result["images_file"])
    assert _partial.changes(result) is (write or bool(result["back"]["images"]) or bool(result["back"]["env"])), case
    if case == "a second run":
        assert not _partial.changes(result) and result["images_file"]["services"] == held
    if release:
        assert result["images_file"]["services"] == {} and f"take worker out of {PINS} (its own image line gives it again)" in result["actions"]
        assert env_of(result)["NOTES_VERSION"] == "1.0"


def test_a_version_lock_still_takes_the_partner_along_instead_of_the_images_file():
    result = shared_case("variable", app=dict(SHARED_APP, version_locks=[["app", "worker"]]))
    assert result["services"] == ["app", "worker"] and result["blocking"] == []
    assert result["images_file"] is None and env_of(result)["NOTES_VERSION"] == "1.0"


@pytest.mark.parametrize("values, expected", [
    ({}, f"COMPOSE_FILE=compose.yaml:compose.override.yaml:{PINS}"),
    ({"COMPOSE_PATH_SEPARATOR": ";"}, f"COMPOSE_FILE=compose.yaml;compose.override.yaml;{PINS}"),
])
def test_the_compose_file_setting_that_keeps_the_images_file(values, expected):
    app = dict(APP, compose_files=["/srv/shop/compose.yaml", "/srv/shop/compose.override.yaml"])
    assert _partial.compose_file_setting(app, PINS, values) == expected
    assert _partial.names_images_file(PINS, dict(values, COMPOSE_FILE=expected.split("=", 1)[1]))
    assert not _partial.names_images_file(PINS, {"COMPOSE_FILE": "compose.yaml"})


def test_a_mixed_release_says_what_the_images_file_holds():
    result = shared_case("variable")
    record = {"mixed": _partial.mixed("r-old", result)}
    assert _partial.held_by(record) == {"worker": f"{REG}/notes:1.0{DIGEST_OLD}"}
    assert _partial.held_by({"mixed": None}) == {} and _partial.held_by({}) == {}
