#!/usr/bin/env bash
# Install a Docker engine (Debian's docker.io: dockerd, containerd, runc and a
# BuildKit-capable docker CLI), debootstrap (deploy/build-base.sh) and
# docker-compose v1 for the container test (tests/deploy/test_docker.py).
# Idempotent and quiet. No daemon is started here: the test starts dockerd
# itself when none is running, and stops it afterwards.
set -euo pipefail
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-docker: dockerd, debootstrap and docker-compose already present"
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
# Tell invoke-rc.d not to start the docker service during the install (exit
# code 101), unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    ADDED_POLICY=1
fi
cleanup() { if [ "$ADDED_POLICY" -eq 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-docker: installed ${missing[*]} ($(dockerd --version))"
