# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restic backend, driven through the restic CLI (private to the collection).

The repository password reaches restic only through RESTIC_PASSWORD_FILE (a 0600
temporary file) or a password file the operator names; never through argv. Exit
codes are taken at their word: 0 is success, 3 ("some source data could not be
read") is a failure here, like every other non-zero code.

The ``restic`` option the backup set modules share, and the :class:`Restic` it
describes, come from :func:`restic_option_spec` and :func:`restic_from_params`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import typing as t

EXIT_MEANINGS = {
    1: "fatal error (no snapshot created)",
    3: "some source data could not be read (incomplete snapshot)",
    10: "the repository does not exist",
    11: "the repository is locked",
    12: "wrong password",
    130: "interrupted",
}


class ResticError(Exception):
    """A restic command that did not succeed; the message is for the operator."""


class Restic:
    """One restic repository, with its password kept off the command line."""

    def __init__(self, repository: str, password: str | None = None, password_file: str | None = None,
                 binary: str | None = None, extra_env: dict[str, str] | None = None, options: list[str] | None = None) -> None:
        self.binary = binary or shutil.which("restic") or ""
        if not self.binary:
            raise ResticError("the restic CLI is not installed on this host; install restic or use the local backend")
        if not password and not password_file:
            raise ResticError("the restic backend needs a password or a password file")
        self.repository = repository
        self._password = password
        self._password_file = password_file
        self._tmpdir: str | None = None
        self.extra_env = dict(extra_env or {})
        # restic's -o options (sftp.command, s3.storage-class...), before every command
        self.argv = [self.binary] + [arg for option in options or [] for arg in ("-o", str(option))]

    def __enter__(self) -> "Restic":
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.close()

    def close(self) -> None:
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RESTIC_PASSWORD", None)
        env.pop("RESTIC_PASSWORD_COMMAND", None)
        env.update(self.extra_env)
        env["RESTIC_REPOSITORY"] = self.repository
        if self._password_file:
            env["RESTIC_PASSWORD_FILE"] = self._password_file
        else:
            if not self._tmpdir:
                self._tmpdir = tempfile.mkdtemp(prefix="selfhost-restic-")
                os.chmod(self._tmpdir, 0o700)
                path = os.path.join(self._tmpdir, "password")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(self._password or "")
            env["RESTIC_PASSWORD_FILE"] = os.path.join(self._tmpdir, "password")
        return env

    def run(self, *args: str, what: str, stdin: t.Any = None, timeout: float = 3600) -> str:
        proc = subprocess.run([*self.argv, *args], env=self.env(), input=stdin, capture_output=True, timeout=timeout, check=False)
        check_exit(proc.returncode, proc.stderr, what)
        return proc.stdout.decode(errors="replace")

    def ensure_repository(self) -> bool:
        """Initialise the repository when it does not exist; return True when it was created."""
        proc = subprocess.run([*self.argv, "cat", "config"], env=self.env(), capture_output=True, check=False)
        if proc.returncode == 0:
            return False
        self.run("init", what="initialising the restic repository")
        return True

    def backup_stdin(self, filename: str, tags: list[str]) -> subprocess.Popen:
        """Start ``restic backup --stdin``; write the stream to ``.stdin``, then call :func:`finish_backup`."""
        args = [*self.argv, "backup", "--stdin", "--stdin-filename", filename, "--json", "--quiet"]
        for tag in tags:
            args += ["--tag", tag]
        return subprocess.Popen(args, env=self.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def dump(self, snapshot: str, filename: str) -> subprocess.Popen:
        return subprocess.Popen([*self.argv, "dump", "--quiet", snapshot, "/" + filename], env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def forget(self, snapshots: list[str], prune: bool = True) -> None:
        if snapshots:
            self.run("forget", *(["--prune"] if prune else []), *snapshots, what="forgetting restic snapshots")

    def snapshots(self, tags: list[str]) -> list[dict[str, t.Any]]:
        out = self.run("snapshots", "--json", "--tag", ",".join(tags), what="listing restic snapshots")
        return json.loads(out or "[]") or []


def finish_backup(proc: subprocess.Popen, what: str) -> str:
    """Wait for a ``backup --stdin`` started by :meth:`Restic.backup_stdin`; return the snapshot id."""
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.close()
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.wait()
    check_exit(proc.returncode, stderr, what)
    for line in reversed(stdout.decode(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("message_type") == "summary" and record.get("snapshot_id"):
                return str(record["snapshot_id"])
    raise ResticError(f"{what}: restic reported no snapshot id")


def check_exit(code: int, stderr: bytes, what: str) -> None:
    if code == 0:
        return
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    meaning = EXIT_MEANINGS.get(code, "error")
    raise ResticError(f"{what}: restic exited {code} ({meaning}): {' / '.join(lines[-3:]) or 'no output'}")


# the ``restic`` option of the backup set modules (documented by the selfhost.rollback.restic doc fragment)


def restic_option_spec() -> dict[str, t.Any]:
    """The ``restic`` option shared by the backup modules."""
    return {
        "type": "dict",
        "options": {
            "repository": {"type": "str", "required": True},
            "password": {"type": "str", "no_log": True},
            "password_file": {"type": "path", "no_log": False},
            "env": {"type": "dict", "default": {}, "no_log": True},
            "options": {"type": "list", "elements": "str", "default": []},
        },
    }


def restic_from_params(params: dict[str, t.Any] | None) -> Restic | None:
    if not params:
        return None
    return Restic(params["repository"], password=params.get("password"), password_file=params.get("password_file"),
                  extra_env={str(k): str(v) for k, v in (params.get("env") or {}).items()}, options=params.get("options"))
