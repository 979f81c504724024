#!/usr/bin/env bash
# Build the fleet test host image (selfhost/host:bookworm): a Debian rootfs with its own
# Docker Engine, sshd (root by key only), Python with the Docker SDK, and the Compose v2
# plugin of this machine. tests/fleet.py starts several of these as test hosts.
# Reuses what exists: rebuilt only when the recipe (packages, files, plugin) changes.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST_IMAGE="${SELFHOST_HOST_IMAGE:-selfhost/host:bookworm}"
HOST_PACKAGES="docker.io,openssh-server,python3,python3-docker,python3-ruamel.yaml,zstd,tar,iproute2,iptables,ca-certificates,procps"
COMPOSE_PLUGIN="${SELFHOST_COMPOSE_PLUGIN:-/usr/libexec/docker/cli-plugins/docker-compose}"

say() { printf '\033[1m[host-image]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[host-image] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

[ -x "$COMPOSE_PLUGIN" ] || die "the Compose v2 plugin is missing at $COMPOSE_PLUGIN; run scripts/setup-host.sh."
command -v debootstrap >/dev/null || die "debootstrap is missing; run scripts/setup-host.sh (apt-get install debootstrap)."
docker info >/dev/null 2>&1 || die "no Docker Engine answers; run scripts/setup-host.sh."

# the plugin is identified by size and mtime: hashing 60 MB on every run costs more than it saves
plugin_id=$(stat -c '%s-%Y' "$COMPOSE_PLUGIN")
recipe=$( { printf '%s|minbase|bookworm|%s|v1\n' "$HOST_PACKAGES" "$plugin_id"; cat images/host/entrypoint.sh images/host/dockerd.sh images/host/sshd_config; } | sha256sum | cut -c1-16)
have=$(docker image inspect --format '{{index .Config.Labels "selfhost.testbed.recipe"}}' "$HOST_IMAGE" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  say "$HOST_IMAGE is current (recipe $recipe)"
  exit 0
fi

say "building $HOST_IMAGE with debootstrap (one to two minutes)"
started=$SECONDS
rootfs=$(mktemp -d /var/tmp/selfhost-host-rootfs.XXXXXX)
log=/tmp/selfhost-host-debootstrap.log
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include="$HOST_PACKAGES" bookworm "$rootfs" >"$log" 2>&1 \
  || die "debootstrap failed (see $log): $(tail -n 2 "$log" | tr '\n' ' ')"

install -D -m 0755 "$COMPOSE_PLUGIN" "$rootfs/usr/libexec/docker/cli-plugins/docker-compose"
install -m 0755 images/host/entrypoint.sh "$rootfs/usr/local/sbin/fleet-host-init"
install -m 0755 images/host/dockerd.sh "$rootfs/usr/local/sbin/fleet-dockerd"
install -m 0644 images/host/sshd_config "$rootfs/etc/ssh/sshd_config"
# every container makes its own host key at start; no two hosts may share one
rm -f "$rootfs"/etc/ssh/ssh_host_* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*_Packages
# the test hosts are not registry clients and keep no package lists
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/lib/docker/*

previous=$(docker image inspect --format '{{.Id}}' "$HOST_IMAGE" 2>/dev/null || true)
tar -C "$rootfs" -c . | docker import \
    --change "LABEL selfhost.testbed.recipe=$recipe" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'EXPOSE 22' \
    --change 'CMD ["/usr/local/sbin/fleet-host-init"]' \
    - "$HOST_IMAGE" >/dev/null || die "docker import of $HOST_IMAGE failed"
rm -rf "$rootfs"; trap - EXIT
# the image it replaces would stay behind untagged (half a gigabyte); running hosts keep theirs
[ -z "$previous" ] || docker image rm "$previous" >/dev/null 2>&1 || true
say "built $HOST_IMAGE (recipe $recipe) in $((SECONDS - started)) s"
