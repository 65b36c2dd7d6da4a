#!/bin/sh
# What Kafka's own bin/kafka-broker-api-versions.sh runs (the healthcheck of docker-compose.yml).
# shellcheck disable=SC2086 # the heap options are a list of words
exec java ${KAFKA_HEAP_OPTS:--Xmx64m} -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml \
  -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
