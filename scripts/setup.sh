#!/usr/bin/env bash
# Everything the demo and the tests need on a fresh machine, reusing what exists:
# host (engine, Compose v2, registry), the Python venv with the pinned tools, the
# collection linked where Ansible finds it, and the test bed's images.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${SELFHOST_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
  || die "Python 3.10 or newer is needed as $PYTHON; install it or set PYTHON=/path/to/python3."

# --venv: only the Python tools and the collection's link (what the static checks need), so that
# `make test` can run them while the rest (engine, registry, images) is set up
part="${1:-all}"
[ "$part" = --venv ] || bash scripts/setup-host.sh

# Python tools, reinstalled only when the pinned ranges change.
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.selfhost-requirements" 2>/dev/null)" != "$want" ]; then
  say "creating the virtualenv $VENV (pinned tools from requirements-dev.txt)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "could not create a venv with $PYTHON -m venv; install python3-venv."
  # (pip's notes about absent local wheel directories are noise here)
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip could not install requirements-dev.txt; check that PyPI is reachable."
  echo "$want" >"$VENV/.selfhost-requirements"
fi

# The collection where Ansible looks for it: <path>/ansible_collections/selfhost/rollback.
mkdir -p "$VENV/collections/ansible_collections/selfhost"
ln -sfn "$ROOT" "$VENV/collections/ansible_collections/selfhost/rollback"
if [ "$part" = --venv ]; then
  say "ready: venv $VENV, collection selfhost.rollback -> $ROOT (engine and images not set up yet)"
  exit 0
fi

bash scripts/build-images.sh
bash scripts/build-real-apps.sh
bash scripts/build-host-image.sh
bash scripts/setup-browser.sh
say "ready: venv $VENV, collection selfhost.rollback -> $ROOT"
