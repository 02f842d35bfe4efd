#!/bin/sh
# Starts one KRaft broker from the KAFKA_* environment, as the official apache/kafka image
# does: KAFKA_LOG_DIRS=... becomes log.dirs=... (one underscore a dot, two an underscore,
# three a dash). The storage is formatted on first start with CLUSTER_ID.
set -eu
if [ -x /etc/kafka/docker/run ]; then
  exec /etc/kafka/docker/run "$@"
fi
libs=/opt/fxstream-kafka/jars
props=/opt/fxstream-kafka/config/server.properties
: > "$props"
env | grep '^KAFKA_' | grep -v -e '^KAFKA_HEAP_OPTS=' -e '^KAFKA_JVM_OPTS=' | while IFS= read -r line; do
  name=${line%%=*}
  value=${line#*=}
  key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' \
    | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
  printf '%s=%s\n' "$key" "$value" >> "$props"
done
grep -q '^log.dirs=' "$props" || echo "log.dirs=/var/lib/kafka/data" >> "$props"
logdir=$(sed -n 's/^log.dirs=//p' "$props" | cut -d, -f1)
if [ ! -f "$logdir/meta.properties" ]; then
  java -cp "$libs/*" kafka.tools.StorageTool format --ignore-formatted \
    -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$props"
fi
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m} ${KAFKA_JVM_OPTS:-} -cp "$libs/*" \
  -Dlog4j2.configurationFile=/opt/fxstream-kafka/log4j2.properties kafka.Kafka "$props"
