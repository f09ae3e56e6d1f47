#!/usr/bin/env bash
# Build FedEye's base image without any container registry: a minimal Debian
# bookworm root filesystem made by debootstrap from an apt mirror, imported
# with `docker import`. It holds python3 (3.11), python3-venv and CA
# certificates, i.e. what deploy/Dockerfile.* need from `python:3.11-slim`.
#
#   deploy/build-base.sh [--tag fedeye-base:bookworm] [--mirror URL] [--force]
#
# Skips the build when the tag already exists (unless --force). Needs root,
# debootstrap and a running Docker engine. The mirror defaults to the first
# Debian URI in this machine's apt sources, else deb.debian.org; downloaded
# .debs are kept in $FEDEYE_DEBOOTSTRAP_CACHE (default
# /var/cache/fedeye/debootstrap) so a rebuild downloads nothing.
set -euo pipefail

TAG="fedeye-base:bookworm"
MIRROR=""
FORCE=0
SUITE="bookworm"
CACHE="${FEDEYE_DEBOOTSTRAP_CACHE:-/var/cache/fedeye/debootstrap}"
PACKAGES="python3,python3-venv,ca-certificates"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-base: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

host_mirror() {
    # First Debian (not -security) URI in the host's apt sources, deb822 or one-line style.
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "URIs:" || $1 == "deb" {print $2}' | grep -i debian | grep -v -- '-security' | head -n 1 || true
}

if [ "$(id -u)" -ne 0 ]; then
    echo "build-base: debootstrap needs root; run it as root (or with sudo)" >&2
    exit 1
fi
for tool in debootstrap docker; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-base: '$tool' not found; install it: apt-get install -y debootstrap docker.io" >&2
        exit 1
    fi
done
if ! docker info >/dev/null 2>&1; then
    echo "build-base: no Docker engine answers; start one (dockerd &) and try again" >&2
    exit 1
fi
if [ "$FORCE" -eq 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "build-base: $TAG already exists ($(docker image inspect -f '{{.Id}}' "$TAG" | cut -c1-19)); --force rebuilds it"
    exit 0
fi

MIRROR="${MIRROR:-$(host_mirror)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS=$(mktemp -d /var/tmp/fedeye-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$CACHE"

start=$(date +%s)
echo "build-base: debootstrap $SUITE from $MIRROR (packages: $PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    echo "build-base: debootstrap failed; last lines of its log:" >&2
    tail -n 20 "$ROOTFS.log" >&2
    rm -f "$ROOTFS.log"
    exit 1
}
rm -f "$ROOTFS.log"

# Same apt sources as the host's mirror, so `apt-get install` works in derived images.
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
EOF
# What an image does not need: apt lists and .debs, docs, man pages, locales.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
find "$ROOTFS"/usr/lib/python3* -name '__pycache__' -type d -prune -exec rm -rf {} +

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase + $PACKAGES from $MIRROR" \
    - "$TAG" >/dev/null
docker run --rm "$TAG" python3 -c 'import ssl, venv, sys; print("build-base: python", sys.version.split()[0])'
echo "build-base: built $TAG in $(( $(date +%s) - start ))s, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
