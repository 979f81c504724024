#!/usr/bin/env bash
# Host part of the test bed: Docker Engine, Compose v2, a local registry on
# 127.0.0.1:5000 and the system tools the tests use. Idempotent: what is already
# present and working is reused, so a second run takes seconds.
set -euo pipefail

REGISTRY_ADDR="${SELFHOST_REGISTRY:-127.0.0.1:5000}"
REGISTRY_PORT="${REGISTRY_ADDR##*:}"
STATE_DIR="${SELFHOST_TESTBED_STATE:-/var/lib/selfhost-rollback-testbed}"
MIN_FREE_MB="${SELFHOST_MIN_FREE_MB:-3000}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "set-up needs root (to install Docker and start dockerd); run it as root or install sudo."
  SUDO="sudo"
fi

check_space() {
  local dir="$1" free_mb
  mkdir -p "$dir" 2>/dev/null || $SUDO mkdir -p "$dir"
  free_mb=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt "$MIN_FREE_MB" ]; then
    die "only ${free_mb} MB free under $dir; the test bed needs about ${MIN_FREE_MB} MB (images, registry, volumes). Free some space (e.g. 'docker system prune') and run again."
  fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing: $* — this set-up installs them with apt-get, which is not available here. Install them with your package manager and run again."
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    $SUDO apt-get update -qq || die "apt-get update failed: the Debian package mirror is not reachable. Check the network or install: $*"
    APT_UPDATED=1
  fi
  say "installing: $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get could not install: $*. Install them by hand and run again."
}

# 1. System tools.
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
# the backup fidelity tests set ACLs and capabilities with the stock tools and extract with bsdtar
command -v setfacl >/dev/null 2>&1 || need+=(acl)
command -v setcap >/dev/null 2>&1 || need+=(libcap2-bin)
command -v bsdtar >/dev/null 2>&1 || need+=(libarchive-tools)
# the report's metrics are read back through a real node exporter
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
# the traffic-shift tests start their own HAProxy (runtime API on a tmp admin socket); the packaged service is not used
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
if [ "${#need[@]}" -gt 0 ]; then apt_install "${need[@]}"; fi

# 2. Compose v2 CLI plugin (bookworm only has v1; trixie's package is the v2 plugin).
if ! docker compose version >/dev/null 2>&1; then
  say "installing the Compose v2 plugin from Debian trixie"
  # the machine's own Debian mirror (first non-security "URIs:" or "deb" entry)
  mirror=$( { grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } \
            | grep -oE 'https?://[^ ]+/debian/?$|https?://[^ ]+/debian/? ' | grep -v security | head -n1 | tr -d ' ' || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} trixie main" >"$tmp/sources.list"
  aptopts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
           -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
  $SUDO apt-get "${aptopts[@]}" update -qq || die "could not read the trixie package list from $mirror; install the Compose v2 plugin (docker compose) by hand."
  (cd "$tmp" && $SUDO apt-get "${aptopts[@]}" download docker-compose >/dev/null) || die "could not download trixie's docker-compose package from $mirror."
  $SUDO dpkg -i "$tmp"/docker-compose_*.deb >/dev/null || die "dpkg could not install $(ls "$tmp"/docker-compose_*.deb)."
  rm -rf "$tmp"
  docker compose version >/dev/null 2>&1 || die "the Compose v2 plugin was installed but 'docker compose version' does not answer; check /usr/libexec/docker/cli-plugins."
fi

# 3. Docker Engine: reuse a running one, else start dockerd.
if ! docker info >/dev/null 2>&1; then
  check_space /var/lib/docker
  say "starting dockerd (log: /var/log/selfhost-dockerd.log)"
  $SUDO sh -c 'nohup setsid dockerd >/var/log/selfhost-dockerd.log 2>&1 </dev/null &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not come up within 30 s; the last lines of /var/log/selfhost-dockerd.log say: $(tail -n 3 /var/log/selfhost-dockerd.log | tr '\n' ' ')"
fi
check_space "$(docker info --format '{{.DockerRootDir}}')"

# 4. Local registry on 127.0.0.1:5000.
if curl -fsS --max-time 2 "http://${REGISTRY_ADDR}/v2/" >/dev/null 2>&1; then
  : # a registry already answers: reuse it
else
  if (exec 3<>"/dev/tcp/127.0.0.1/${REGISTRY_PORT}") 2>/dev/null; then
    owner=$(ss -ltnpH "sport = :${REGISTRY_PORT}" 2>/dev/null | grep -oE 'users:\(\("[^"]+",pid=[0-9]+' | head -n1 | sed -E 's/users:\(\("([^"]+)",pid=([0-9]+)/\1 (pid \2)/')
    die "port ${REGISTRY_PORT} is taken by ${owner:-another program} and it is not a Docker registry. Stop it, or choose another address with SELFHOST_REGISTRY=127.0.0.1:PORT."
  fi
  $SUDO mkdir -p "$STATE_DIR/registry"
  cat >"$STATE_DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE_DIR/registry}
  delete: {enabled: true}
http:
  addr: ${REGISTRY_ADDR}
EOF
  say "starting the local registry on ${REGISTRY_ADDR} (log: /var/log/selfhost-registry.log)"
  $SUDO sh -c "nohup setsid docker-registry serve '$STATE_DIR/registry.yml' >/var/log/selfhost-registry.log 2>&1 </dev/null &"
  for _ in $(seq 1 40); do curl -fsS --max-time 1 "http://${REGISTRY_ADDR}/v2/" >/dev/null 2>&1 && break; sleep 0.25; done
  curl -fsS --max-time 2 "http://${REGISTRY_ADDR}/v2/" >/dev/null 2>&1 || die "the registry did not answer on ${REGISTRY_ADDR}; see /var/log/selfhost-registry.log."
fi
say "engine $(docker version --format '{{.Server.Version}}'), compose $(docker compose version --short), registry ${REGISTRY_ADDR}: ready"
