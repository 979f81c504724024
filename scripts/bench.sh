#!/usr/bin/env bash
# Backup benchmark: our backup and deep verification against tar|zstd, a first restic
# backup and sha256sum, on the same ~570 MB of generated data, median of 3 (make bench).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SELFHOST_VENV:-$PWD/.venv}"
for tool in zstd restic tar sha256sum; do
  command -v "$tool" >/dev/null || { echo "[bench] ERROR: $tool is not installed (make setup installs it)" >&2; exit 1; }
done
exec "$VENV/bin/python" bench/backup_bench.py "$@"
