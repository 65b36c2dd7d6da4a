#!/usr/bin/env bash
# docker-compose.yml under podman and podman-compose, where the compose tool cannot wait for a
# healthcheck: podman below 4.6 has no `podman wait --condition=healthy` (podman-compose then
# ignores `condition: service_healthy`), and podman runs healthchecks from systemd timers, which
# do not exist on a machine or container without systemd. This script is the documented
# workaround (docs/operations.md, "Running with containers"): it starts the stack in the order
# the compose file's depends_on states, and runs each container's own compose healthcheck
# (`podman healthcheck run`) until it passes. With Docker, `docker compose up -d --wait` does all
# of it by itself.
#
#   compose.sh up                   postgres and kafka (healthy), migrate (exit 0), the six services (healthy)
#   compose.sh wait SERVICE...      run the services' healthchecks until each passes (FLEETREG_HEALTH_TIMEOUT, 180 s)
#   compose.sh health               run every healthcheck (up to three tries) and print a table; exit 1 if any fails
#                                   (podman without systemd never runs them by itself: call this from
#                                   cron or your monitoring to see "unhealthy")
#   compose.sh stop                 the six services first (each drains within its grace period), then
#                                   kafka and postgres
#   compose.sh upgrade IMAGE        the documented rolling order: migrate with IMAGE, then dedup,
#                                   provisioning, notifier, ingestion, operator, intake, one by one,
#                                   each recreated with IMAGE and healthy before the next
#   compose.sh down [--volumes]     remove the project's containers and networks; with --volumes its
#                                   volumes too (the registry!). Images stay: they are the layer cache
#   compose.sh [ARGS...]            anything else goes to podman-compose as it is (ps, logs, exec)
#
# Environment: COMPOSE_PROJECT_NAME (fleetreg), FLEETREG_COMPOSE_ENV_FILE (.env beside the compose
# file), FLEETREG_COMPOSE_FILE (docker-compose.yml), PODMAN_COMPOSE (podman-compose on the PATH,
# else the project's .venv/bin/podman-compose).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PROJECT=${COMPOSE_PROJECT_NAME:-fleetreg}
ENV_FILE=${FLEETREG_COMPOSE_ENV_FILE:-$ROOT/.env}
COMPOSE_FILE=${FLEETREG_COMPOSE_FILE:-$ROOT/docker-compose.yml}
TIMEOUT=${FLEETREG_HEALTH_TIMEOUT:-180}
INFRA=(postgres kafka)
SERVICES=(dedup provisioning intake operator ingestion notifier)
# The rolling order of an upgrade: the consumers first (each reads what the older producers
# write), the operator before the intake (the edges last, so devices meet one version at a time).
UPGRADE_ORDER=(dedup provisioning notifier ingestion operator intake)

LOG="$ROOT/var/log/compose-$PROJECT.log"

say() { echo "compose: $*"; }
fail() { echo "compose: $*" >&2; exit 1; }

tool() {
  local pc=${PODMAN_COMPOSE:-}
  if [ -z "$pc" ]; then
    if command -v podman-compose >/dev/null; then pc=podman-compose; else pc="$ROOT/.venv/bin/podman-compose"; fi
  fi
  local args=(-p "$PROJECT" -f "$COMPOSE_FILE")
  [ -f "$ENV_FILE" ] && args+=(--env-file "$ENV_FILE")
  "$pc" "${args[@]}" "$@"
}

container() { echo "${PROJECT}_$1_1"; }

# podman-compose with its output in var/log/compose-PROJECT.log (podman 4.3 prints "unable to
# get systemd connection" for every healthcheck it cannot schedule: expected here, and noise);
# on failure the log's last lines are shown.
quietly() { # ARGS...
  mkdir -p "$(dirname "$LOG")"
  if ! tool "$@" >>"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    fail "podman-compose $* failed; see $LOG"
  fi
}

# A secret left as .env.example's placeholder is refused before anything starts: Postgres would
# otherwise initialise its volume with it, and keep it after .env is corrected.
refuse_placeholders() {
  local name value
  for name in POSTGRES_PASSWORD FLEETREG_SECRET_KEY; do
    value=${!name:-}
    if [ -z "$value" ] && [ -f "$ENV_FILE" ]; then
      value=$(sed -n "s/^$name=//p" "$ENV_FILE" | tail -n 1)
    fi
    case "$value" in
      "") fail "$name is not set (in $ENV_FILE or the environment); see .env.example" ;;
      *change-me*) fail "$name in $ENV_FILE still holds the placeholder from .env.example; set a random value" ;;
    esac
  done
}

# Runs SERVICE's compose healthcheck until it passes; fails with the container's last log lines.
wait_healthy() { # SERVICE...
  local deadline=$((SECONDS + TIMEOUT)) name service pending
  pending=("$@")
  while [ "${#pending[@]}" -gt 0 ]; do
    local still=()
    for service in "${pending[@]}"; do
      name=$(container "$service")
      if podman healthcheck run "$name" >/dev/null 2>&1; then continue; fi
      still+=("$service")
    done
    pending=("${still[@]+"${still[@]}"}")
    [ "${#pending[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for service in "${pending[@]}"; do
        podman logs --tail 20 "$(container "$service")" >&2 || true
      done
      fail "not healthy within ${TIMEOUT} s: ${pending[*]}"
    fi
    sleep 1
  done
  say "healthy: $*"
}

# Replaces SERVICE's container with one made from the current settings and image: stopped
# within its stop_grace_period (podman-compose stop: SIGTERM, then SIGKILL), removed, created
# again. Not `up --force-recreate`: podman-compose then recreates every service that depends on
# the one named too (all of them depend on migrate), which stops the whole stack at once.
recreate() { # SERVICE
  if podman container exists "$(container "$1")"; then
    quietly stop "$1"
    podman rm "$(container "$1")" >/dev/null
  fi
  quietly up -d --no-deps --no-build "$1"
}

migrate() {
  recreate migrate
  local code
  code=$(podman wait "$(container migrate)")
  podman logs "$(container migrate)" 2>&1 | tail -n 1
  [ "$code" = 0 ] || fail "migrate exited $code"
}

up() {
  refuse_placeholders
  # --no-deps: podman-compose would otherwise tie each container to its dependencies with
  # --requires, and podman 4.3 refuses to start one whose dependency (migrate) has exited.
  quietly up -d --no-deps --no-build "${INFRA[@]}"
  wait_healthy "${INFRA[@]}"
  migrate
  quietly up -d --no-deps --no-build "${SERVICES[@]}"
  wait_healthy "${SERVICES[@]}"
}

stop() {
  quietly stop "${SERVICES[@]}"
  quietly stop "${INFRA[@]}"
  say "stopped"
}

health() {
  local service status failed=0
  printf '%-14s %s\n' SERVICE HEALTH
  for service in "${INFRA[@]}" "${SERVICES[@]}"; do
    # Up to three tries, a second apart: one slow check (a JVM's start on a loaded host) is not
    # "unhealthy", as the compose file's retries say.
    if podman healthcheck run "$(container "$service")" >/dev/null 2>&1 ||
      { sleep 1; podman healthcheck run "$(container "$service")" >/dev/null 2>&1; } ||
      { sleep 1; podman healthcheck run "$(container "$service")" >/dev/null 2>&1; }; then
      status=healthy
    else
      status=$(podman inspect --format '{{.State.Status}}' "$(container "$service")" 2>/dev/null || echo missing)
      [ "$status" = running ] && status=unhealthy
      failed=1
    fi
    printf '%-14s %s\n' "$service" "$status"
  done
  return "$failed"
}

upgrade() { # IMAGE
  local image=$1 service
  podman image exists "$image" || fail "no image $image here: build it (images.sh fleetreg) or pull it first"
  export FLEETREG_IMAGE=$image
  say "migrating with $image"
  migrate
  for service in "${UPGRADE_ORDER[@]}"; do
    say "replacing $service"
    recreate "$service"
    wait_healthy "$service"
  done
  say "upgraded to $image; set FLEETREG_IMAGE=$image in $ENV_FILE so that the next up keeps it"
}

case "${1:-}" in
  up) up ;;
  wait) shift; wait_healthy "$@" ;;
  health) health ;;
  stop) [ "$#" -eq 1 ] || { shift; quietly stop "$@"; exit 0; }; stop ;;
  upgrade) [ "$#" -eq 2 ] || fail "usage: compose.sh upgrade IMAGE"; upgrade "$2" ;;
  down)
    case "${2:-}" in
      --volumes) quietly down --volumes; say "removed the containers, networks and volumes of $PROJECT" ;;
      "") quietly down; say "removed the containers and networks of $PROJECT; its volumes stay (down --volumes removes them)" ;;
      *) fail "usage: compose.sh down [--volumes]" ;;
    esac ;;
  "") fail "usage: compose.sh up|wait SERVICE...|health|stop [SERVICE...]|upgrade IMAGE|down [--volumes]|PODMAN-COMPOSE-ARGS..." ;;
  *) tool "$@" ;;
esac
