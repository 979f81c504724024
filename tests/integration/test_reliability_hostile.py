"""Reliability: hostile archives on restore. An archive swapped after its set was verified
holds an absolute path, '..', a file written through a symlink that points out, or a device
file: the restore refuses with a clear error and writes nothing outside the target. (A symlink
that points out is stored and restored verbatim; writing through one is what is refused.)"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

from reliability import ledger

BACKUP = "selfhost.rollback.backup"
VERIFY = "selfhost.rollback.backup_verify"
RESTORE = "selfhost.rollback.restore"


def hostile_archive(path: Path, members: list[tarfile.TarInfo]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        root = tarfile.TarInfo(".")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(root)
        for member in members:
            data = b"pwned\n" if member.isreg() else None
            if data is not None:
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    compressor = ["zstd", "-q", "-c"] if path.name.endswith(".zst") else ["gzip", "-c"]
    path.write_bytes(subprocess.run(compressor, input=raw.getvalue(), capture_output=True, check=True).stdout)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


def test_hostile_archives_are_refused_and_write_nothing_outside(demo_app, module_playbook, run_playbook, docker_client, tmp_path):
    demo = demo_app
    params = {"app": demo.definition(), "store": str(demo.store)}
    demo.add_note("kept")
    run, taken = module_playbook(BACKUP, params)
    assert run.rc == 0, run.stdout[-3000:]
    set_id = taken["set_id"]
    run, verified = module_playbook(VERIFY, {**params, "set_id": set_id, "checks": ["deep"]})
    assert run.rc == 0 and verified["passed"], verified
    manifest = json.loads((ledger(demo) / "backups" / set_id / "manifest.json").read_text())
    archive = ledger(demo) / "backups" / set_id / next(i["archive"] for i in manifest["items"] if i["name"] == "uploads")
    volume_dir = Path(docker_client.volumes.get(f"{demo.name}_uploads").attrs["Mountpoint"]).parent
    token = f"escape-{uuid.uuid4().hex[:8]}"
    outside = tmp_path / token
    cases = {
        "absolute": ([member(str(outside))], "has an absolute path"),
        "dotdot": ([member(f"../../{token}")], "contains '..'"),
        "symlink out": ([member("link", tarfile.SYMTYPE, str(tmp_path)), member(f"link/{token}")], "would be written through the symlink"),
        "device": ([member(token, tarfile.CHRTYPE)], "is a device file"),
    }
    before = {p.name for p in volume_dir.iterdir()}
    for what, (members, refusal) in cases.items():
        hostile_archive(archive, members)
        # recorded: the set passed verification before the swap, so only extraction stands in the way
        run, result = module_playbook(RESTORE, {**params, "set_id": set_id, "force": True, "verify": "recorded"})
        assert run.rc != 0, what
        assert result["msg"].startswith(f"restore of app {demo.name} failed: ") and refusal in result["msg"], (what, result["msg"])
        assert "\n" not in result["msg"]
        assert not outside.exists() and not list(tmp_path.glob(f"**/{token}")), what
        assert {p.name for p in volume_dir.iterdir()} == before, what  # no staging directory left beside it
        assert not (volume_dir / "_data" / token).exists()
        # the app is put back as it was and its data untouched
        demo.wait_healthy(timeout=60)
        assert [n["title"] for n in demo.notes()] == ["kept"], what

    # a deep verification (the default before a restore) names the damaged item and refuses before stopping anything
    ids = demo.container_ids()
    run, result = module_playbook(RESTORE, {**params, "set_id": set_id, "force": True})
    assert run.rc != 0 and "restore refused" in result["msg"] and "volume uploads:" in result["msg"], result["msg"]
    assert demo.container_ids() == ids
