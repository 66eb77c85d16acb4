#!/usr/bin/env bash
# Build the tideserve images (one per role: tideserve-batcher, -balancer, -worker, -scaler, tag
# dev) without a container registry (the documented offline path).
#
# Why: these machines reach Debian's apt mirror and PyPI but no container registry, and pip inside
# a build container does not trust the host's proxy CA. So the base image is made locally with
# debootstrap, the Python dependencies are downloaded on the host into a wheelhouse, and the build
# installs from that wheelhouse served on 127.0.0.1.
#
# Steps (each skipped when already done, so the script is safe to re-run):
#   1. install docker.io with apt-get if no dockerd is installed and no daemon answers;
#   2. start dockerd (host networking only) in the background if no daemon answers; install
#      docker-compose if missing;
#   3. make the base image from a debootstrap rootfs unless it exists;
#   4. pip-download the project's dependencies (torch==2.13.0 CPU from the local wheel dir that
#      pip is configured with) into a cached wheelhouse, unless the requirement list is unchanged;
#   5. serve the wheelhouse on a fixed loopback port (any free one if busy) and build each role's
#      target of docker/Dockerfile with --network host; the layer cache makes an unchanged
#      rebuild ~1 s.
#
# Usage (as root):  scripts/docker_offline.sh
# Environment overrides:
#   TIDESERVE_CACHE_DIR   wheelhouse and rootfs scratch  (default /var/cache/tideserve-docker)
#   BASE_IMAGE            local base image tag           (default localbase/python:3.11-bookworm)
#   IMAGE_TAG             tag of every image             (default dev: tideserve-<role>:dev)
#   DEBIAN_MIRROR         debootstrap mirror             (default http://deb.debian.org/debian)
#   PYTHON                Python with pip for downloading (default: the repo's .venv, else python3)
#   TIDESERVE_WHEELHOUSE_PORT  loopback port of the wheelhouse server (default 18765; a fixed
#                         port keeps the build cache valid between runs)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${TIDESERVE_CACHE_DIR:-/var/cache/tideserve-docker}"
BASE_IMAGE="${BASE_IMAGE:-localbase/python:3.11-bookworm}"
IMAGE_TAG="${IMAGE_TAG:-dev}"
# The Dockerfile's targets, one image each.
ROLES=(batcher balancer worker scaler)
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TORCH_VERSION=2.13.0
# The extras the Dockerfile's targets install by default (its ARG *_EXTRAS lines): the wheelhouse
# must hold their dependencies too.
IMAGE_EXTRAS="$(sed -n 's/^ARG [A-Z]*_EXTRAS=//p' "$ROOT/docker/Dockerfile" | paste -sd, -)"
DOCKERD_LOG=/tmp/tideserve-dockerd.log
HTTP_LOG=/tmp/tideserve-wheelhouse-http.log
WHEELHOUSE_PORT="${TIDESERVE_WHEELHOUSE_PORT:-18765}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

SCRIPT_START=$(date +%s.%N)
log() { printf '[docker_offline] %s\n' "$*"; }
die() { printf '[docker_offline] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# Run one named step and report how long it took.
step() {
    local name="$1"; shift
    local start; start=$(date +%s.%N)
    log "$name ..."
    "$@"
    log "$name: done in $(elapsed "$start") s"
}

HTTP_PID=""
cleanup() {
    if [[ -n "$HTTP_PID" ]] && kill -0 "$HTTP_PID" 2>/dev/null; then
        kill "$HTTP_PID" 2>/dev/null || true
        wait "$HTTP_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'die "failed at line $LINENO (exit $?)"' ERR

[[ "$(id -u)" -eq 0 ]] || die "run as root (apt-get, dockerd and debootstrap need it)"

daemon_answers() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    # Try without an update first: on a machine with fresh lists this saves ~10 s.
    timeout 600 apt-get install -y --no-install-recommends "$@" \
        || { timeout 300 apt-get update && timeout 900 apt-get install -y --no-install-recommends "$@"; } \
        || die "apt-get install $* failed"
}

install_docker() {
    if command -v dockerd >/dev/null 2>&1; then log "dockerd already installed"; return; fi
    apt_install docker.io
}

start_dockerd() {
    # --bridge=none/--iptables=false/--ip-masq=false: containers use host networking only, and
    # the daemon leaves the host's interfaces and firewall alone. --no-new-privileges for every
    # container: Swarm services cannot ask for it themselves (stacks ignore security_opt).
    # A daemon killed without cleanup leaves its pid file, and a new one then refuses to start.
    local pidfile=/var/run/docker.pid
    if [[ -f "$pidfile" ]] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then rm -f "$pidfile"; fi
    log "starting dockerd (log: $DOCKERD_LOG)"
    # Its own session: an interrupt of this script must not take the daemon down with it.
    setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false --no-new-privileges >"$DOCKERD_LOG" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 60))
    until daemon_answers; do
        kill -0 "$pid" 2>/dev/null || die "dockerd exited; see $DOCKERD_LOG"
        ((SECONDS < deadline)) || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
        sleep 0.5
    done
    log "dockerd answers (pid $pid)"
}

make_base_image() {
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local rootfs="$CACHE_DIR/rootfs"
    # A rootfs left by an interrupted run is not trusted: start from an empty directory.
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
    # Package caches are not needed in the image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    timeout 600 tar -C "$rootfs" -c . | timeout 600 docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >/dev/null || die "docker import of the base image failed"
    rm -rf "$rootfs"
}

# The requirement list: the project's dependencies, the extras the images install (the
# Dockerfile's *_EXTRAS defaults) and the build backend from pyproject.toml, with torch pinned to the
# CPU build the Dockerfile installs.
write_requirements() {
    "$PYTHON" - "$ROOT/pyproject.toml" "$TORCH_VERSION" "$IMAGE_EXTRAS" >"$1" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    project = tomllib.load(handle)
print(f"torch=={sys.argv[2]}")
requirements = project["build-system"]["requires"] + project["project"]["dependencies"]
for extra in filter(None, sys.argv[3].split(",")):
    requirements += project["project"]["optional-dependencies"][extra]
for requirement in requirements:
    if not requirement.replace(" ", "").startswith("torch"):
        print(requirement)
PY
}

build_wheelhouse() {
    local wheelhouse="$CACHE_DIR/wheelhouse"
    local wanted="$CACHE_DIR/requirements.txt.new"
    write_requirements "$wanted"
    if [[ -f "$wheelhouse/.complete" ]] && cmp -s "$wanted" "$wheelhouse/requirements.txt"; then
        log "wheelhouse up to date ($(find "$wheelhouse" -name '*.whl' | wc -l) wheels)"
        rm -f "$wanted"
        return
    fi
    mkdir -p "$wheelhouse"
    rm -f "$wheelhouse/.complete"
    # Wheels for the image's interpreter (CPython 3.11 on glibc 2.36, bookworm), whatever Python
    # runs this script. pip does not widen a glibc version given with --platform to older ones,
    # so every manylinux tag the image accepts is listed. pip finds torch in its configured local
    # wheel directory.
    local platforms=(--platform linux_x86_64 --platform manylinux2014_x86_64)
    local minor
    for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    timeout 1200 "$PYTHON" -m pip download --dest "$wheelhouse" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
        -r "$wanted" || die "pip download failed"
    # PyPI's Linux torch is the CUDA build (GBs of nvidia wheels): insist on the CPU one.
    if ! compgen -G "$wheelhouse/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
        die "no torch-$TORCH_VERSION+cpu wheel in $wheelhouse; give pip a source for it, e.g." \
            "PIP_FIND_LINKS=/dir/with/wheel or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
    fi
    mv "$wanted" "$wheelhouse/requirements.txt"
    touch "$wheelhouse/.complete"
}

# The wheelhouse URL is a build argument, and the legacy builder keys its layer cache on build
# argument values: a port that changed between runs would rebuild every layer. So a fixed port is
# used when free, any free port otherwise.
wheelhouse_port() {
    "$PYTHON" - "$WHEELHOUSE_PORT" <<'PY'
import socket
import sys

with socket.socket() as sock:
    # As http.server does: a port left in TIME_WAIT by the previous run is free to listen on.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        print(f"port {sys.argv[1]} is busy: the build cache will not be reused", file=sys.stderr)
        sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1])
PY
}

serve_wheelhouse() {
    PORT="$(wheelhouse_port)"
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$CACHE_DIR/wheelhouse" "$PORT" \
        >"$HTTP_LOG" 2>&1 &
    HTTP_PID=$!
    local deadline=$((SECONDS + 15))
    until "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" \
            2>/dev/null; do
        kill -0 "$HTTP_PID" 2>/dev/null || die "wheelhouse server exited; see $HTTP_LOG"
        ((SECONDS < deadline)) || die "wheelhouse server did not answer within 15 s"
        sleep 0.2
    done
    log "wheelhouse served at http://127.0.0.1:$PORT/ (pid $HTTP_PID)"
}

build_image() {
    local role=$1
    [[ -f "$ROOT/README.md" ]] || die "README.md is missing; pyproject.toml names it as the readme"
    # The legacy builder works with both the Debian 20.10 client and newer clients without buildx.
    DOCKER_BUILDKIT=0 timeout 1800 docker build --network host \
        --file "$ROOT/docker/Dockerfile" --target "$role" --tag "tideserve-$role:$IMAGE_TAG" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "PIP_EXTRA_ARGS=--no-index --find-links http://127.0.0.1:$PORT/" \
        "$ROOT" || die "docker build of $role failed"
}

stop_wheelhouse() {
    cleanup
    HTTP_PID=""
}

mkdir -p "$CACHE_DIR"
if daemon_answers; then
    log "a Docker daemon already answers"
else
    step "install docker.io" install_docker
    step "start dockerd" start_dockerd
fi
# compose.yaml's test drives Debian's docker-compose, which a machine's own Docker may lack.
command -v docker-compose >/dev/null 2>&1 || step "install docker-compose" apt_install docker-compose
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE exists"
else
    step "base image $BASE_IMAGE (debootstrap + import)" make_base_image
fi
step "wheelhouse" build_wheelhouse
step "serve wheelhouse" serve_wheelhouse
for role in "${ROLES[@]}"; do
    step "build tideserve-$role:$IMAGE_TAG" build_image "$role"
done
step "stop wheelhouse server" stop_wheelhouse
for role in "${ROLES[@]}"; do
    log "image tideserve-$role:$IMAGE_TAG: $(docker image inspect --format '{{.Size}}' \
        "tideserve-$role:$IMAGE_TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done
log "total $(elapsed "$SCRIPT_START") s"
