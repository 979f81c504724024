"""The restore runbook, generated from a real run.

Runs the steps the runbook tells an operator to take (list sets, verify, restore,
check) against a fresh demo deployment. With SELFHOST_WRITE_RUNBOOK=1 it rewrites
docs/restore-runbook.md with the output of this run:

    SELFHOST_WRITE_RUNBOOK=1 .venv/bin/pytest -q tests/integration/test_restore_runbook.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import fidelity
from conftest import REPO, http, write_inventory

RUNBOOK = REPO / "docs" / "restore-runbook.md"


def test_restore_runbook_from_a_real_run(demo_app, run_playbook, tmp_path):
    """Every step runs a playbook the collection ships, by FQCN, with -e options named as the modules'."""
    demo = demo_app
    inventory = write_inventory(tmp_path / "inventory.json",
                                group_vars={"rollback_apps": [demo.definition()], "rollback_store": str(demo.store)})
    for title in ("groceries", "meeting notes", "ideas"):
        demo.add_note(title)
    http("POST", f"{demo.url}/uploads/photo.jpg", b"\xff\xd8" + os.urandom(2000))

    run = run_playbook("selfhost.rollback.backup", {"app": demo.name}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    set_id = run.task("Back up")["result"]["results"][0]["set_id"]
    proven = run_playbook("selfhost.rollback.verify", {"app": demo.name, "set_id": set_id}, inventory=inventory)
    assert proven.rc == 0, proven.stdout[-3000:]

    # the bad day: a faulty upgrade writes garbage; before anything else, what would a restore discard?
    demo.add_note("garbage from the faulty upgrade")
    pick = {"app": demo.name, "set_id": set_id}
    preview = run_playbook("selfhost.rollback.restore", pick, inventory=inventory, check=True)
    assert preview.rc == 0, preview.stdout[-3000:]
    assert "public.notes has 4 rows now, 3 in the set" in preview.task("Restore")["result"]["lost"]["summary"]
    # and then someone deletes the volumes
    demo.compose("down", "-v", "--timeout", "5")

    listing = subprocess.run(f"ls -l {demo.store}/{demo.name}/backups/{set_id}", shell=True, capture_output=True, text=True, check=False).stdout
    status = subprocess.run(["jq", "-r", '.[-1] | "\\(.at) \\(.kind) passed=\\(.passed) in \\(.duration_s)s"',
                             f"{demo.store}/{demo.name}/backups/{set_id}/verification.json"],
                            capture_output=True, text=True, check=False).stdout if _has_jq() else ""

    verify = run_playbook("selfhost.rollback.verify", pick, inventory=inventory)
    assert verify.rc == 0, verify.stdout
    restore = run_playbook("selfhost.rollback.restore", pick, inventory=inventory)
    assert restore.rc == 0, restore.stdout
    health = http("GET", f"{demo.url}/healthz")
    notes = [n["title"] for n in demo.notes()]
    assert health[0] == 200 and notes == ["groceries", "meeting notes", "ideas"]
    # a restore never runs on every app at once: without -e app it refuses, changing nothing
    refused = run_playbook("selfhost.rollback.restore", {"set_id": set_id}, inventory=inventory)
    assert refused.rc != 0 and "name the app to restore with -e app=NAME" in refused.stdout
    run = proven

    # without the collection: the stock tools alone put a volume's archive back, exactly
    archive = demo.store / demo.name / "backups" / set_id / "volume-uploads.tar.zst"
    by_hand = tmp_path / "uploads-by-hand"
    by_hand.mkdir()
    line = fidelity.BY_HAND["gnu tar"].format(archive=archive, dest=by_hand)
    subprocess.run(["bash", "-o", "pipefail", "-c", line], check=True, capture_output=True)
    mountpoint = subprocess.run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", f"{demo.name}_uploads"],
                                capture_output=True, text=True, check=True).stdout.strip()
    assert fidelity.differences(fidelity.snapshot(mountpoint), fidelity.snapshot(str(by_hand))) == []
    by_hand_listing = subprocess.run(["ls", "-ln", str(by_hand)], capture_output=True, text=True, check=True).stdout
    by_hand_listing = by_hand_listing.replace(str(by_hand), "/tmp/uploads")

    if os.environ.get("SELFHOST_WRITE_RUNBOOK") == "1":
        text = render(demo, set_id, run, verify, preview, restore, listing, status, health, notes, by_hand_listing)
        RUNBOOK.write_text(text)


def _has_jq() -> bool:
    return subprocess.run(["sh", "-c", "command -v jq"], capture_output=True, check=False).returncode == 0


def clean(demo, text: str) -> str:
    text = text.replace(str(demo.store), "/var/lib/selfhost-rollback").replace(str(demo.project_dir), "/srv/notes")
    text = text.replace(demo.name, "notes").replace(f"127.0.0.1:{demo.port}", "127.0.0.1:8080")
    text = re.sub(r"/tmp/pytest-of-root/\S+/playbook-run-\d+/", "", text)
    text = re.sub(r"/tmp/pytest-of-root/\S+?/", "", text)
    assert demo.password not in text
    return text.strip()


def tasks_only(stdout: str) -> str:
    lines = [l for l in stdout.splitlines() if l.strip()]
    return "\n".join(lines)


def render(demo, set_id, backup, verify, preview, restore, listing, status, health, notes, by_hand) -> str:
    def c(text):
        return clean(demo, text)
    return f"""# Restore runbook

*Generated from a real run on the test bed by `tests/integration/test_restore_runbook.py`
(`SELFHOST_WRITE_RUNBOOK=1 .venv/bin/pytest -q tests/integration/test_restore_runbook.py`).
Paths and names are shown as they would be for an app called `notes` in `/srv/notes`.*

Use this when an app's data is wrong or gone and you want it back as it was at a backup.
Every step is safe to repeat. Nothing is changed until step 4.

## 0. Before you start

- You need: the app's name as in `rollback_apps`, the inventory, and root on the host.
- The restore replaces the app's data with the backup's. Anything written after the backup is lost.
  If you want to keep today's data for later, run a backup first (`selfhost.rollback.backup`) — it
  costs seconds.
- Restores run one at a time per app (a lock). "app notes is busy" means another run is still going.

## 1. Pick the backup set

Sets live in `/var/lib/selfhost-rollback/<app>/backups/`; names sort by time (`b-<UTC time>-<4 hex>`).
A set is usable only if it has `manifest.json`. Its proofs are in `verification.json`.

```console
# ls -l /var/lib/selfhost-rollback/notes/backups/{set_id}
{c(listing)}
# jq -r '.[-1] | "\\(.at) \\(.kind) passed=\\(.passed) in \\(.duration_s)s"' /var/lib/selfhost-rollback/notes/backups/{set_id}/verification.json
{c(status) or "(jq not installed on this host: open verification.json and read the last entry)"}
```

Pick the newest set taken **before** things went wrong whose last verification says `passed=true`.

## 2. Verify it (again)

The collection ships the playbook; nothing to write. `-e` options are named as the module's
(`set_id`, `checks`):

Real output:

```console
$ ansible-playbook -i inventory.yml selfhost.rollback.verify -e app=notes -e set_id={set_id}
{c(tasks_only(verify.stdout))}
```

`passed: false`? Do **not** restore that set. The failures name the item (for example
`volume uploads: archive checksum mismatch`). Go back to step 1 and pick the next older set.

## 3. Know what will happen

The restore stops the app's containers (it notes which were running), creates any missing
volumes and containers, replaces each volume and bind path with the backup's content (extracted
beside the live data and swapped in only when complete), drops and re-creates each database and
loads its dump, starts what was running (everything, if the project was gone), and waits for the
health URL. It first runs a fresh checksum check of the set and refuses — changing nothing — if
that fails.

Before that, see what it would discard: the same playbook with `--check` changes nothing and says,
per table, the rows now and in the set, and per volume or path the files added, changed or removed
since (here, while the faulty version still ran):

```console
$ ansible-playbook -i inventory.yml selfhost.rollback.restore -e app=notes -e set_id={set_id} --check
{c(tasks_only(preview.stdout))}
```

## 4. Restore

The same playbook without `--check`. It restores one app only: without `-e app=NAME` it refuses.
`-e '{{"target": {{"project_name": "notes-copy", "project_dir": "/srv/notes-copy"}}}}'` restores into
a copy instead, `-e start=none` leaves the app stopped, `-e force=true` restores a set the app
still holds.

Real output (the volumes had been deleted with `docker compose down -v` before this run):

```console
$ ansible-playbook -i inventory.yml selfhost.rollback.restore -e app=notes -e set_id={set_id}
{c(tasks_only(restore.stdout))}
```

## 5. Check

```console
$ curl -s http://127.0.0.1:8080/healthz
{json.dumps(health[1])}
$ curl -s http://127.0.0.1:8080/notes | jq -r '.[].title'
{chr(10).join(notes)}
```

The note written after the backup ("garbage from the faulty upgrade") is gone, as it should be.

## If something goes wrong

| you see | it means | do |
|---|---|---|
| `restore refused: backup set ... fails verification` | the set is damaged; nothing was changed | pick an older set (step 1) |
| `app notes is busy` | another run holds the app's lock | wait for it; check `cat /var/lib/selfhost-rollback/notes/lock` for who |
| `did not become healthy` | data is back but the app does not start on it | `docker compose logs app`; if the schema is newer, roll back the release too |
| `the target project has no volume ...` | the compose file changed since the backup | restore with the compose files of the release the set was taken under |
| a second run says `changed: false` | the app still holds exactly what the last restore put there | nothing; add `force: true` to restore anyway |

## Without the collection

If Ansible or the collection cannot run on the host, every file archive of a set is a plain
pax tar that the stock tools extract exactly: owners, modes, nanosecond times, symlinks as
they were, xattrs, POSIX ACLs, file capabilities and sparse files. This was run on the set
above with GNU tar:

```console
$ mkdir /tmp/uploads
$ {c(fidelity.BY_HAND["gnu tar"].format(archive=f"{demo.store}/{demo.name}/backups/{set_id}/volume-uploads.tar.zst", dest="/tmp/uploads"))}
$ ls -ln /tmp/uploads
{c(by_hand).strip()}
```

bsdtar works too: `{fidelity.BY_HAND["bsdtar"].format(archive="volume-uploads.tar.zst", dest="/tmp/uploads")}`.
Neither tool creates paths longer than 4,096 bytes ("File name too long"); the restore module
does. Database items are dumps: `zstd -dc database-db-notes.sql.zst` is plain SQL for `psql`.
Check an extracted tree against the set before using it: `selfhost.rollback.backup_verify`
reads the same archive and compares every file's sha256 with the manifest.

## Rehearse it (drill)

Restore into a copy instead of the live app: the same playbook with a target (a copy of
`/srv/notes` with another port in its `.env`), or let `selfhost.rollback.drill` build the copy,
boot the release on it, check it and tear it down:

```console
$ ansible-playbook -i inventory.yml selfhost.rollback.restore -e app=notes -e set_id={set_id} \\
    -e '{{"target": {{"project_name": "notes-drill", "project_dir": "/srv/drills/notes"}}, "start": "all"}}'
$ ansible-playbook -i inventory.yml selfhost.rollback.drill -e drill_target=current
```
"""
