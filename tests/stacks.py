"""Helpers for projects deployed the way users deploy them: ``docker compose`` run in the
project's directory with no -f and no -p, and the check that what runs is what Compose says."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def compose(directory: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``docker compose ARGS`` exactly as the user runs it: in the directory, nothing else."""
    proc = subprocess.run(["docker", "compose", *args], cwd=directory, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} in {directory} failed: {proc.stderr[-2000:]}")
    return proc


def assert_runs_what_compose_says(directory: Path, client: Any, step: str, one_shot: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every service ``docker compose config`` defines for the directory has one container, on the
    image and with the environment Compose resolves; nothing else runs in the project; one-shot
    services ended with exit code 0. Returns the resolved config."""
    config = json.loads(compose(directory, "config", "--format", "json").stdout)
    services = config["services"]
    found: dict[str, list[Any]] = {}
    for container in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={config['name']}"}):
        found.setdefault(container.labels["com.docker.compose.service"], []).append(container)
    assert set(found) == set(services), f"{step}: containers of {sorted(found)}, Compose defines {sorted(services)}"
    for name, spec in services.items():
        assert len(found[name]) == 1, (step, name, [c.name for c in found[name]])
        container = found[name][0]
        container.reload()
        state = container.attrs["State"]
        if name in one_shot:
            assert (state["Status"], state["ExitCode"]) == ("exited", 0), (step, name, state)
        else:
            assert state["Status"] == "running", (step, name, state["Status"])
        assert container.attrs["Image"] == client.images.get(spec["image"]).id, f"{step}: {name} does not run {spec['image']}"
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        for key, value in (spec.get("environment") or {}).items():
            assert env.get(key) == value, f"{step}: {name} has {key}={env.get(key)!r}, Compose says {value!r}"
    return config
