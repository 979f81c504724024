#!/usr/bin/env bash
# Build the real third-party apps of the test bed (images/realapps/apps.txt): each version is
# installed from PyPI with pip on this machine and copied onto the base image, then pushed to
# the local registry. An image is rebuilt only when its recipe (the line in apps.txt and the
# Dockerfile) changes, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY="${SELFHOST_REGISTRY:-127.0.0.1:5000}"
VENV="${SELFHOST_VENV:-$PWD/.venv}"
export DOCKER_BUILDKIT=0

say() { printf '\033[1m[real-apps]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[real-apps] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

built=()
while read -r app version reqs; do
  case "$app" in ''|'#'*) continue ;; esac
  tag="$REGISTRY/selfhost/real-$app:$version"
  recipe=$( { printf '%s %s %s\n' "$app" "$version" "$reqs"; cat images/realapps/Dockerfile; } | sha256sum | cut -c1-16)
  have=$(docker image inspect --format '{{index .Config.Labels "selfhost.testbed.recipe"}}' "$tag" 2>/dev/null || true)
  if [ "$have" != "$recipe" ]; then
    say "installing $app $version from PyPI"
    ctx=$(mktemp -d /var/tmp/selfhost-realapp.XXXXXX)
    cp images/realapps/Dockerfile "$ctx/"
    # shellcheck disable=SC2086  # the requirements are words on purpose
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-compile --target "$ctx/site" $reqs 2>"$ctx/pip.err" \
      || die "pip could not install $reqs: $(grep -v 'is ignored' "$ctx/pip.err" | tail -n 3)"
    docker build -q --build-arg "APP=$app" --build-arg "VERSION=$version" --build-arg "RECIPE=$recipe" -t "$tag" "$ctx" >/dev/null 2>"$ctx/build.err" \
      || die "docker build of $tag failed: $(tail -n 3 "$ctx/build.err")"
    rm -rf "$ctx"
  fi
  docker push -q "$tag" >/dev/null || die "docker push of $tag failed; is the registry running?"
  built+=("real-$app:$version")
done < images/realapps/apps.txt
say "images in $REGISTRY: ${built[*]}"
