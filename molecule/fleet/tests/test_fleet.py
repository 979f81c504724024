"""Verify each converged test host with testinfra, over the Ansible (SSH) connection."""

from __future__ import annotations


def test_reached_over_ssh(host):
    name = host.ansible.get_variables()["inventory_hostname"]
    assert host.check_output("hostname") == name
    assert host.check_output("sh -c 'echo $SSH_CONNECTION'").split()[-1] == "22"


def test_its_own_docker_engine_answers(host):
    assert host.check_output("docker version --format '{{.Server.Version}}'").startswith("20.10")
    assert host.check_output("docker info --format '{{.Name}}'") == host.check_output("hostname")


def test_compose_v2_plugin(host):
    assert host.check_output("docker compose version --short").lstrip("v").split(".")[0] == "2"


def test_docker_sdk_importable(host):
    assert host.run("/usr/bin/python3 -c 'import docker'").rc == 0


def test_archive_tools(host):
    for tool in ("zstd", "tar"):
        assert host.exists(tool)


def test_ledger_root_is_private(host):
    store = host.file("/var/lib/selfhost-rollback")
    assert store.is_directory and store.mode == 0o700 and store.user == "root"


def test_root_logs_in_by_key_only(host):
    config = host.check_output("sshd -T")
    assert "permitrootlogin without-password" in config
    assert "passwordauthentication no" in config
