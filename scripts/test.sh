#!/usr/bin/env bash
# Run the test suite: unit, integration (real engine, registry, ansible-playbook),
# ansible-lint (profile production), ansible-test sanity, molecule.
#   scripts/test.sh all|unit|integration|lint|sanity|molecule
# 'all' (make test) sets up everything itself; a single stage expects 'scripts/setup.sh' to
# have run (make unit, make lint ... do both).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${SELFHOST_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$VENV/collections"
export ANSIBLE_NOCOLOR=1
stage="${1:-all}"
failed=()

say() { printf '\n\033[1m=== %s ===\033[0m\n' "$*"; }

# Tools built on ansible-compat may leave a copy of this collection in ~/.ansible, which
# then shadows the working tree; the tree (on ANSIBLE_COLLECTIONS_PATH) is what is tested.
drop_stale_copy() {
  local copy="$HOME/.ansible/collections/ansible_collections/selfhost/rollback"
  if [ -e "$copy" ] && [ ! -L "$copy" ]; then rm -rf "$copy"; fi
}

run_unit() {
  say "unit tests"
  pytest -q -p no:cacheprovider tests/unit
}

run_integration() {
  say "integration tests (real Docker Engine, registry, ansible-playbook)"
  # the suite waits on containers and health gates far more than it computes (about 30% of two
  # cores with two workers), so three workers share the machine; the fleet tests stay on one
  pytest -q -p no:cacheprovider -n "${SELFHOST_TEST_WORKERS:-3}" --dist loadgroup --durations=15 tests/integration
}

run_lint() {
  say "ansible-lint (profile production)"
  drop_stale_copy
  ansible-lint --offline || return 1
  say "antsibull-docs lint-collection-docs (modules, role argument specs, semantic markup)"
  # it reads the collection where Ansible finds it: ansible_collections/selfhost/rollback
  (cd "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/selfhost/rollback" && antsibull-docs lint-collection-docs --plugin-docs .)
}

run_sanity() {
  say "ansible-test sanity (empty ignore files)"
  local pipver cache work
  # ansible-test bootstraps pip from a download this machine cannot reach; give it the
  # offline stand-in under the name it looks for
  pipver=$(python - <<'PY'
import re, ansible_test, pathlib
src = (pathlib.Path(ansible_test.__file__).parent / "_internal/python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", src).group(1))
PY
)
  cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
  mkdir -p "$(dirname "$cache")"
  cmp -s tests/sanity/get_pip_offline.py "$cache" || cp tests/sanity/get_pip_offline.py "$cache"
  # ansible-test needs the tree at .../ansible_collections/selfhost/rollback
  work="${SELFHOST_SANITY_DIR:-/tmp/selfhost-sanity}/ansible_collections/selfhost/rollback"
  rm -rf "$work"; mkdir -p "$work"
  git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work" 2>/dev/null || true
  (cd "$work" && ansible-test sanity --venv --python "$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" --color no --skip-test shellcheck)
}

run_molecule() {
  say "molecule (default and fleet scenarios: converge, idempotence, verify)"
  drop_stale_copy
  MOLECULE_PYTHON="$VENV/bin/python" molecule test -s default \
    && MOLECULE_PYTHON="$VENV/bin/python" molecule test -s fleet
}

# The whole suite (make test): the static checks need only the venv, so they run while the engine,
# the registry and the images are set up (mostly downloads and disk), then beside the unit tests;
# the integration tests, which fill both CPUs, start once the images are there.
run_all() {
  local static_log static_rc
  bash scripts/setup.sh --venv
  mkdir -p tests/output
  static_log=tests/output/static-checks.log
  static_rc=tests/output/static-checks.rc
  rm -f "$static_rc"
  ( rc=0; run_lint || rc=1; run_sanity || rc=$((rc | 2)); echo "$rc" >"$static_rc" ) >"$static_log" 2>&1 &
  local static_pid=$!
  say "set-up of the engine, registry and images (lint and sanity run meanwhile: $static_log)"
  bash scripts/setup.sh || failed+=(setup)
  run_unit || failed+=(unit)
  if [[ " ${failed[*]} " != *" setup "* ]]; then run_integration || failed+=(integration); fi
  wait "$static_pid" || true
  say "lint and sanity (run during the set-up)"
  cat "$static_log"
  case "$(cat "$static_rc" 2>/dev/null || echo 3)" in
    0) ;;
    1) failed+=(lint) ;;
    2) failed+=(sanity) ;;
    *) failed+=(lint sanity) ;;
  esac
  run_molecule || failed+=(molecule)
}

if [ "$stage" = all ]; then
  stages=(setup unit integration lint sanity molecule)
  run_all
else
  stages=("$stage")
  "run_$stage" || failed+=("$stage")
fi
if [ "${#failed[@]}" -gt 0 ]; then
  printf '\n\033[31mFAILED stages: %s\033[0m\n' "${failed[*]}"
  exit 1
fi
printf '\n\033[32mall stages passed: %s\033[0m\n' "${stages[*]}"
