#!/usr/bin/env bash
# PID 1 of a fleet test host: sshd (root by key only) and its own Docker Engine.
# The controller's public key arrives in FLEET_AUTHORIZED_KEY; logs go to /var/log.
set -u

install -d -m 0700 /root/.ssh
if [ -n "${FLEET_AUTHORIZED_KEY:-}" ]; then
  printf '%s\n' "$FLEET_AUTHORIZED_KEY" >/root/.ssh/authorized_keys
  chmod 0600 /root/.ssh/authorized_keys
fi
# host keys are made per container, so no two test hosts share an identity
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
install -d -m 0755 /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log

/usr/local/sbin/fleet-dockerd &

stop() {
  [ -r /var/run/docker.pid ] && kill -TERM "$(cat /var/run/docker.pid)" 2>/dev/null
  wait 2>/dev/null
  exit 0
}
trap stop TERM INT

# stay up (and reap orphans) whatever dockerd does: failure tests stop it on purpose
while :; do
  wait -n 2>/dev/null || sleep 1
done
