#!/bin/sh
# What Kafka's own bin/kafka-broker-api-versions.sh runs (the healthcheck of docker-compose.yml).
# shellcheck disable=SC2086 # the heap options are a list of words
# A short-lived JVM: the serial collector and the first JIT tier start it fastest (the check
# runs every 10 s, and must pass within the compose file's 15 s on a loaded 2-core host).
exec java ${KAFKA_HEAP_OPTS:--Xmx64m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml \
  -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
