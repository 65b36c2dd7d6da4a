#!/bin/sh
# Starts the broker as the apache/kafka image does, from the environment (see Containerfile).
set -eu
config=/opt/kafka/config/server.properties
# Variables the launcher reads itself, not broker settings.
launcher='KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_GC_LOG_OPTS KAFKA_LOG4J_OPTS KAFKA_JMX_OPTS KAFKA_DEBUG'

: >"$config"
env | LC_ALL=C sort | while IFS='=' read -r name value; do
  case "$name" in KAFKA_*) ;; *) continue ;; esac
  case " $launcher " in *" $name "*) continue ;; esac
  key=$(printf '%s' "${name#KAFKA_}" | tr '[:upper:]' '[:lower:]' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
  printf '%s=%s\n' "$key" "$value" >>"$config"
done

log_dirs=$(sed -n 's/^log\.dirs=//p' "$config")
log_dirs=${log_dirs:-/var/lib/kafka/data}
grep -q '^log\.dirs=' "$config" || echo "log.dirs=$log_dirs" >>"$config"

java_cmd() { # MAIN ARGS...
  # shellcheck disable=SC2086 # the options are a list of words, as in Kafka's own scripts
  java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} ${KAFKA_OPTS:-} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml -cp '/opt/kafka/libs/*' "$@"
}

first_dir=${log_dirs%%,*}
if [ ! -f "$first_dir/meta.properties" ]; then
  : "${CLUSTER_ID:?CLUSTER_ID is required to format an empty log directory}"
  echo "kafka-entrypoint: formatting $first_dir for cluster $CLUSTER_ID"
  java_cmd kafka.tools.StorageTool format --cluster-id="$CLUSTER_ID" -c "$config" --ignore-formatted
fi
# exec: the JVM becomes the container's main process and gets SIGTERM directly.
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} ${KAFKA_OPTS:-} -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml -cp '/opt/kafka/libs/*' kafka.Kafka "$config"
