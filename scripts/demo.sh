#!/usr/bin/env bash
# The demo, end to end on the local Docker Engine (make demo):
#   deploy notes 1.0 and write a note; prepare the upgrade (release pinned by digest,
#   backup proven by a test restore, health baseline); upgrade to the broken 2.1, which
#   fails its health gate and is reverted automatically, data included; show 1.0 healthy
#   with the note; upgrade to 1.1, which passes; drill a rollback to 1.0 in an isolated
#   copy beside the running 1.1; write the restore-points report. --clean removes the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SELFHOST_VENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$VENV/collections" ANSIBLE_PYTHON_INTERPRETER="$VENV/bin/python"
# pipelining as the README recommends (each task's module goes to Python on stdin)
export ANSIBLE_PIPELINING="${ANSIBLE_PIPELINING:-True}"
export ANSIBLE_DISPLAY_SKIPPED_HOSTS=false ANSIBLE_DISPLAY_OK_HOSTS="${ANSIBLE_DISPLAY_OK_HOSTS:-true}"
DEMO_ROOT="${DEMO_ROOT:-/srv/selfhost-demo}"
DEMO_PORT="${DEMO_PORT:-8080}"
STORE=/var/lib/selfhost-rollback
URL="http://127.0.0.1:$DEMO_PORT"
if [ "${1:-}" = "--clean" ]; then
  [ -f "$DEMO_ROOT/notes/compose.yaml" ] && docker compose --project-directory "$DEMO_ROOT/notes" -p notes down -v --remove-orphans
  rm -rf "$DEMO_ROOT" "$STORE/notes"
  exit 0
fi
play() { ansible-playbook -i demo/inventory.yml -e "demo_root=$DEMO_ROOT demo_port=$DEMO_PORT" "$@"; }
step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }

step "1. Deploy notes 1.0 and write a note"
play demo/deploy.yml
curl -fsS -X POST -d '{"title": "order #1042", "body": "2 x oat milk, paid"}' "$URL/notes"; echo
curl -fsS "$URL/healthz"; echo

step "2. Prepare the upgrade: release pinned by digest, backup proven by a test restore, health baseline"
play selfhost.rollback.pre_upgrade

step "3. Upgrade to 2.1 (broken): the health gate fails and the collection reverts by itself"
if play selfhost.rollback.upgrade -e '{"upgrade_env": {"NOTES_VERSION": "2.1"}}'; then
  echo "unexpected: 2.1 passed its health gate" >&2; exit 1
fi

step "4. Back on 1.0, healthy, with the note written before the upgrade"
curl -fsS "$URL/healthz"; echo
curl -fsS "$URL/notes"; echo
python3 - "$STORE/notes/last_operation.json" <<'PY'
import json, sys
op = json.load(open(sys.argv[1]))
print(f"last operation: {op['kind']} -> {op['outcome']}; back on {op['release_after']}; "
      f"data restored from {op.get('data_restored')}; {op['figures']['seconds']} s in all, "
      f"healthy {op['figures']['time_to_healthy_s']} s after the switch back")
PY

step "5. Upgrade to 1.1, which passes its health gate and stays"
play selfhost.rollback.upgrade -e '{"upgrade_env": {"NOTES_VERSION": "1.1"}}'
curl -fsS "$URL/healthz"; echo

step "6. Drill: restore 1.0's backup into an isolated copy and boot 1.0 on it, beside the running 1.1"
play selfhost.rollback.drill

step "7. The restore-points report: what can be put back, and how fast"
play selfhost.rollback.report -e "report_dest=$DEMO_ROOT/report"
echo
echo "The ledger is in $STORE/notes (releases, backups, notes, operations, drills); the app in $DEMO_ROOT/notes."
echo "Open the report: file://$DEMO_ROOT/report/restore-points.html"
