#!/usr/bin/env bash
# Provision the compose demo (deploy/compose.yaml): three synthetic hospitals,
# the coordinator's CA and SuperLink certificate, each site's config and node
# key, and the three sites registered with the coordinator.
#
#   deploy/provision-demo.sh [DEMO_DIR] [--images-per-site N] [--force]
#
# DEMO_DIR (default deploy/demo) is what compose mounts (FEDEYE_DEMO):
#   sites/site-N/   the hospital's data          -> site-N:/data/site (read-only)
#   coordinator/    ca.crt, ca.key, superlink.*, authorized-sites.csv
#                                                -> coordinator:/etc/fedeye/coordinator (read-only)
#   site-N/         site.toml, node.key, node.pub, ca.crt
#                                                -> site-N:/etc/fedeye/site (read-only)
#   audit/          the sites' audit logs        -> site-N:/var/lib/fedeye/audit
#
# Every step is the `fedeye` command a real operator or site admin types, run
# in the fedeye-site image as its unprivileged user (uid 10001) with no
# network, so the paths written into the configs are the container paths and
# the host needs nothing but Docker. Skips everything when DEMO_DIR is already
# provisioned, unless --force (which deletes DEMO_DIR first).
set -euo pipefail

DEMO="$(cd "$(dirname "$0")" && pwd)/demo"
IMAGES_PER_SITE=40
FORCE=0
IMAGE="${FEDEYE_SITE_IMAGE:-fedeye-site:latest}"
SITES=(site-1 site-2 site-3)
while [ $# -gt 0 ]; do
    case "$1" in
        --images-per-site) IMAGES_PER_SITE="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "provision-demo: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) DEMO="$1"; shift ;;
    esac
done
mkdir -p "$DEMO"
DEMO="$(cd "$DEMO" && pwd)"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "provision-demo: image $IMAGE not found; build it first: deploy/build-images.sh" >&2
    exit 1
fi
# One command in the site image, as uid 10001, without network; extra args are docker run options.
fedeye_in() {
    local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    docker run --rm --network none --user 10001:10001 --entrypoint fedeye "${opts[@]}" "$IMAGE" "$@"
}
as_root() {  # a shell command in the image as root, on DEMO_DIR (so the host needs no sudo)
    docker run --rm --network none --user 0:0 --entrypoint sh -v "$DEMO:/demo" "$IMAGE" -c "$1"
}

# (The key folders are 0700 and owned by uid 10001: a marker outside them says it is done.)
if [ -f "$DEMO/.provisioned" ] && [ "$FORCE" -eq 0 ]; then
    echo "provision-demo: $DEMO is already provisioned; --force starts over"
    exit 0
fi
as_root "rm -rf /demo/.provisioned /demo/sites /demo/coordinator /demo/audit /demo/site-* && mkdir -p /demo/sites /demo/coordinator /demo/audit $(printf '/demo/%s ' "${SITES[@]}") && chown -R 10001:10001 /demo"

echo "provision-demo: synthesizing ${#SITES[@]} hospitals, $IMAGES_PER_SITE images each"
fedeye_in -v "$DEMO/sites:/out" -- sites synth /out --sites "${#SITES[@]}" --images-per-site "$IMAGES_PER_SITE" --size 64 >/dev/null

# Sites reach the SuperLink as 'coordinator'; its own SuperExec reaches it on 127.0.0.1.
echo "provision-demo: coordinator init (CA, SuperLink certificate for coordinator, 127.0.0.1, localhost)"
fedeye_in -v "$DEMO/coordinator:/etc/fedeye/coordinator" -- \
    coordinator init /etc/fedeye/coordinator --host coordinator >/dev/null

for site in "${SITES[@]}"; do
    echo "provision-demo: site init $site (data check, site.toml, node key)"
    fedeye_in -v "$DEMO/sites/$site:/data/site:ro" -v "$DEMO/$site:/etc/fedeye/site" -- \
        site init /etc/fedeye/site --name "$site" --data /data/site --device cpu >/dev/null
    echo "provision-demo: coordinator register-site $site"
    fedeye_in -v "$DEMO/coordinator:/etc/fedeye/coordinator" -v "$DEMO/$site/node.pub:/tmp/node.pub:ro" -- \
        coordinator register-site /tmp/node.pub --name "$site" --dir /etc/fedeye/coordinator >/dev/null
done
# What a site admin does by hand: receive ca.crt from the operator, and keep the
# audit log on the writable volume (the site folder itself is mounted read-only).
as_root "for s in ${SITES[*]}; do
    install -o 10001 -g 10001 -m 0644 /demo/coordinator/ca.crt /demo/\$s/ca.crt
    sed -i \"s|^audit_log = .*|audit_log = \\\"/var/lib/fedeye/audit/\$s.jsonl\\\"|\" /demo/\$s/site.toml
    sed -i \"/^audit_log = /a state_dir = \\\"/var/lib/fedeye/state\\\"\" /demo/\$s/site.toml
done
touch /demo/.provisioned"
echo "provision-demo: done; $DEMO holds:"
(cd "$DEMO" && find coordinator "${SITES[@]}" -type f | sort | sed 's/^/  /')
echo "next: FEDEYE_DEMO=$DEMO docker-compose -f $(cd "$(dirname "$0")" && pwd)/compose.yaml up -d"
