#!/usr/bin/env bash
# Container images on a machine that cannot pull from Docker Hub, built from what is reachable:
# Debian's packages (mmdebstrap) and Maven Central. Used by `make compose-test`
# (tests/compose) and documented in docs/operations.md, "Running with containers".
#
#   images.sh engine              podman, runc and a working containers.conf (installed when missing)
#   images.sh bases               the three local base images, each built once and then reused:
#                                   localhost/fleetreg-python:3.11-bookworm  (PYTHON_IMAGE of the Dockerfile)
#                                   localhost/fleetreg-kafka:4.1.1           (stands in for apache/kafka:4.1.1)
#                                   localhost/fleetreg-postgres:15-bookworm  (stands in for postgres:16.11-bookworm)
#   images.sh fleetreg [REF] [TAG]
#                                 the fleetreg image from the Dockerfile: of the working tree
#                                 (default) or of a git ref (e.g. v0.3.0), tagged localhost/fleetreg:TAG
#                                 (default: local; a ref's default: the ref)
#   images.sh all                 engine, bases, fleetreg
#
# Builds run podman with the host's CA bundle and pip configuration mounted read-only
# (`podman build -v`): the host reaches PyPI through a certificate authority only its own
# bundle trusts. Mounts are never committed: the images keep Debian's bundle (tested).
# Everything is logged to var/log/images-*.log; a step prints one line and its time.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOG="$ROOT/var/log"
WORK="$ROOT/var/images"
MIRROR=${FLEETREG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
KAFKA_VERSION=4.1.1
PYTHON_BASE=localhost/fleetreg-python:3.11-bookworm
KAFKA_IMAGE=localhost/fleetreg-kafka:$KAFKA_VERSION
POSTGRES_IMAGE=localhost/fleetreg-postgres:15-bookworm
HOST_CA=/etc/ssl/certs/ca-certificates.crt

say() { echo "images: $*"; }
fail() { echo "images: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

timed() { # WHAT COMMAND...: runs COMMAND, logging to var/log/images-WHAT.log, and says how long it took
  local what=$1 started
  shift
  started=$(date +%s)
  if ! "$@" >"$LOG/images-$what.log" 2>&1; then
    fail "$what failed; see var/log/images-$what.log"
  fi
  say "$what done in $(($(date +%s) - started)) s"
}

# ------------------------------------------------------------------ engine ----
# podman 4.3 from Debian runs containers here only with runc, cgroupfs and no default
# ulimits (crun refuses this kernel's hybrid cgroups). The lines are written only where no
# containers.conf exists: a machine with its own configuration keeps it.
engine() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  # The compose file's backend network is internal; its services find each other by name
  # (kafka, postgres). Podman 4.3's CNI backend gives an internal network no DNS, so every
  # lookup fails (Kafka: UnknownHostException kafka); netavark with aardvark-dns does. Both
  # are only Recommends of podman: a --no-install-recommends install lacks them.
  [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
  [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || fail "missing ${missing[*]} and apt-get is not available to install them"
    say "installing Debian's ${missing[*]} (log: var/log/images-engine-install.log)"
    { as_root apt-get update && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y --no-install-recommends \
        podman runc mmdebstrap uidmap slirp4netns containernetworking-plugins iptables netavark aardvark-dns; } \
      >"$LOG/images-engine-install.log" 2>&1 || fail "installing podman failed; see var/log/images-engine-install.log"
  fi
  if [ ! -e /etc/containers/containers.conf ]; then
    say "writing /etc/containers/containers.conf (runc, cgroupfs, no default ulimits)"
    as_root mkdir -p /etc/containers
    printf '%s\n' '# Written by fleetreg deploy/container/images.sh: crun and the default ulimits are' \
      '# refused on this machine; runc with cgroupfs works.' \
      '[containers]' 'default_ulimits = []' '' '[engine]' 'cgroup_manager = "cgroupfs"' 'runtime = "runc"' |
      as_root tee /etc/containers/containers.conf >/dev/null
  fi
  # Our own file from before the network backend was set: add it (a machine's own file is
  # left alone). Podman picks the backend at start; a switch keeps no CNI network's state.
  if grep -q '^# Written by fleetreg deploy/container/images.sh' /etc/containers/containers.conf &&
    ! grep -q '^network_backend' /etc/containers/containers.conf; then
    say "setting podman's network backend to netavark in /etc/containers/containers.conf"
    printf '%s\n' '' '[network]' '# internal networks get DNS (aardvark-dns) only with netavark' 'network_backend = "netavark"' |
      as_root tee -a /etc/containers/containers.conf >/dev/null
  fi
  podman info >/dev/null 2>&1 || fail "podman does not run here; see 'podman info'"
}

# ------------------------------------------------------------------- bases ----
# An image is reused only while what it was built from is unchanged: its label
# dev.fleetreg.source holds a digest of the build's files and package list.
source_digest() { # WHAT [FILES...]
  { echo "$1"; shift; [ "$#" -eq 0 ] || cat "$@"; } | sha256sum | cut -c1-16
}

current() { # IMAGE DIGEST
  [ "$(podman image inspect --format '{{index .Labels "dev.fleetreg.source"}}' "$1" 2>/dev/null)" = "$2" ]
}

# A Debian root filesystem with PACKAGES, imported as IMAGE. Documentation, manual pages and
# translations are left out (the man1 folder is kept: the JRE's postinst links into it).
debian_base() { # IMAGE PACKAGES(comma-separated) [DIGEST]
  local image=$1 packages=$2 digest=${3:-} tarball
  tarball="$WORK/$(echo "$image" | tr '/:' '__').tar"
  # shellcheck disable=SC2016 # the hooks' $1 is mmdebstrap's (the root folder), not ours
  mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --essential-hook='mkdir -p "$1/usr/share/man/man1"' \
    --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*' \
    "$SUITE" "$tarball" "$MIRROR"
  podman import --change 'CMD ["/bin/sh"]' --change "LABEL dev.fleetreg.source=$digest" "$tarball" "$image"
  rm -f "$tarball"
}

fetch_kafka_jars() { # DIR
  mvn -B -q -f "$ROOT/deploy/container/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$1"
}

KAFKA_FILES=("$ROOT"/deploy/container/kafka/*)
POSTGRES_FILES=("$ROOT"/deploy/container/postgres/*)
PYTHON_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates

kafka_image() { # DIGEST
  local context="$WORK/kafka-context"
  rm -rf "$context" && mkdir -p "$context"
  cp -r "$ROOT/deploy/container/kafka/." "$context/"
  fetch_kafka_jars "$context/libs"
  debian_base localhost/fleetreg-jre:17-bookworm openjdk-17-jre-headless
  podman build --build-arg BASE=localhost/fleetreg-jre:17-bookworm --label "dev.fleetreg.source=$1" \
    -t "$KAFKA_IMAGE" "$context"
  rm -rf "$context"
}

postgres_image() { # DIGEST
  debian_base localhost/fleetreg-postgres-base:15-bookworm postgresql-15
  podman build --build-arg BASE=localhost/fleetreg-postgres-base:15-bookworm --label "dev.fleetreg.source=$1" \
    -t "$POSTGRES_IMAGE" "$ROOT/deploy/container/postgres"
}

bases() {
  command -v mmdebstrap >/dev/null || fail "mmdebstrap is missing: run 'images.sh engine' first"
  local python kafka postgres
  python=$(source_digest "$SUITE $PYTHON_PACKAGES")
  kafka=$(source_digest "$SUITE $KAFKA_VERSION" "${KAFKA_FILES[@]}")
  postgres=$(source_digest "$SUITE postgresql-15" "${POSTGRES_FILES[@]}")
  current "$PYTHON_BASE" "$python" || timed base-python debian_base "$PYTHON_BASE" "$PYTHON_PACKAGES" "$python"
  current "$KAFKA_IMAGE" "$kafka" || timed base-kafka kafka_image "$kafka"
  current "$POSTGRES_IMAGE" "$postgres" || timed base-postgres postgres_image "$postgres"
}

# ---------------------------------------------------------------- fleetreg ----
build_fleetreg() { # CONTEXT TAG
  local mounts=()
  [ -f "$HOST_CA" ] && mounts+=(-v "$HOST_CA:$HOST_CA:ro")
  [ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  # --network=host: the build's pip reaches PyPI as the host does. Under netavark (set by
  # engine(), for DNS on the compose file's internal network) a build container's bridge
  # got no answer from this machine's resolver, where CNI's did.
  podman build --network=host --build-arg PYTHON_IMAGE="$PYTHON_BASE" "${mounts[@]}" -t "localhost/fleetreg:$2" "$1"
}

fleetreg() { # [REF] [TAG]
  local ref=${1:-} tag=${2:-} context
  if [ -z "$ref" ]; then
    timed "fleetreg-${tag:-local}" build_fleetreg "$ROOT" "${tag:-local}"
    return
  fi
  tag=${tag:-$ref}
  context="$WORK/src-$tag"
  rm -rf "$context" && mkdir -p "$context"
  git -C "$ROOT" archive "$ref" | tar -x -C "$context"
  timed "fleetreg-$tag" build_fleetreg "$context" "$tag"
  rm -rf "$context"
}

mkdir -p "$LOG" "$WORK"
case "${1:-}" in
  engine) engine ;;
  bases) bases ;;
  fleetreg) shift; fleetreg "$@" ;;
  all) engine; bases; fleetreg ;;
  *) fail "usage: images.sh engine|bases|fleetreg [REF] [TAG]|all" ;;
esac
