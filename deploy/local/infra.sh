#!/usr/bin/env bash
# Local infrastructure for agegate: a single-node Apache Kafka (KRaft), a Redis and a single-node
# Redis Cluster (all 16384 slots on one node: the same key-to-slot rules as a real cluster), on loopback;
# on request also a Confluent-compatible Schema Registry (Apicurio Registry, in-memory storage).
#
#   deploy/local/infra.sh up [kafka|redis|redis-cluster|registry]   start what is not running yet (idempotent);
#                                    `up` alone starts kafka, redis and redis-cluster, not the registry
#   deploy/local/infra.sh down [kafka|redis|redis-cluster|registry] stop exactly what `up` started (pid files);
#                                    `down` alone stops all four
#   deploy/local/infra.sh status                                     what runs where
#
# The registry's Confluent API is http://127.0.0.1:$AGEGATE_REGISTRY_PORT/apis/ccompat/v7 (the value for
# SCHEMA_REGISTRY_URL). When KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, REDIS_CLUSTER_URL or SCHEMA_REGISTRY_URL
# is set, that service is external: nothing is started or stopped for it. Ports and folders are configurable:
#   AGEGATE_KAFKA_PORT (39092), AGEGATE_KAFKA_CONTROLLER_PORT (39093), AGEGATE_REDIS_PORT (36379),
#   AGEGATE_REDIS_CLUSTER_PORT (36380), AGEGATE_REDIS_CLUSTER_BUS_PORT (46380: the cluster bus),
#   AGEGATE_REGISTRY_PORT (38081), AGEGATE_CACHE_DIR (~/.cache/agegate: resolved jars),
#   AGEGATE_STATE_DIR ($AGEGATE_CACHE_DIR/local: data, logs, pid files), AGEGATE_KAFKA_START_TIMEOUT
#   (seconds, 120), AGEGATE_KAFKA_HEAP (1g), AGEGATE_REGISTRY_START_TIMEOUT (seconds, 90),
#   AGEGATE_REGISTRY_HEAP (256m).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
KAFKA_VERSION="${AGEGATE_KAFKA_VERSION:-$KAFKA_VERSION}"  # override only to try another version
APICURIO_VERSION="${AGEGATE_APICURIO_VERSION:-$APICURIO_VERSION}"

KAFKA_PORT="${AGEGATE_KAFKA_PORT:-39092}"
CONTROLLER_PORT="${AGEGATE_KAFKA_CONTROLLER_PORT:-39093}"
REDIS_PORT="${AGEGATE_REDIS_PORT:-36379}"
CLUSTER_PORT="${AGEGATE_REDIS_CLUSTER_PORT:-36380}"
CLUSTER_BUS_PORT="${AGEGATE_REDIS_CLUSTER_BUS_PORT:-46380}"
CACHE_DIR="${AGEGATE_CACHE_DIR:-$HOME/.cache/agegate}"
STATE_DIR="${AGEGATE_STATE_DIR:-$CACHE_DIR/local}"
START_TIMEOUT="${AGEGATE_KAFKA_START_TIMEOUT:-120}"
KAFKA_HEAP="${AGEGATE_KAFKA_HEAP:-1g}"
REGISTRY_PORT="${AGEGATE_REGISTRY_PORT:-38081}"
REGISTRY_START_TIMEOUT="${AGEGATE_REGISTRY_START_TIMEOUT:-90}"
REGISTRY_HEAP="${AGEGATE_REGISTRY_HEAP:-256m}"

JARS_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_DIR="$STATE_DIR/kafka-$KAFKA_PORT"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/server.log"
REDIS_DIR="$STATE_DIR/redis-$REDIS_PORT"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"
CLUSTER_DIR="$STATE_DIR/redis-cluster-$CLUSTER_PORT"
CLUSTER_PID="$CLUSTER_DIR/redis.pid"
CLUSTER_LOG="$CLUSTER_DIR/redis.log"
APICURIO_DIR="$CACHE_DIR/apicurio-registry-$APICURIO_VERSION"
APICURIO_JAR="$APICURIO_DIR/apicurio-registry-app-$APICURIO_VERSION-runner.jar"
REGISTRY_DIR="$STATE_DIR/registry-$REGISTRY_PORT"
REGISTRY_PID="$REGISTRY_DIR/registry.pid"
REGISTRY_LOG="$REGISTRY_DIR/registry.log"
REGISTRY_API="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"

say() { printf 'infra: %s\n' "$*"; }
die() { printf 'infra: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- Kafka -------------------------------------------------------------------------------------

check_java() {
  command -v java >/dev/null || die "Java is not installed. Kafka $KAFKA_VERSION needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)."
  local major
  major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
  [[ "${major%%.*}" -ge 17 ]] 2>/dev/null || die "Java $major found; Kafka $KAFKA_VERSION needs Java 17+."
}

resolve_jars() {
  if [[ -f "$JARS_DIR/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || die "Maven is not installed; it resolves the Kafka jars from Maven Central (Debian: apt-get install maven)."
  say "resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $JARS_DIR"
  local tmp="$JARS_DIR.partial" out
  rm -rf "$tmp"; mkdir -p "$tmp"
  if ! out="$(mvn -B -q -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" -DincludeScope=runtime 2>&1)"; then
    rm -rf "$tmp"
    printf '%s\n' "$out" | tail -n 30 >&2
    die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION. Is Maven Central reachable (proxy, ~/.m2/settings.xml)? Is the version in deploy/local/versions.env published?"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "Maven finished but no kafka_2.13 jar was copied"; }
  rm -rf "$JARS_DIR"; mv "$tmp" "$JARS_DIR"; touch "$JARS_DIR/.complete"
}

kafka_java() { java -Xmx"$KAFKA_HEAP" -Xms128m -cp "$JARS_DIR/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.yaml" "$@"; }

kafka_ready() {
  # A real client request: list topics (a metadata request) through the admin client.
  java -Xmx128m -cp "$JARS_DIR/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.yaml" -Dlog4j2.level=ERROR \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list >/dev/null 2>&1
}

kafka_up() {
  if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then say "kafka: external ($KAFKA_BOOTSTRAP_SERVERS), not started"; return 0; fi
  if pid_alive "$KAFKA_PID" && port_open "$KAFKA_PORT"; then
    say "kafka: already running (pid $(cat "$KAFKA_PID"), 127.0.0.1:$KAFKA_PORT)"; return 0
  fi
  rm -f "$KAFKA_PID"
  for p in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
    port_open "$p" && die "port $p is already in use by a process this script did not start. Stop it, or choose other ports: AGEGATE_KAFKA_PORT / AGEGATE_KAFKA_CONTROLLER_PORT."
  done
  check_java
  resolve_jars
  mkdir -p "$KAFKA_DIR/data"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$KAFKA_DIR/data|g" \
    "$here/kafka/server.properties.in" > "$KAFKA_DIR/server.properties"
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
      || { cat "$KAFKA_DIR/format.log" >&2; die "formatting KRaft storage in $KAFKA_DIR/data failed"; }
  fi
  say "kafka: starting $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $KAFKA_LOG)"
  setsid nohup java -Xmx"$KAFKA_HEAP" -Xms256m -XX:+UseG1GC -cp "$JARS_DIR/*" \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.yaml" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$KAFKA_LOG" 2>&1 < /dev/null &
  echo $! > "$KAFKA_PID"
  local deadline=$((SECONDS + START_TIMEOUT))
  while true; do
    if ! pid_alive "$KAFKA_PID"; then
      tail -n 40 "$KAFKA_LOG" >&2; rm -f "$KAFKA_PID"
      die "the Kafka broker exited during start (log above: $KAFKA_LOG)"
    fi
    if (( SECONDS >= deadline )); then
      tail -n 40 "$KAFKA_LOG" >&2; kafka_down >/dev/null
      die "the Kafka broker did not answer a metadata request within ${START_TIMEOUT}s; stopped it (log above: $KAFKA_LOG). A slow machine may need AGEGATE_KAFKA_START_TIMEOUT raised."
    fi
    kafka_ready && break
    sleep 1  # polling an external process's readiness, bounded by the deadline above
  done
  say "kafka: ready (metadata request answered)"
}

stop_pid() {  # stop_pid PIDFILE NAME
  local pidfile="$1" name="$2"
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; say "$name: not running"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; say "$name: killed (pid $pid) after 30 s"; else say "$name: stopped (pid $pid)"; fi
  rm -f "$pidfile"
}

kafka_down() {
  if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then say "kafka: external, not stopped"; return 0; fi
  stop_pid "$KAFKA_PID" kafka
}

# --- Redis -------------------------------------------------------------------------------------

ensure_redis_server() {
  command -v redis-server >/dev/null && return 0
  say "redis-server not found; installing Debian's redis-server with apt-get"
  local sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  command -v apt-get >/dev/null || die "redis-server is missing and apt-get is not available: install Redis 7+ and put redis-server on PATH"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server; } >/dev/null \
    || die "apt-get install redis-server failed"
}

redis_up() {
  if [[ -n "${REDIS_URL:-}" ]]; then say "redis: external, not started"; return 0; fi
  if pid_alive "$REDIS_PID" && port_open "$REDIS_PORT"; then
    say "redis: already running (pid $(cat "$REDIS_PID"), 127.0.0.1:$REDIS_PORT)"; return 0
  fi
  rm -f "$REDIS_PID"
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is already in use by a process this script did not start. Stop it, or set AGEGATE_REDIS_PORT."
  ensure_redis_server
  mkdir -p "$REDIS_DIR"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" >/dev/null \
    || die "redis-server failed to start (log: $REDIS_LOG)"
  for _ in $(seq 1 100); do
    [[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && { say "redis: ready on 127.0.0.1:$REDIS_PORT"; return 0; }
    sleep 0.1
  done
  tail -n 20 "$REDIS_LOG" >&2; redis_down >/dev/null
  die "redis-server did not answer PING within 10 s (log above: $REDIS_LOG)"
}

redis_down() {
  if [[ -n "${REDIS_URL:-}" ]]; then say "redis: external, not stopped"; return 0; fi
  stop_pid "$REDIS_PID" redis
}

# --- Redis Cluster (one node) -------------------------------------------------------------------

cluster_cli() { redis-cli -h 127.0.0.1 -p "$CLUSTER_PORT" "$@" 2>/dev/null; }

cluster_up() {
  if [[ -n "${REDIS_CLUSTER_URL:-}" ]]; then say "redis-cluster: external, not started"; return 0; fi
  if pid_alive "$CLUSTER_PID" && port_open "$CLUSTER_PORT"; then
    say "redis-cluster: already running (pid $(cat "$CLUSTER_PID"), 127.0.0.1:$CLUSTER_PORT)"; return 0
  fi
  rm -f "$CLUSTER_PID"
  for p in "$CLUSTER_PORT" "$CLUSTER_BUS_PORT"; do
    port_open "$p" && die "port $p is already in use by a process this script did not start. Stop it, or choose other ports: AGEGATE_REDIS_CLUSTER_PORT / AGEGATE_REDIS_CLUSTER_BUS_PORT."
  done
  ensure_redis_server
  # A fresh node every time: a stale nodes file would remember slots and an old node id.
  rm -rf "$CLUSTER_DIR"; mkdir -p "$CLUSTER_DIR"
  redis-server --port "$CLUSTER_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --cluster-enabled yes --cluster-port "$CLUSTER_BUS_PORT" --cluster-config-file "$CLUSTER_DIR/nodes.conf" \
    --cluster-announce-ip 127.0.0.1 --pidfile "$CLUSTER_PID" --logfile "$CLUSTER_LOG" --dir "$CLUSTER_DIR" >/dev/null \
    || die "redis-server (cluster mode) failed to start (log: $CLUSTER_LOG)"
  local ok=0
  for _ in $(seq 1 100); do
    [[ "$(cluster_cli ping)" == PONG ]] && { ok=1; break; }
    sleep 0.1
  done
  if [[ "$ok" == 1 ]]; then
    cluster_cli cluster addslotsrange 0 16383 >/dev/null
    ok=0
    for _ in $(seq 1 100); do  # the node gossips its own slot ownership before it says ok
      cluster_cli cluster info | tr -d '\r' | grep -qx 'cluster_state:ok' && { ok=1; break; }
      sleep 0.1
    done
  fi
  if [[ "$ok" != 1 ]]; then
    tail -n 20 "$CLUSTER_LOG" >&2; cluster_down >/dev/null
    die "the Redis Cluster node did not reach cluster_state:ok within 20 s (log above: $CLUSTER_LOG)"
  fi
  say "redis-cluster: ready on 127.0.0.1:$CLUSTER_PORT (one node, slots 0-16383)"
}

cluster_down() {
  if [[ -n "${REDIS_CLUSTER_URL:-}" ]]; then say "redis-cluster: external, not stopped"; return 0; fi
  stop_pid "$CLUSTER_PID" redis-cluster
}

# --- Schema Registry (Apicurio, Confluent-compatible API) ---------------------------------------

resolve_apicurio() {
  if [[ -f "$APICURIO_DIR/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || die "Maven is not installed; it fetches Apicurio Registry from Maven Central (Debian: apt-get install maven)."
  command -v python3 >/dev/null || die "python3 is needed to unpack the Apicurio Registry zip"
  say "fetching Apicurio Registry $APICURIO_VERSION (io.apicurio:apicurio-registry-app, zip 'all', ~140 MB) from Maven Central into $APICURIO_DIR"
  local tmp="$APICURIO_DIR.partial" out zip
  rm -rf "$tmp"; mkdir -p "$tmp"
  if ! out="$(mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
        -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:zip:all" -DoutputDirectory="$tmp/zip" 2>&1)"; then
    rm -rf "$tmp"
    printf '%s\n' "$out" | tail -n 30 >&2
    die "Maven could not fetch io.apicurio:apicurio-registry-app:$APICURIO_VERSION:zip:all. Is Maven Central reachable (proxy, ~/.m2/settings.xml)?"
  fi
  zip="$tmp/zip/apicurio-registry-app-$APICURIO_VERSION-all.zip"
  python3 -m zipfile -e "$zip" "$tmp/app" || { rm -rf "$tmp"; die "could not unpack $zip"; }
  [[ -f "$tmp/app/apicurio-registry-app-$APICURIO_VERSION-runner.jar" ]] \
    || { rm -rf "$tmp"; die "the Apicurio zip has no apicurio-registry-app-$APICURIO_VERSION-runner.jar at its top"; }
  rm -rf "$APICURIO_DIR"; mv "$tmp/app" "$APICURIO_DIR"; rm -rf "$tmp"; touch "$APICURIO_DIR/.complete"
}

registry_ready() { curl -fsS -o /dev/null --max-time 2 "$REGISTRY_API/subjects" 2>/dev/null; }

registry_up() {
  if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then say "registry: external (SCHEMA_REGISTRY_URL), not started"; return 0; fi
  if pid_alive "$REGISTRY_PID" && port_open "$REGISTRY_PORT"; then
    say "registry: already running (pid $(cat "$REGISTRY_PID"), $REGISTRY_API)"; return 0
  fi
  rm -f "$REGISTRY_PID"
  port_open "$REGISTRY_PORT" && die "port $REGISTRY_PORT is already in use by a process this script did not start. Stop it, or set AGEGATE_REGISTRY_PORT."
  command -v curl >/dev/null || die "curl is needed to probe the registry's readiness (Debian: apt-get install curl)"
  check_java
  resolve_apicurio
  mkdir -p "$REGISTRY_DIR"
  say "registry: starting Apicurio Registry $APICURIO_VERSION (in-memory) on 127.0.0.1:$REGISTRY_PORT (log: $REGISTRY_LOG)"
  # cd: Quarkus writes its temporary files into the working directory.
  (cd "$REGISTRY_DIR"; setsid nohup java -Xmx"$REGISTRY_HEAP" -Dquarkus.http.host=127.0.0.1 \
    -Dquarkus.http.port="$REGISTRY_PORT" -Dquarkus.log.console.color=false \
    -jar "$APICURIO_JAR" >"$REGISTRY_LOG" 2>&1 < /dev/null & echo $! > "$REGISTRY_PID")
  local deadline=$((SECONDS + REGISTRY_START_TIMEOUT))
  while true; do
    if ! pid_alive "$REGISTRY_PID"; then
      tail -n 40 "$REGISTRY_LOG" >&2; rm -f "$REGISTRY_PID"
      die "the registry exited during start (log above: $REGISTRY_LOG)"
    fi
    if (( SECONDS >= deadline )); then
      tail -n 40 "$REGISTRY_LOG" >&2; registry_down >/dev/null
      die "the registry did not answer GET $REGISTRY_API/subjects within ${REGISTRY_START_TIMEOUT}s; stopped it (log above). A slow machine may need AGEGATE_REGISTRY_START_TIMEOUT raised."
    fi
    registry_ready && break
    sleep 0.5  # polling an external process's readiness, bounded by the deadline above
  done
  say "registry: ready; SCHEMA_REGISTRY_URL=$REGISTRY_API"
}

registry_down() {
  if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then say "registry: external, not stopped"; return 0; fi
  stop_pid "$REGISTRY_PID" registry
}

# --- status ------------------------------------------------------------------------------------

status() {
  if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then echo "kafka  external  $KAFKA_BOOTSTRAP_SERVERS"
  elif pid_alive "$KAFKA_PID"; then echo "kafka  running   127.0.0.1:$KAFKA_PORT  pid $(cat "$KAFKA_PID")  version $KAFKA_VERSION  log $KAFKA_LOG"
  else echo "kafka  stopped   (would use 127.0.0.1:$KAFKA_PORT)"; fi
  if [[ -n "${REDIS_URL:-}" ]]; then echo "redis  external  (REDIS_URL)"
  elif pid_alive "$REDIS_PID"; then echo "redis  running   127.0.0.1:$REDIS_PORT  pid $(cat "$REDIS_PID")  log $REDIS_LOG"
  else echo "redis  stopped   (would use 127.0.0.1:$REDIS_PORT)"; fi
  if [[ -n "${REDIS_CLUSTER_URL:-}" ]]; then echo "redis-cluster  external  (REDIS_CLUSTER_URL)"
  elif pid_alive "$CLUSTER_PID"; then echo "redis-cluster  running   127.0.0.1:$CLUSTER_PORT  pid $(cat "$CLUSTER_PID")  log $CLUSTER_LOG"
  else echo "redis-cluster  stopped   (would use 127.0.0.1:$CLUSTER_PORT)"; fi
  if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then echo "registry  external  (SCHEMA_REGISTRY_URL)"
  elif pid_alive "$REGISTRY_PID"; then echo "registry  running   $REGISTRY_API  pid $(cat "$REGISTRY_PID")  version $APICURIO_VERSION  log $REGISTRY_LOG"
  else echo "registry  stopped   (would use $REGISTRY_API; start: infra.sh up registry)"; fi
}

cmd="${1:-status}"; what="${2:-all}"
case "$what" in all|kafka|redis|redis-cluster|registry) ;; *) die "unknown service '$what' (kafka, redis, redis-cluster, registry or nothing for all)";; esac
want() { [[ "$what" == all || "$what" == "$1" ]]; }
# The registry is opt-in for `up` (a 140 MB download, a JVM): only `up registry` starts it.
want_up() { if [[ "$1" == registry ]]; then [[ "$what" == registry ]]; else want "$1"; fi; }
case "$cmd" in
  up)
    # Nothing half-started: if a later service fails in this call, stop what this call started.
    redis_was_running=0; pid_alive "$REDIS_PID" && redis_was_running=1
    cluster_was_running=0; pid_alive "$CLUSTER_PID" && cluster_was_running=1
    undo() {
      [[ "$redis_was_running" == 1 ]] || ! want redis || redis_down >/dev/null
      [[ "$cluster_was_running" == 1 ]] || ! want redis-cluster || cluster_down >/dev/null
    }
    if want redis; then redis_up; fi
    if want redis-cluster; then (cluster_up) || { undo; exit 1; }; fi
    if want kafka; then (kafka_up) || { undo; exit 1; }; fi
    if want_up registry; then (registry_up) || exit 1; fi ;;
  down)
    if want registry; then registry_down; fi
    if want kafka; then kafka_down; fi
    if want redis; then redis_down; fi
    if want redis-cluster; then cluster_down; fi ;;
  status) status ;;
  *) die "usage: $0 up|down|status [kafka|redis|redis-cluster|registry]" ;;
esac
