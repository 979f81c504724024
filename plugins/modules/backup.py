#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup
short_description: Capture an app's data as one backup set under its current release
version_added: 0.1.0
description:
  - Captures the named volumes, bind-mounted paths and databases of one Docker Compose app
    as a backup set in the ledger, C(<store>/<app>/backups/<set_id>/).
  - Databases are dumped logically inside their containers (PostgreSQL C(pg_dump), MySQL/MariaDB
    C(mysqldump --single-transaction), SQLite through its online backup API), with no downtime.
  - File data (volumes, paths) is read directly from the host and streamed into one compressed
    pax tar archive per source (C(zstd -T0) when installed, C(gzip) otherwise), with a sha256 per file
    taken in the same pass. The archive keeps what GNU tar keeps - symlinks verbatim whatever they point at,
    paths longer than 4,096 bytes, nanosecond mtimes (symlinks' too), xattrs, POSIX ACLs, file capabilities,
    sparse files, hard links, numeric owners - and stock GNU tar and bsdtar extract it exactly.
  - Per source, O(consistency) says how writers are kept still while its files are read. Containers
    that were running before are running after, also when the backup fails; stopped ones stay stopped.
    Each container is written to C(quiesced.json) in the ledger before it is paused or stopped, and a watcher that
    does not depend on the module (a detached process, no systemd needed) is started before the first one. If the
    module dies (kill -9, OOM), the watcher unpauses or starts exactly those containers within a few seconds and
    writes what it did to C(guard.json); the next run reports that in RV(actions), and puts back anything still left.
  - The set is complete only when C(manifest.json) is written, last and atomically. Partial sets left
    by an interrupted run are removed by the next run.
  - Volumes mounted by a database service are captured by that database's dump, not as files, unless
    O(consistency) names them.
extends_documentation_fragment:
  - selfhost.rollback.app
  - selfhost.rollback.restic
attributes:
  check_mode:
    support: full
    description: Resolves every source and reports what would be captured and which containers would be paused or stopped.
  diff_mode:
    support: none
    description: No diff is returned.
  idempotent:
    support: none
    description: Every run that is not in check mode creates a new backup set.
options:
  backend:
    description:
      - Where archives go. V(local) keeps compressed archives in the set directory.
      - V(restic) stores each archive as a restic snapshot (deduplicated, encrypted, possibly offsite);
        the set directory then holds the manifest and verification results only.
    type: str
    choices: [local, restic]
    default: local
  compression:
    description: Compression of local archives. V(auto) uses zstd when installed and gzip otherwise.
    type: str
    choices: [auto, zstd, gzip, none]
    default: auto
  compression_level:
    description: Compression level; defaults to the fastest (1).
    type: int
  consistency:
    description:
      - Per source (volume name, path as in O(app.paths)), how its writers are kept still while it is read.
      - V(pause) freezes the containers that mount it for the duration of the file capture (default).
      - V(stop) stops them and starts them again afterwards.
      - V(none) reads the files while the app runs.
      - Databases are always captured by V(dump).
    type: dict
    default: {}
  space_check:
    description:
      - Refuse to start when the store's file system has less free space than the data's uncompressed size.
    type: bool
    default: true
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
  tags:
    description: Free-form tags recorded in the manifest.
    type: list
    elements: str
    default: []
notes:
  - Runs as root on the managed host, which reads volume contents from their mount points directly.
  - Secrets from the app's env file never appear in the manifest, the result or any command line.
requirements:
  - Docker SDK for Python
  - the docker CLI with the Compose v2 plugin
  - zstd or gzip; restic for O(backend=restic)
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
"""

EXAMPLES = r"""
- name: Back up the notes app (databases by dump, files with a short pause)
  selfhost.rollback.backup:
    app: "{{ item }}"
  loop: "{{ rollback_apps }}"

- name: Back up into restic, stopping the app while its uploads are read
  selfhost.rollback.backup:
    app: "{{ rollback_apps[0] }}"
    backend: restic
    restic:
      repository: /srv/restic/notes
      password: "{{ vault_restic_password }}"
    consistency:
      uploads: stop
"""

RETURN = r"""
set_id:
  description: Id of the new set (in check mode, none is created and this is null).
  returned: always
  type: str
  sample: b-20261122T020705Z-3fa1
set_dir:
  description: Directory of the set in the ledger.
  returned: success
  type: str
  sample: /var/lib/selfhost-rollback/notes/backups/b-20261122T020705Z-3fa1
items:
  description: What was captured (or would be, in check mode), without the per-file maps.
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "database", "name": "db-notes", "archive": "database-db-notes.sql.zst", "bytes": 1834,
            "checksum": "zstd-xxh64", "tables": {"public.notes": 3}, "consistency": "dump"}]
  contains:
    kind:
      description: V(database), V(volume) or V(path).
      type: str
    name:
      description: The item's name, C(<service>-<database>) for a database, the Compose volume key, or the path as in O(app.paths).
      type: str
    consistency:
      description: How its writers were (or would be) kept still, V(dump) for a database, else V(pause), V(stop) or V(none).
      type: str
    service:
      description: The database's service.
      type: str
      returned: for a database
    engine:
      description: The database engine, as in O(app.databases).
      type: str
      returned: for a database
    database:
      description: The database's name, as in O(app.databases).
      type: str
      returned: for a database
    user:
      description: The database user, as in O(app.databases) (V(null) when not given).
      type: str
      returned: for a database, except in check mode
    path:
      description: The SQLite file, as in O(app.databases) (V(null) when not given).
      type: str
      returned: for a database, except in check mode
    image:
      description: The database container's image, C(id) (its image ID) and C(ref) (the reference the container was created from).
      type: dict
      returned: for a database, except in check mode
    tables:
      description: Rows per table, as counted at the dump.
      type: dict
      returned: for a database, except in check mode
    counts:
      description: V(after-dump) for MySQL and MariaDB, whose rows are counted after the dump.
      type: str
      returned: for a MySQL or MariaDB database, except in check mode
    quiesce:
      description: Services whose running containers are paused or stopped while its files are read (empty with V(none)).
      type: list
      elements: str
      returned: for a volume or path, in check mode
    volume:
      description: The Docker volume's name.
      type: str
      returned: for a volume, except in check mode
    databases:
      description:
        - SQLite databases that lie in the volume and are captured with it.
        - Dicts with C(name), C(path) and C(service); in check mode, their names only.
      type: list
      elements: raw
      returned: for a volume that holds a declared SQLite database
    skipped:
      description: Files not captured, or captured padded, each with C(path) and C(reason).
      type: list
      elements: dict
      returned: for a volume or path with such files, except in check mode
    file_count:
      description: Number of entries (files, directories, links, FIFOs) in the archive's per-file map.
      type: int
      returned: for a volume or path, except in check mode
    raw_bytes:
      description: Bytes of the dump or tar stream before compression.
      type: int
      returned: except in check mode
    format:
      description: V(pg_dump-plain), V(mysqldump), V(sqlite-backup-api) or V(tar-pax).
      type: str
      returned: except in check mode
    archive:
      description: The archive's file name in the set directory, or with the restic backend the snapshot's file name.
      type: str
      returned: except in check mode
    compression:
      description: V(zstd), V(gzip), V(none), or V(restic) with the restic backend.
      type: str
      returned: except in check mode
    bytes:
      description: Bytes stored.
      type: int
      returned: except in check mode
    checksum:
      description: What guards the stored bytes of a local archive (V(zstd-xxh64), V(gzip-crc32) or V(sha256)).
      type: str
      returned: with the local backend, except in check mode
    sha256:
      description: C(sha256:) and the hex digest of the stored bytes.
      type: str
      returned: with O(compression=none) or the restic backend, except in check mode
    snapshot:
      description: The restic snapshot id.
      type: str
      returned: with the restic backend, except in check mode
    duration_s:
      description: Seconds its capture took.
      type: float
      returned: except in check mode
left_out:
  description: Sources left out on purpose, with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: What was left out, always V(volume).
      type: str
    name:
      description: The Compose volume key.
      type: str
    reason:
      description: Why it was left out (captured by a database's dump, or holds only an SQLite database), and how to capture it too.
      type: str
release_id:
  description: The release the set was taken under, or null when no release is recorded.
  returned: success
  type: str
schema_version:
  description: The app's schema version when the set was taken.
  returned: success
  type: str
bytes:
  description: Bytes stored for the set.
  returned: success
  type: int
duration_s:
  description: Seconds the capture took.
  returned: success
  type: float
actions:
  description: What was done, in order (containers paused or stopped and started again, partial sets removed).
  returned: always
  type: list
  elements: str
notices:
  description: Things the operator should know (files that changed while read, sockets left out).
  returned: success
  type: list
  elements: str
outcome:
  description:
    - V(changed) when a set was written (or, in check mode, would be).
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: changed
reasons:
  description:
    - Sentences behind RV(outcome); empty when there is nothing to add.
    - On a failure, the sentence that says what failed and what to do.
  returned: always
  type: list
  elements: str
  sample: []
"""

import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _capture, _quiesce, _restic, _sets
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import check_live_project
from ansible_collections.selfhost.rollback.plugins.module_utils._module import OPERATOR_FAILURES, AppModule


def argument_spec() -> dict[str, t.Any]:
    return {
        "backend": {"type": "str", "choices": ["local", "restic"], "default": "local"},
        "restic": _restic.restic_option_spec(),
        "compression": {"type": "str", "choices": ["auto", "zstd", "gzip", "none"], "default": "auto"},
        "compression_level": {"type": "int"},
        "consistency": {"type": "dict", "default": {}},
        "space_check": {"type": "bool", "default": True},
        "lock_timeout": {"type": "float", "default": 60},
        "tags": {"type": "list", "elements": "str", "default": []},
    }


def back_up(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    result = module.result
    result.update(changed=False, set_id=None, items=[], left_out=[], actions=[])
    app = module.app
    consistency = dict(module.app["consistency"], **{str(k): str(v) for k, v in params["consistency"].items()})
    restic = _restic.restic_from_params(params["restic"]) if params["backend"] == "restic" else None
    if restic is not None:
        module.cleanup(restic.close)
    options = _capture.BackupOptions(backend=params["backend"], compression=params["compression"],
                                     compression_level=params["compression_level"], consistency=consistency,
                                     space_check=params["space_check"], restic=restic, tags=params["tags"])
    client = module.client
    check_live_project(client, app)
    ledger = module.ledger
    if module.check_mode:
        plan = _capture.plan_backup(app, client, options)
        result.update(changed=True, items=[s.describe() for s in plan["sources"]], left_out=plan["skipped"])
        return result
    with module.lock("backup"):
        # containers a killed run left paused or stopped come back before the plan reads them
        resumed = _quiesce.resume_interrupted(ledger, client)
        plan = _capture.plan_backup(app, client, options)
        result["items"] = [s.describe() for s in plan["sources"]]
        result["left_out"] = plan["skipped"]
        done = _capture.run_backup(app, client, ledger, options, plan, resumed)
    manifest = done["manifest"]
    result.update(
        changed=True,
        set_id=manifest["set_id"],
        set_dir=done["set_dir"],
        items=[_sets.item_view(i) for i in manifest["items"]],
        release_id=manifest["release_id"],
        schema_version=manifest["schema_version"],
        bytes=sum(int(i.get("bytes") or 0) for i in manifest["items"]),
        duration_s=manifest["duration_s"],
        actions=done["actions"],
        notices=done["warnings"],
    )
    for notice in done["warnings"]:
        module.warn(notice)
    return result


def main() -> None:
    module = AppModule(argument_spec(), required_if=[("backend", "restic", ["restic"])],
                       failure="backup of app {name} failed", errors=OPERATOR_FAILURES,
                       docker_failure="the Docker Engine refused a request ({exc}); check that the app's containers exist and run again",
                       os_failure="{exc}; check free space and permissions of {store}")
    module.run(back_up)


if __name__ == "__main__":
    main()
