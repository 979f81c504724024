#!/usr/bin/env bash
# The demo, end to end on the local Docker Engine (make demo). --clean removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SELFHOST_VENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$VENV/collections" ANSIBLE_PYTHON_INTERPRETER="$VENV/bin/python"
DEMO_ROOT="${DEMO_ROOT:-/srv/selfhost-demo}"
DEMO_PORT="${DEMO_PORT:-8080}"
if [ "${1:-}" = "--clean" ]; then
  [ -f "$DEMO_ROOT/notes/compose.yaml" ] && docker compose --project-directory "$DEMO_ROOT/notes" down -v --remove-orphans
  rm -rf "$DEMO_ROOT" /var/lib/selfhost-rollback/notes
  exit 0
fi
ansible-playbook -i demo/inventory.yml demo/deploy.yml -e "demo_root=$DEMO_ROOT demo_port=$DEMO_PORT"
