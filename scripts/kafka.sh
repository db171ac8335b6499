#!/usr/bin/env bash
# A real Apache Kafka broker for development and tests, from Maven Central (no tarball, no Docker).
#   scripts/kafka.sh fetch    download the pinned release's jars (cached in $SHOAL_CACHE/kafka-<ver>)
#   scripts/kafka.sh start    format KRaft storage and start a broker+controller on 127.0.0.1, free ports;
#                             prints the bootstrap address (also in $SHOAL_KAFKA_DIR/bootstrap)
#   scripts/kafka.sh stop     stop it cleanly
#   scripts/kafka.sh status   print the bootstrap address if it is running
# $SHOAL_KAFKA_DIR (default .cache/kafka-run) holds config, data, log and pid; start with a new
# directory for a fresh broker, or the same one to restart with the same data and ports.
set -euo pipefail
cd "$(dirname "$0")/.."

KAFKA_VERSION=3.9.1
SLF4J_VERSION=1.7.36
CACHE=${SHOAL_CACHE:-$HOME/.cache/shoal}
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
RUN=${SHOAL_KAFKA_DIR:-.cache/kafka-run}
PY=${PYTHON:-.venv/bin/python}

fetch() {
  if [ -f "$LIBS/.complete" ]; then return; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka" >&2; exit 1; }
  work=$(mktemp -d)
  cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>shoal</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION from Maven Central" >&2
  mkdir -p "$LIBS"
  mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIBS" >&2
  touch "$LIBS/.complete"
  rm -rf "$work"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

running() { [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; }

start() {
  fetch
  if running; then cat "$RUN/bootstrap"; return; fi
  mkdir -p "$RUN"
  if [ ! -f "$RUN/server.properties" ]; then
    port=$(free_port); cport=$(free_port)
    while [ "$cport" = "$port" ]; do cport=$(free_port); done
    cat > "$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$(cd "$RUN" && pwd)/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
    cat > "$RUN/log4j.properties" <<LOG
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
LOG
    echo "127.0.0.1:$port" > "$RUN/bootstrap"
    cluster=$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    java -Dlog4j.configuration="file:$RUN/log4j.properties" -cp "$LIBS/*" kafka.tools.StorageTool format \
      -t "$cluster" -c "$RUN/server.properties" >> "$RUN/broker.log" 2>&1
  fi
  nohup java -Xms256m -Xmx1g -Dlog4j.configuration="file:$RUN/log4j.properties" -cp "$LIBS/*" \
    kafka.Kafka "$RUN/server.properties" >> "$RUN/broker.log" 2>&1 &
  echo $! > "$RUN/pid"
  bootstrap=$(cat "$RUN/bootstrap")
  # Ready when the broker answers a metadata request.
  "$PY" - "$bootstrap" <<'PYWAIT' || { echo "kafka.sh: broker did not start; see $RUN/broker.log" >&2; stop; exit 1; }
import sys, time
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
deadline = time.monotonic() + 60
while True:
    try:
        if admin.list_topics(timeout=2).brokers:
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.3)
PYWAIT
  echo "$bootstrap"
}

stop() {
  if running; then
    pid=$(cat "$RUN/pid")
    kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$RUN/pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then cat "$RUN/bootstrap"; else echo "not running" >&2; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
