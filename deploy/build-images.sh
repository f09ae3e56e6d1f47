#!/usr/bin/env bash
# Build the FedEye images from this repository with BuildKit:
#
#   deploy/build-images.sh [--base IMAGE] [--torch-index-url URL] [--tag TAG] [site] [coordinator]
#
#   --base             base image (default: fedeye-base:bookworm when it exists, from
#                      deploy/build-base.sh, else python:3.11-slim-bookworm)
#   --torch-index-url  torch variant, e.g. https://download.pytorch.org/whl/cpu
#                      (default: pip's index; see deploy/Dockerfile.site)
#   --tag              image tag (default: latest) -> fedeye-site:TAG, fedeye-coordinator:TAG
#
# Both images share one install stage, so the second build reuses its layers.
# pip inside the build sees what pip on this host sees: local file:// indexes
# and find-links folders from the host's pip configuration are served on
# 127.0.0.1 for the duration of the build (hence `--network host`), and the
# host's pip CA bundle is passed as a build secret (never stored in a layer).
set -euo pipefail

cd "$(dirname "$0")/.."
BASE=""
TORCH_INDEX_URL=""
TAG="latest"
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --base) BASE="$2"; shift 2 ;;
        --torch-index-url) TORCH_INDEX_URL="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        site|coordinator) TARGETS+=("$1"); shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-images: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(site coordinator)

# A docker CLI that builds with BuildKit: buildx if installed, else a pre-23 CLI
# (Debian's docker.io) with DOCKER_BUILDKIT=1; the legacy builder lacks build secrets.
DOCKER_CLI=""
if docker buildx version >/dev/null 2>&1; then
    DOCKER_CLI="docker"
else
    for cli in docker /usr/bin/docker; do
        major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
        if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then DOCKER_CLI="$cli"; break; fi
    done
fi
if [ -z "$DOCKER_CLI" ]; then
    echo "build-images: no BuildKit-capable docker CLI; install the buildx plugin (docker-buildx) or Debian's docker.io" >&2
    exit 1
fi
export DOCKER_BUILDKIT=1

if [ -z "$BASE" ]; then
    if docker image inspect fedeye-base:bookworm >/dev/null 2>&1; then BASE="fedeye-base:bookworm"; else BASE="python:3.11-slim-bookworm"; fi
fi

WORK=$(mktemp -d /tmp/fedeye-build.XXXXXX)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- the host's pip configuration, made reachable from inside the build ----------------
PIP_HOST=(python3 -m pip)
[ -x .venv/bin/pip ] && PIP_HOST=(.venv/bin/pip)
pip_setting() {  # all values of one pip setting (config files and PIP_* env), one per line
    { "${PIP_HOST[@]}" config list 2>/dev/null || true; } | sed -n "s/^[a-z:]*\.$1='\(.*\)'$/\1/p" | tr ' ' '\n' | sed '/^$/d' | awk '!seen[$0]++'
}
mkdir -p "$WORK/www"
served=0
URL=""
serve() {  # serve local folder $1 as /<n>/ and set URL; an index serves its parent (its links climb to ../../files)
    local path="${1#file://}" top name=""
    URL=""
    [ -d "$path" ] || return 0
    top="$path"
    if [ "$2" = index ]; then top=$(dirname "$path"); name="$(basename "$path")/"; fi
    ln -s "$(cd "$top" && pwd)" "$WORK/www/$served"
    URL="http://127.0.0.1:PORT/$served/$name"
    served=$((served + 1))
}
EXTRA_INDEXES=() FIND_LINKS=()
for url in $(pip_setting index-url) $(pip_setting extra-index-url); do
    case "$url" in file://*|/*) serve "$url" index ;; *) URL="$url" ;; esac
    [ -n "$URL" ] && EXTRA_INDEXES+=("$URL")
done
for url in $(pip_setting find-links); do
    case "$url" in file://*|/*) serve "$url" links ;; *) URL="$url" ;; esac
    [ -n "$URL" ] && FIND_LINKS+=("$URL")
done
SECRETS=()
if [ "$served" -gt 0 ]; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/www" >"$WORK/http.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null && break; sleep 0.1; done
fi
if [ ${#EXTRA_INDEXES[@]} -gt 0 ] || [ ${#FIND_LINKS[@]} -gt 0 ]; then
    {
        echo "[global]"
        [ ${#EXTRA_INDEXES[@]} -gt 0 ] && echo "extra-index-url = ${EXTRA_INDEXES[*]//PORT/${PORT:-0}}"
        [ ${#FIND_LINKS[@]} -gt 0 ] && echo "find-links = ${FIND_LINKS[*]//PORT/${PORT:-0}}"
    } >"$WORK/pip.conf"
    SECRETS+=(--secret "id=pip.conf,src=$WORK/pip.conf")
    echo "build-images: pip in the build also uses: $(grep -v '^\[' "$WORK/pip.conf" | tr '\n' ' ')"
fi
CA=$(pip_setting cert | head -n 1)
CA="${PIP_CERT:-$CA}"
[ -n "$CA" ] && [ -f "$CA" ] && SECRETS+=(--secret "id=pip-ca,src=$CA")

# --- build ------------------------------------------------------------------------------
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE")
[ -n "$TORCH_INDEX_URL" ] && BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
for target in "${TARGETS[@]}"; do
    start=$(date +%s)
    previous=$(docker image inspect -f '{{.Id}}' "fedeye-$target:$TAG" 2>/dev/null || true)
    "$DOCKER_CLI" build --network host --progress plain "${BUILD_ARGS[@]}" "${SECRETS[@]}" \
        -f "deploy/Dockerfile.$target" -t "fedeye-$target:$TAG" . 2>&1 | tee "$WORK/build-$target.log" \
        | grep -E '^#[0-9]+ (\[|DONE|CACHED|ERROR)|^ERROR|error:' || true
    if ! docker image inspect "fedeye-$target:$TAG" >/dev/null 2>&1 \
        || grep -q '^ERROR\|^error:' "$WORK/build-$target.log"; then
        echo "build-images: building fedeye-$target failed; last lines:" >&2
        tail -n 30 "$WORK/build-$target.log" >&2
        exit 1
    fi
    # The image this tag named before, now untagged: drop it (its shared layers stay).
    if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "fedeye-$target:$TAG")" ] \
        && [ "$(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null)" = "0" ]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    size=$(docker image inspect -f '{{.Size}}' "fedeye-$target:$TAG" | awk '{printf "%.2f GB", $1/1e9}')
    echo "build-images: fedeye-$target:$TAG from $BASE in $(( $(date +%s) - start ))s, $size"
done
