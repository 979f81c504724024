#!/usr/bin/env bash
# The test host's own Docker Engine, logging to /var/log/dockerd.log. Its bridge and
# address pool stay clear of the outer engine's networks. Failure tests stop it and
# start it again with 'docker exec -d HOST fleet-dockerd'.
exec dockerd --host unix:///var/run/docker.sock \
  --bip "${FLEET_DOCKER_BIP:-10.213.0.1/24}" \
  --default-address-pool "base=${FLEET_DOCKER_POOL:-10.214.0.0/16},size=24" \
  >>/var/log/dockerd.log 2>&1
