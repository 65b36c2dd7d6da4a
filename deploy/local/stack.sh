#!/usr/bin/env bash
# The local fleetreg stack without containers: a real Apache Kafka broker (KRaft,
# jars from Maven Central, started with java), a real Postgres server (Debian's
# binaries, installed if missing) and the fleetreg services, all on loopback.
#
#   stack.sh infra-up     start Kafka and Postgres, create the databases
#   stack.sh up           infra-up, migrate, start every service, write var/endpoints.env
#   stack.sh down         stop whatever of the above runs (also after a crash)
#   stack.sh status       one line per part
#   stack.sh kill-service NAME / start-service NAME, stop-kafka, stop-postgres,
#            restart-postgres: single faults and repairs (tests and make chaos)
#
# Data lives in var/kafka/data and var/postgres/data, logs in var/log/.
# Every failure ends in one line naming what failed and the log to read.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"  # services start as `python -m services.X`: this checkout's code, from wherever it is called
VAR="${FLEETREG_VAR_DIR:-$ROOT/var}"  # another folder: a second, separate local stack
LOG="$VAR/log"
RUN="$VAR/run"
PY="$ROOT/.venv/bin/python"

KAFKA_VERSION=4.1.1
KAFKA_PORT=${FLEETREG_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${FLEETREG_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_HOME="$VAR/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs-$KAFKA_VERSION"
KAFKA_HEAP=${FLEETREG_KAFKA_HEAP:-768m}

PG_PORT=${FLEETREG_PG_PORT:-15432}
PG_HOME="$VAR/postgres"
PG_DATA="$PG_HOME/data"
PG_USER=fleetreg

INTAKE_PORT=${FLEETREG_INTAKE_PORT:-18080}
OPERATOR_PORT=${FLEETREG_OPERATOR_PORT:-18081}
DEDUP_PORT=${FLEETREG_DEDUP_PORT:-18082}
PROVISIONING_PORT=${FLEETREG_PROVISIONING_PORT:-18083}
COMPAT_PORT=${FLEETREG_COMPAT_PORT:-18443}
INGESTION_PORT=${FLEETREG_INGESTION_PORT:-18084}
NOTIFIER_PORT=${FLEETREG_NOTIFIER_PORT:-18085}
# Each service's operations port (/healthz, /readyz, /metrics): its port + 100 unless set.
INTAKE_OPS_PORT=${FLEETREG_INTAKE_OPS_PORT:-$((INTAKE_PORT + 100))}
OPERATOR_OPS_PORT=${FLEETREG_OPERATOR_OPS_PORT:-$((OPERATOR_PORT + 100))}
DEDUP_OPS_PORT=${FLEETREG_DEDUP_OPS_PORT:-$((DEDUP_PORT + 100))}
PROVISIONING_OPS_PORT=${FLEETREG_PROVISIONING_OPS_PORT:-$((PROVISIONING_PORT + 100))}
INGESTION_OPS_PORT=${FLEETREG_INGESTION_OPS_PORT:-$((INGESTION_PORT + 100))}
NOTIFIER_OPS_PORT=${FLEETREG_NOTIFIER_OPS_PORT:-$((NOTIFIER_PORT + 100))}

mkdir -p "$LOG" "$RUN"

fail() { echo "fleetreg stack: $*" >&2; exit 1; }
say() { echo "fleetreg stack: $*" >&2; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # pidfile name
  local pidfile=$1 name=$2 pid
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- Kafka ----
fetch_kafka() {
  [ -f "$KAFKA_LIBS/.complete" ] && return 0
  command -v mvn >/dev/null || fail "Maven (mvn) not found: it fetches Kafka's jars from Maven Central"
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central (log: var/log/kafka-fetch.log)"
  rm -rf "$KAFKA_LIBS.tmp"
  if ! mvn -B -q -f "$ROOT/deploy/local/kafka-pom.xml" dependency:copy-dependencies \
        -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_LIBS.tmp" >"$LOG/kafka-fetch.log" 2>&1; then
    rm -rf "$KAFKA_LIBS.tmp"
    fail "downloading Kafka $KAFKA_VERSION from Maven Central failed; see var/log/kafka-fetch.log"
  fi
  touch "$KAFKA_LIBS.tmp/.complete"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

kafka_config() {
  mkdir -p "$KAFKA_HOME/config" "$KAFKA_HOME/data"
  cat >"$KAFKA_HOME/config/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_HOME/data
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
PROPS
  cat >"$KAFKA_HOME/config/log4j2.yaml" <<'YAML'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
YAML
}

start_kafka() {
  if pid_alive "$RUN/kafka.pid"; then say "Kafka already running on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  command -v java >/dev/null || fail "java not found: install a JDK 17 or newer (Kafka runs on it)"
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_in_use "$p" && fail "port $p is already in use by another process; set FLEETREG_KAFKA_PORT / FLEETREG_KAFKA_CONTROLLER_PORT"
  done
  fetch_kafka
  kafka_config
  if [ ! -f "$KAFKA_HOME/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$("$PY" -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    # "--cluster-id=ID", not "-t ID": one random ID in 64 starts with "-", which the storage
    # tool's argument parser reads as an option (a fresh-clone CI run failed on exactly that).
    if ! java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2.yaml" \
      kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$KAFKA_HOME/config/server.properties" \
      >"$LOG/kafka-format.log" 2>&1; then
      tail -n 5 "$LOG/kafka-format.log" >&2
      fail "formatting Kafka's KRaft storage failed; see var/log/kafka-format.log"
    fi
  fi
  say "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: var/log/kafka.log)"
  nohup java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$KAFKA_HOME/config/log4j2.yaml" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_HOME/config/server.properties" \
    >>"$LOG/kafka.log" 2>&1 </dev/null &
  echo $! >"$RUN/kafka.pid"
  if ! "$PY" "$ROOT/deploy/local/wait_for_kafka.py" "127.0.0.1:$KAFKA_PORT" 90 2>>"$LOG/kafka.log"; then
    stop_pid "$RUN/kafka.pid" kafka
    fail "Kafka did not come up on 127.0.0.1:$KAFKA_PORT; see var/log/kafka.log"
  fi
}

# ------------------------------------------------------------- Postgres ----
pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$dir" ] || [ ! -x "$dir/postgres" ]; then
    command -v apt-get >/dev/null || fail "no Postgres server found and apt-get is not available to install one"
    say "installing Debian's postgresql (log: var/log/postgres-install.log)"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; } \
      >"$LOG/postgres-install.log" 2>&1 || fail "installing postgresql failed; see var/log/postgres-install.log"
    dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$dir"
}

# Postgres refuses to run as root: as root, run its programs as the 'postgres' user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin; bin=$(pg_bin)
  if as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    say "Postgres already running on 127.0.0.1:$PG_PORT"; return 0
  fi
  port_in_use "$PG_PORT" && fail "port $PG_PORT is already in use by another process; set FLEETREG_PG_PORT"
  mkdir -p "$PG_HOME"
  touch "$LOG/postgres.log"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_HOME" "$LOG/postgres.log"
    runuser -u postgres -- test -w "$PG_HOME" ||
      fail "user 'postgres' cannot write $PG_HOME (a parent folder is not traversable); clone the repository where other users can read it"
  fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    # -s, not -f: a first run stopped before the password was written (no venv yet) leaves an
    # empty file, and initdb refuses an empty password file. Written aside, then moved.
    if [ ! -s "$PG_HOME/password" ]; then
      od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$PG_HOME/password.new"
      [ -s "$PG_HOME/password.new" ] || fail "could not write a Postgres password in $PG_HOME"
      mv "$PG_HOME/password.new" "$PG_HOME/password"
    fi
    chmod 600 "$PG_HOME/password"
    cp "$PG_HOME/password" "$PG_HOME/.pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$PG_HOME/.pwfile"
    as_pg "$bin/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$PG_HOME/.pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
      >"$LOG/postgres-init.log" 2>&1 || { rm -f "$PG_HOME/.pwfile"; fail "initdb failed; see var/log/postgres-init.log"; }
    rm -f "$PG_HOME/.pwfile"
  fi
  say "starting Postgres on 127.0.0.1:$PG_PORT (log: var/log/postgres.log)"
  mkdir -p "$PG_HOME/socket"; [ "$(id -u)" = 0 ] && chown postgres "$PG_HOME/socket"
  if ! as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$LOG/postgres.log" -w -t 60 start \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_HOME/socket -c max_connections=200 -c shared_buffers=256MB -c synchronous_commit=on -c log_error_verbosity=terse -c log_min_error_statement=panic -c log_parameter_max_length_on_error=0 -c log_parameter_max_length=0" \
        >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$PG_DATA" stop -m immediate >/dev/null 2>&1 || true
    fail "Postgres did not start on 127.0.0.1:$PG_PORT; see var/log/postgres.log"
  fi
  local db
  for db in fleetreg fleetreg_test; do
    PGPASSWORD=$(cat "$PG_HOME/password") "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -qtAc \
      "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 ||
    PGPASSWORD=$(cat "$PG_HOME/password") "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -qc \
      "CREATE DATABASE $db" >/dev/null || fail "creating database $db failed; see var/log/postgres.log"
  done
}

stop_postgres() {
  local dir; dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$dir" ] && [ -f "$PG_DATA/PG_VERSION" ] || return 0
  if as_pg "$dir/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    as_pg "$dir/pg_ctl" -D "$PG_DATA" stop -m fast -w -t 60 >/dev/null 2>&1 ||
      as_pg "$dir/pg_ctl" -D "$PG_DATA" stop -m immediate >/dev/null 2>&1 || true
  fi
}

database_url() { # database name
  echo "postgresql://$PG_USER:$(cat "$PG_HOME/password")@127.0.0.1:$PG_PORT/$1"
}

# ------------------------------------------------------------- services ----
SERVICES=(dedup provisioning intake operator ingestion notifier)

service_port() {
  case $1 in
    intake) echo "$INTAKE_PORT" ;; operator) echo "$OPERATOR_PORT" ;;
    dedup) echo "$DEDUP_PORT" ;; provisioning) echo "$PROVISIONING_PORT" ;;
    ingestion) echo "$INGESTION_PORT" ;; notifier) echo "$NOTIFIER_PORT" ;;
  esac
}

service_ops_port() {
  case $1 in
    intake) echo "$INTAKE_OPS_PORT" ;; operator) echo "$OPERATOR_OPS_PORT" ;;
    dedup) echo "$DEDUP_OPS_PORT" ;; provisioning) echo "$PROVISIONING_OPS_PORT" ;;
    ingestion) echo "$INGESTION_OPS_PORT" ;; notifier) echo "$NOTIFIER_OPS_PORT" ;;
  esac
}

write_infra_env() {
  {
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
    echo "DATABASE_URL=$(database_url fleetreg)"
    echo "FLEETREG_TEST_DATABASE_URL=$(database_url fleetreg_test)"
  } >"$VAR/infra.env"
  chmod 600 "$VAR/infra.env"
}

# What every service of the local stack is started with, besides its port.
service_env() {
  export FLEETREG_TLS_CERT="$VAR/tls/server.pem" FLEETREG_TLS_KEY="$VAR/tls/server.key" FLEETREG_COMPAT_PORT="$COMPAT_PORT"
  # The local stack's webhooks may call this machine (the demo's receiver listens on 127.0.0.1).
  export FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS="${FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS:-true}"
  # The console (operator) forwards bulk uploads to the bulk API and shows the pipeline's health.
  export FLEETREG_INGESTION_URL="http://127.0.0.1:$INGESTION_PORT"
  # Each service reads its own operations port (cli.wait_ready and cli.endpoints read them all).
  export FLEETREG_INTAKE_OPS_PORT="$INTAKE_OPS_PORT" FLEETREG_OPERATOR_OPS_PORT="$OPERATOR_OPS_PORT" \
    FLEETREG_DEDUP_OPS_PORT="$DEDUP_OPS_PORT" FLEETREG_PROVISIONING_OPS_PORT="$PROVISIONING_OPS_PORT" \
    FLEETREG_INGESTION_OPS_PORT="$INGESTION_OPS_PORT" FLEETREG_NOTIFIER_OPS_PORT="$NOTIFIER_OPS_PORT"
  # Readiness is asked on the operations ports, never on the public ones.
  export FLEETREG_PIPELINE_HEALTH_URLS="http://127.0.0.1:$INTAKE_OPS_PORT/readyz,http://127.0.0.1:$DEDUP_OPS_PORT/readyz,http://127.0.0.1:$PROVISIONING_OPS_PORT/readyz"
}

start_services() {
  set -a; . "$VAR/infra.env"; set +a
  [ -f "$VAR/secret_key" ] || "$PY" -c 'import secrets;print(secrets.token_urlsafe(32))' >"$VAR/secret_key"
  chmod 600 "$VAR/secret_key"
  export FLEETREG_SECRET_KEY; FLEETREG_SECRET_KEY=$(cat "$VAR/secret_key")
  # The checkout's own code (cd + -m), not the console script: a git worktree sharing the venv
  # would otherwise apply the migrations of the checkout the venv was installed from.
  "$PY" -m cli.main migrate >>"$LOG/migrate.log" 2>&1 || fail "migrations failed; see var/log/migrate.log"
  "$ROOT/deploy/local/tls.sh" "$VAR/tls" || fail "generating the local TLS certificate failed"
  service_env
  local svc port
  for svc in "${SERVICES[@]}"; do
    [ -d "$ROOT/services/$svc" ] || continue
    if pid_alive "$RUN/$svc.pid"; then continue; fi
    port=$(service_port "$svc")
    port_in_use "$port" && fail "port $port for $svc is already in use by another process; set FLEETREG_${svc^^}_PORT"
    port_in_use "$(service_ops_port "$svc")" &&
      fail "port $(service_ops_port "$svc") (operations of $svc) is already in use by another process; set FLEETREG_${svc^^}_OPS_PORT"
    [ "$svc" = intake ] && port_in_use "$COMPAT_PORT" && fail "port $COMPAT_PORT (https device API) is already in use; set FLEETREG_COMPAT_PORT"
    FLEETREG_HTTP_PORT=$port nohup "$PY" -m "services.$svc" >>"$LOG/$svc.log" 2>&1 </dev/null &
    echo $! >"$RUN/$svc.pid"
  done
  for svc in "${SERVICES[@]}"; do
    [ -d "$ROOT/services/$svc" ] || continue
    "$PY" -m cli.wait_ready "$svc" "$RUN/$svc.pid" 60 || { stop_services; fail "$svc did not become ready; see var/log/$svc.log"; }
  done
}

stop_services() {
  local svc
  for svc in "${SERVICES[@]}"; do stop_pid "$RUN/$svc.pid" "$svc"; done
}

# One service, on its own (make chaos kills one with SIGKILL, then starts it again).
start_one_service() { # name
  local svc=$1 port
  [ -d "$ROOT/services/$svc" ] || fail "no service named $svc"
  pid_alive "$RUN/$svc.pid" && { say "$svc already running"; return 0; }
  set -a; . "$VAR/infra.env"; set +a
  export FLEETREG_SECRET_KEY; FLEETREG_SECRET_KEY=$(cat "$VAR/secret_key")
  service_env
  port=$(service_port "$svc")
  FLEETREG_HTTP_PORT=$port nohup "$PY" -m "services.$svc" >>"$LOG/$svc.log" 2>&1 </dev/null &
  echo $! >"$RUN/$svc.pid"
  "$PY" -m cli.wait_ready "$svc" "$RUN/$svc.pid" 60 || fail "$svc did not become ready; see $LOG/$svc.log"
}

kill_one_service() { # name: SIGKILL, no chance to finish or commit anything
  local svc=$1
  pid_alive "$RUN/$svc.pid" || { rm -f "$RUN/$svc.pid"; return 0; }
  kill -KILL "$(cat "$RUN/$svc.pid")" 2>/dev/null || true
  for _ in $(seq 1 40); do pid_alive "$RUN/$svc.pid" || break; sleep 0.05; done
  rm -f "$RUN/$svc.pid"
}

restart_postgres() {
  local bin; bin=$(pg_bin)
  as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$LOG/postgres.log" restart -m fast -w -t 60 >/dev/null 2>&1 ||
    fail "restarting Postgres failed; see $LOG/postgres.log"
}

# Everything that can be checked before starting anything is checked first, so that a
# failure leaves nothing half-started.
preflight() {
  if ! pid_alive "$RUN/kafka.pid"; then
    command -v java >/dev/null || fail "java not found: install a JDK 17 or newer (Kafka runs on it)"
    [ -f "$KAFKA_LIBS/.complete" ] || command -v mvn >/dev/null ||
      fail "Maven (mvn) not found: it fetches Kafka's jars from Maven Central"
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
      port_in_use "$p" && fail "port $p is already in use by another process; set FLEETREG_KAFKA_PORT / FLEETREG_KAFKA_CONTROLLER_PORT"
    done
  fi
  if ! { [ -f "$PG_DATA/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }; then
    port_in_use "$PG_PORT" && fail "port $PG_PORT is already in use by another process; set FLEETREG_PG_PORT"
  fi
  return 0
}

cmd=${1:-}
case "$cmd" in
  infra-up)
    preflight
    start_postgres
    start_kafka
    write_infra_env
    ;;
  up)
    preflight
    start_postgres
    start_kafka
    write_infra_env
    start_services
    "$PY" -m cli.endpoints "$VAR"
    say "up; endpoints in var/endpoints.env"
    ;;
  stop-kafka)  # only the broker (fault tests restart it with infra-up)
    stop_pid "$RUN/kafka.pid" kafka
    ;;
  kill-service)  # kill -9 one service (make chaos)
    [ -n "${2:-}" ] || fail "usage: stack.sh kill-service NAME"
    kill_one_service "$2"
    ;;
  start-service)  # start one service again and wait until it is ready
    [ -n "${2:-}" ] || fail "usage: stack.sh start-service NAME"
    start_one_service "$2"
    ;;
  stop-postgres)  # only the database
    stop_postgres
    ;;
  restart-postgres)  # pg_ctl restart -m fast: every connection is cut
    restart_postgres
    ;;
  down)
    stop_services
    stop_pid "$RUN/kafka.pid" kafka
    stop_postgres
    say "down (data kept in var/)"
    ;;
  status)
    for svc in "${SERVICES[@]}" kafka; do
      if pid_alive "$RUN/$svc.pid"; then echo "$svc: running (pid $(cat "$RUN/$svc.pid"))"; else echo "$svc: stopped"; fi
    done
    if [ -f "$PG_DATA/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
      echo "postgres: running"; else echo "postgres: stopped"; fi
    ;;
  *) fail "usage: stack.sh infra-up|up|down|status|stop-kafka|stop-postgres|restart-postgres|kill-service NAME|start-service NAME" ;;
esac
