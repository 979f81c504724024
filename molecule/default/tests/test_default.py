"""Verify the converged host with testinfra: what the prerequisites role promises."""

from __future__ import annotations

import os


def test_docker_engine_answers(host):
    assert host.run("docker version --format '{{.Server.Version}}'").rc == 0


def test_compose_v2_plugin(host):
    out = host.check_output("docker compose version --short")
    assert out.split(".")[0] in {"2", "v2"}


def test_docker_sdk_importable(host):
    python = os.environ.get("MOLECULE_PYTHON", "python3")
    assert host.run(f"{python} -c 'import docker'").rc == 0


def test_ledger_root_is_private(host):
    store = host.file(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ledger"))
    assert store.is_directory
    assert store.mode == 0o700
