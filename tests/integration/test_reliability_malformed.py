"""Reliability: malformed input through the playbooks. Broken YAML, an unknown app, an
unknown release, a missing project dir, wrong database credentials: each fails with one
sentence that names what is wrong, and nothing changes."""

from __future__ import annotations

from reliability import inventory_for, project_state

FAILED = ("failed", "unreachable")


def first_failure(run) -> str:
    failed = [r for r in run.results if r["status"] in FAILED]
    assert failed, f"nothing failed:\n{run.stdout[-3000:]}"
    return failed[0]["result"].get("msg", "")


def test_malformed_input_fails_in_one_sentence_and_changes_nothing(demo_app, run_playbook, module_playbook, docker_client,
                                                                   tmp_path):
    demo = demo_app
    inventory = inventory_for(demo, tmp_path)
    # an app as the first pre_upgrade leaves it: pinned, one release recorded
    run, _result = module_playbook("selfhost.rollback.pin", {"app": demo.definition(), "store": str(demo.store)})
    assert run.rc == 0, run.stdout[-3000:]
    run, _result = module_playbook("selfhost.rollback.release", {"app": demo.definition(), "store": str(demo.store),
                                                                 "archive_images": False})
    assert run.rc == 0, run.stdout[-3000:]

    def refused(playbook: str, expected: str, extra: dict | None = None, app: dict | None = None, prepare=None, undo=None):
        inv = inventory
        if app:
            where = tmp_path / f"inventory-{len(list(tmp_path.glob('inv-*')))}"
            where.mkdir()
            (tmp_path / f"inv-{where.name}").touch()
            inv = inventory_for(demo, where, rollback_apps=[app])
        if prepare:
            prepare()
        before = project_state(demo, docker_client)
        outcome = run_playbook(playbook, extra or {}, inventory=inv)
        after = project_state(demo, docker_client)
        if undo:
            undo()
        assert outcome.rc != 0, outcome.stdout[-3000:]
        message = first_failure(outcome)
        assert expected in message, (expected, message)
        assert "\n" not in message.strip() and "Traceback" not in message, message
        assert after == before, f"{playbook} changed something after: {message}"
        return message

    compose = demo.project_dir / "compose.yaml"
    good = compose.read_text()
    broken = good.replace("services:", "services:\n  - [unclosed", 1)
    for_yaml = refused("selfhost.rollback.pre_upgrade", "not valid YAML",
                       prepare=lambda: compose.write_text(broken), undo=lambda: compose.write_text(good))
    unknown_app = refused("selfhost.rollback.rollback", "nosuch",
                          app=demo.definition(name=f"nosuch-{demo.name}"))
    unknown_release = refused("selfhost.rollback.rollback", "r-20000101T000000Z-deadbeef",
                              extra={"rollback_target": "r-20000101T000000Z-deadbeef"})
    missing_dir = refused("selfhost.rollback.upgrade", str(tmp_path / "gone"),
                          extra={"upgrade_env": {"NOTES_VERSION": "1.1"}},
                          app=demo.definition(project_dir=str(tmp_path / "gone")))
    wrong_user = refused("selfhost.rollback.pre_upgrade", 'role "nosuchuser" does not exist',
                         app=demo.definition(databases=[{"service": "db", "engine": "postgres", "database": "notes",
                                                         "user": "nosuchuser"}]))
    for message in (for_yaml, unknown_app, unknown_release, missing_dir, wrong_user):
        print(message)
    demo.wait_healthy(timeout=5)
