"""health_gate against the real demo app: a good release passes, 2.1 fails with numbers."""

from __future__ import annotations

import stat


def gate(demo_app, **params):
    return {"app": demo_app.definition(), "store": str(demo_app.store), "probes": 10, "wait": 30, **params}


def test_baseline_then_judge_good_and_broken_versions(demo_app, module_playbook):
    baseline_file = demo_app.store / demo_app.name / "baselines" / "r-test.json"

    run, result = module_playbook("selfhost.rollback.health_gate", gate(demo_app, mode="baseline", baseline="r-test"), check=True)
    assert run.rc == 0 and result["changed"] is True and result["passed"] is True, run.stdout
    assert not baseline_file.exists()  # check mode wrote nothing

    run, result = module_playbook("selfhost.rollback.health_gate", gate(demo_app, mode="baseline", baseline="r-test"))
    assert run.rc == 0 and result["changed"] is True, run.stdout
    assert result["figures"]["requests"] == 10 and result["figures"]["error_rate"] == 0
    assert stat.S_IMODE(baseline_file.stat().st_mode) == 0o600

    run, result = module_playbook("selfhost.rollback.health_gate", gate(demo_app, baseline="r-test"))
    assert run.rc == 0 and result["changed"] is False and result["passed"] is True, run.stdout
    assert result["baseline"]["figures"]["requests"] == 10
    assert result["time_to_healthy_s"] is not None

    demo_app.deploy("2.1", wait=False)
    run, result = module_playbook("selfhost.rollback.health_gate", gate(demo_app, baseline="r-test", wait=20))
    assert run.rc != 0
    assert result["passed"] is False
    assert result["msg"].startswith(f"app {demo_app.name} failed its health gate: ")
    assert "error rate 100% (10 of 10 probes failed, answers {'503': 10}) is above the limit of 5%" in result["reasons"]
    assert "service app reports health 'unhealthy'" in result["reasons"]

    run, result = module_playbook("selfhost.rollback.health_gate", gate(demo_app, mode="probe", wait=1))
    assert run.rc == 0 and result["passed"] is False and result["figures"]["errors"] == 10


def test_broken_release_cannot_become_the_baseline(demo_project, module_playbook):
    demo_project.deploy("2.1", wait=False)
    run, result = module_playbook("selfhost.rollback.health_gate", gate(demo_project, mode="baseline", wait=15))
    assert run.rc != 0 and result["msg"].startswith(f"app {demo_project.name} cannot be the baseline: ")
    assert not (demo_project.store / demo_project.name / "baselines").exists()


def test_no_health_url_is_a_clear_error(demo_project, module_playbook):
    params = {"app": demo_project.definition(health=None), "store": str(demo_project.store)}
    run, result = module_playbook("selfhost.rollback.health_gate", params)
    assert run.rc != 0 and "health.url is not set" in result["msg"]
