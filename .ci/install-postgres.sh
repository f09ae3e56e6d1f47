#!/usr/bin/env bash
# Install the PostgreSQL server binaries (initdb, pg_ctl) that the run-store
# tests start on their own (tests/server/conftest.py). Idempotent and quiet.
# The system service is not started: the tests run their own throwaway server.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "install-postgres: $(ls -d /usr/lib/postgresql/*/bin | tail -n 1) already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Tell invoke-rc.d not to start services during the install (exit code 101),
# unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    ADDED_POLICY=1
fi
cleanup() {
    if [ "$ADDED_POLICY" -eq 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "install-postgres: postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
fi
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
