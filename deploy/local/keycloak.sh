#!/usr/bin/env bash
# A real OpenID Connect provider for the tests of fleetreg's single sign-on: Keycloak, the
# distribution zip from Maven Central (no container, no other download), in dev mode on loopback,
# with the test realm committed at deploy/local/keycloak/fleetreg-realm.json (a test fixture: its
# users, passwords and client secrets are known, listed in docs/operations.md and
# tests/support/keycloak.py).
#
#   keycloak.sh fetch    download and unpack Keycloak into var/keycloak (once; a .complete marker)
#   keycloak.sh start    fetch, start on 127.0.0.1:$FLEETREG_KEYCLOAK_PORT (default 18280: 18180
#                        is the local stack's intake operations port), import the realm, wait
#                        until its discovery document answers, print the issuer
#   keycloak.sh stop     stop it (also after a crash)
#   keycloak.sh status   one line
#
# Every start begins from the committed realm: the provider's database (H2, dev mode) is removed
# first, so what a test changed at the provider (a user it disabled) is gone on the next start.
# State under $FLEETREG_VAR_DIR (default var/): var/keycloak, the log in var/log/keycloak.log.
#
# Java: Keycloak 26.7.3 runs on the machine's default Java 17 (checked: started and served the
# realm, every SSO test passed). FLEETREG_KEYCLOAK_JAVA_HOME picks another JVM: the Temurin 25
# in /usr/lib/jvm runs it too (the same tests passed), and started it faster here (32 to 77 s
# against 80 to 165 s on Java 17, two cores shared with other test runs).
# The first start also builds Keycloak's optimized server (Quarkus augmentation, about a minute
# and a half on two cores); later starts reuse it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VAR="${FLEETREG_VAR_DIR:-$ROOT/var}"
LOG="$VAR/log"
RUN="$VAR/run"

KEYCLOAK_VERSION=26.7.3
KEYCLOAK_PORT=${FLEETREG_KEYCLOAK_PORT:-18280}
KEYCLOAK_ROOT="$VAR/keycloak"
KEYCLOAK_HOME="$KEYCLOAK_ROOT/keycloak-$KEYCLOAK_VERSION"
KEYCLOAK_HEAP=${FLEETREG_KEYCLOAK_HEAP:-768m}
KEYCLOAK_START_TIMEOUT_S=${FLEETREG_KEYCLOAK_START_TIMEOUT_S:-300}
REALM_FILE="$ROOT/deploy/local/keycloak/fleetreg-realm.json"
REALM=fleetreg
ISSUER="http://127.0.0.1:$KEYCLOAK_PORT/realms/$REALM"
PIDFILE="$RUN/keycloak.pid"

mkdir -p "$LOG" "$RUN"

fail() { echo "fleetreg keycloak: $*" >&2; exit 1; }
say() { echo "fleetreg keycloak: $*" >&2; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

fetch() {
  [ -f "$KEYCLOAK_HOME/.complete" ] && return 0
  command -v mvn >/dev/null || fail "Maven (mvn) not found: it fetches Keycloak from Maven Central"
  say "fetching Keycloak $KEYCLOAK_VERSION from Maven Central (log: var/log/keycloak-fetch.log)"
  local download="$KEYCLOAK_ROOT/download.tmp" unpack="$KEYCLOAK_ROOT/unpack.tmp"
  rm -rf "$download" "$unpack"
  mkdir -p "$download" "$unpack"
  if ! mvn -B -q dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
        -DoutputDirectory="$download" >"$LOG/keycloak-fetch.log" 2>&1; then
    rm -rf "$download" "$unpack"
    fail "downloading Keycloak $KEYCLOAK_VERSION from Maven Central failed; see var/log/keycloak-fetch.log"
  fi
  local zip="$download/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  # unzip keeps the scripts' execute bits; Python's zipfile (the fallback) does not.
  if command -v unzip >/dev/null; then
    unzip -q "$zip" -d "$unpack" >>"$LOG/keycloak-fetch.log" 2>&1 || fail "unpacking $zip failed"
  else
    python3 -m zipfile -e "$zip" "$unpack" >>"$LOG/keycloak-fetch.log" 2>&1 || fail "unpacking $zip failed"
  fi
  [ -f "$unpack/keycloak-$KEYCLOAK_VERSION/bin/kc.sh" ] || fail "the Keycloak zip holds no keycloak-$KEYCLOAK_VERSION/bin/kc.sh"
  chmod +x "$unpack/keycloak-$KEYCLOAK_VERSION"/bin/*.sh
  touch "$unpack/keycloak-$KEYCLOAK_VERSION/.complete"
  rm -rf "$KEYCLOAK_HOME"
  mv "$unpack/keycloak-$KEYCLOAK_VERSION" "$KEYCLOAK_HOME"
  rm -rf "$download" "$unpack"  # Maven's local repository keeps the zip
}

discovery_answers() {
  python3 - "$ISSUER/.well-known/openid-configuration" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
    sys.exit(0 if json.load(answer).get("issuer") else 1)
PY
}

start() {
  if pid_alive "$PIDFILE"; then say "already running; issuer $ISSUER"; echo "$ISSUER"; return 0; fi
  port_in_use "$KEYCLOAK_PORT" && fail "port $KEYCLOAK_PORT is already in use by another process; set FLEETREG_KEYCLOAK_PORT"
  local java_home="${FLEETREG_KEYCLOAK_JAVA_HOME:-}"
  if [ -n "$java_home" ]; then
    [ -x "$java_home/bin/java" ] || fail "FLEETREG_KEYCLOAK_JAVA_HOME=$java_home has no bin/java"
  else
    command -v java >/dev/null || fail "java not found: install a JDK 17 or newer (Keycloak runs on it)"
  fi
  fetch
  # A fresh provider on every start: the committed realm, imported again.
  rm -rf "$KEYCLOAK_HOME/data/h2" "$KEYCLOAK_HOME/data/import" "$KEYCLOAK_HOME/data/tmp"
  mkdir -p "$KEYCLOAK_HOME/data/import"
  cp "$REALM_FILE" "$KEYCLOAK_HOME/data/import/"
  # The master realm's administrator exists only because dev mode wants one; the tests manage
  # users through the realm's own client (fleetreg-test-admin). Its password stays in a file.
  if [ ! -s "$KEYCLOAK_ROOT/admin-password" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$KEYCLOAK_ROOT/admin-password"
  fi
  chmod 600 "$KEYCLOAK_ROOT/admin-password"
  say "starting Keycloak $KEYCLOAK_VERSION on 127.0.0.1:$KEYCLOAK_PORT (log: var/log/keycloak.log)"
  local started; started=$(date +%s)
  (
    [ -n "$java_home" ] && export JAVA_HOME="$java_home"
    KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=$(cat "$KEYCLOAK_ROOT/admin-password")
    export KC_BOOTSTRAP_ADMIN_USERNAME KC_BOOTSTRAP_ADMIN_PASSWORD
    export JAVA_OPTS_KC_HEAP="-Xms128m -Xmx$KEYCLOAK_HEAP"  # not 70 % of the machine's memory
    # exec: the pid written below is kc.sh's, which passes SIGTERM on to its JVM (stop).
    exec nohup "$KEYCLOAK_HOME/bin/kc.sh" start-dev --http-host=127.0.0.1 --http-port="$KEYCLOAK_PORT" \
      --import-realm --log-level=info >>"$LOG/keycloak.log" 2>&1 </dev/null
  ) &
  echo $! >"$PIDFILE"
  local deadline=$((started + KEYCLOAK_START_TIMEOUT_S))
  until discovery_answers; do
    if ! pid_alive "$PIDFILE"; then
      tail -n 5 "$LOG/keycloak.log" >&2
      rm -f "$PIDFILE"
      fail "Keycloak exited while starting; see var/log/keycloak.log"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      stop
      fail "Keycloak's realm $REALM did not answer within $KEYCLOAK_START_TIMEOUT_S s; see var/log/keycloak.log"
    fi
    sleep 1
  done
  say "up in $(($(date +%s) - started)) s; issuer $ISSUER"
  echo "$ISSUER"
}

stop() {
  if ! pid_alive "$PIDFILE"; then rm -f "$PIDFILE"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "Keycloak did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status)
    if pid_alive "$PIDFILE"; then echo "keycloak: running (pid $(cat "$PIDFILE")), issuer $ISSUER"; else echo "keycloak: stopped"; fi
    ;;
  *) fail "usage: keycloak.sh fetch|start|stop|status" ;;
esac
