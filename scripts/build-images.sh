#!/usr/bin/env bash
# Build the test bed's images locally (no registry is reachable) and push them to the
# local registry so they carry real digests. Reuses what exists: the debootstrap base
# is rebuilt only when its recipe changes, the rest comes from the build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY="${SELFHOST_REGISTRY:-127.0.0.1:5000}"
BASE_IMAGE="selfhost/base:bookworm"
BASE_PACKAGES="python3,python3-psycopg2,postgresql-15,sqlite3,passwd"
NOTES_VERSIONS="${NOTES_VERSIONS:-1.0 1.1 2.0 2.1 2.2}"
export DOCKER_BUILDKIT=0  # the classic builder ships with the engine; buildx may be absent

say() { printf '\033[1m[images]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[images] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

recipe=$(printf "%s|minbase|bookworm|v1" "$BASE_PACKAGES" | sha256sum | cut -c1-16)
have=$(docker image inspect --format '{{index .Config.Labels "selfhost.testbed.recipe"}}' "$BASE_IMAGE" 2>/dev/null || true)
if [ "$have" != "$recipe" ]; then
  say "building $BASE_IMAGE with debootstrap (about a minute)"
  rootfs=$(mktemp -d /var/tmp/selfhost-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" >/tmp/selfhost-debootstrap.log 2>&1 \
    || die "debootstrap failed (see /tmp/selfhost-debootstrap.log): $(tail -n 2 /tmp/selfhost-debootstrap.log | tr '\n' ' ')"
  # the package's own cluster and caches are not needed in the image
  rm -rf "$rootfs"/var/lib/postgresql/15 "$rootfs"/etc/postgresql/15/main "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
      --change "LABEL selfhost.testbed.recipe=$recipe" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
fi

build() {  # build TAG CONTEXT [build args...]
  local tag="$1" ctx="$2"; shift 2
  docker build -q --build-arg "BASE=$BASE_IMAGE" "$@" -t "$tag" "$ctx" >/dev/null 2>/tmp/selfhost-build.err \
    || die "docker build of $tag failed: $(grep -v -e DEPRECATED -e BuildKit -e environment-variable /tmp/selfhost-build.err | tail -n 3)"
  docker push -q "$tag" >/dev/null || die "docker push of $tag to $REGISTRY failed; is the registry running (curl http://$REGISTRY/v2/)?"
}

cp /bin/busybox images/tools/busybox 2>/dev/null || die "/bin/busybox (Debian's busybox-static) is missing; run scripts/setup-host.sh."
build "$REGISTRY/selfhost/tools:busybox" images/tools
rm -f images/tools/busybox
build "$REGISTRY/selfhost/postgres:15" images/postgres
for v in $NOTES_VERSIONS; do
  build "$REGISTRY/selfhost/notes:$v" images/notes --build-arg "NOTES_VERSION=$v"
done
for v in 1 2; do
  build "$REGISTRY/selfhost/vectors:$v" images/vectors --build-arg "VECTORS_VERSION=$v"
done
say "images in $REGISTRY: tools:busybox postgres:15 notes:{${NOTES_VERSIONS// /,}} vectors:{1,2}"
