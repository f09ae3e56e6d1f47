#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser tests (Playwright drives
# /usr/bin/chromium; `playwright install` is never used). Idempotent and quiet.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "install-chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "install-chromium: $(/usr/bin/chromium --version)"
