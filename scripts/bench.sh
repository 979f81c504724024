#!/usr/bin/env bash
# Benchmarks (make bench): our backup and deep verification against tar|zstd, a first
# restic backup and sha256sum on the same generated data; then the rollback playbook
# (image-only) against a bare docker compose up plus waiting for health; then the fleet
# rollback on 3 test hosts against 1 host with the same forks. Medians.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SELFHOST_VENV:-$PWD/.venv}"
for tool in zstd restic tar sha256sum; do
  command -v "$tool" >/dev/null || { echo "[bench] ERROR: $tool is not installed (make setup installs it)" >&2; exit 1; }
done
echo "== backup: against tar | zstd (a 630 MB set and a 4 GB set), restic and sha256sum =="
"$VENV/bin/python" bench/backup_bench.py "$@"
echo
echo "== rollback: the rollback playbook against a bare docker compose up =="
"$VENV/bin/python" bench/rollback_bench.py
echo
echo "== fleet: rollback of an upgrade run on 3 hosts against 1 host, same forks =="
"$VENV/bin/python" bench/fleet_bench.py
