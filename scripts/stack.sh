#!/usr/bin/env bash
# Local stack for touchline: Redis, ClickHouse and a Kafka-protocol broker (Tansu),
# on loopback only, all state under .stack/ (relative to the repository root).
#
#   scripts/stack.sh up       install what is missing, start, return once all answer
#   scripts/stack.sh up --redis-cluster
#                             also a three-master Redis Cluster on 127.0.0.1:7000-7002
#   scripts/stack.sh status   print each service with its address
#   scripts/stack.sh down     stop what `up` started, and nothing else
#
# Environment: TANSU_STORAGE (default sqlite://.stack/tansu/tansu.db; use
# memory://tansu/ for throughput runs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STACK="$ROOT/.stack"
REDIS_PORT=6379
CH_HTTP_PORT=8123
CH_TCP_PORT=9000
KAFKA_PORT=9092
TANSU_VERSION=0.6.0
TANSU_STORAGE=${TANSU_STORAGE:-sqlite://.stack/tansu/tansu.db}
CLUSTER_PORTS=(7000 7001 7002)

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Probes talk raw TCP through bash, so that no client needs to be installed to check;
# they run in a subshell whose stderr is silenced (a refused connect is expected).
redis_ping_reply() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
    printf 'PING\r\n' >&3
    timeout 2 head -n 1 <&3
  ) 2>/dev/null
}

redis_answers() { [[ "$(redis_ping_reply)" == "+PONG"* ]]; }

# A server replaying a large append-only file answers -LOADING until it is done: alive,
# and worth waiting for (a development machine's file grows with every bench run).
redis_loading() { [[ "$(redis_ping_reply)" == "-LOADING"* ]]; }

# Waits for redis to answer: 20 s to start, then as long as it says it is loading
# (up to 15 minutes), so that a big data set is not mistaken for a dead server.
wait_for_redis() {
  for ((i = 0; i < 200; i++)); do
    if redis_answers; then return 0; fi
    if redis_loading; then
      log "redis is loading its data set; waiting for it"
      wait_for "redis (loading its data set)" redis_answers 900
      return 0
    fi
    sleep 0.1
  done
  die "redis did not answer within 20s (logs under $STACK/)"
}

clickhouse_answers() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$CH_HTTP_PORT" || exit 1
    printf 'GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    reply=$(timeout 2 cat <&3) || exit 1
    [[ "$reply" == *"Ok."* ]]
  ) 2>/dev/null
}

kafka_answers() { port_open "$KAFKA_PORT"; }

cluster_answers() {
  local info
  info=$(timeout 2 redis-cli -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null) || return 1
  [[ "$info" == *"cluster_state:ok"* ]]
}

start_redis_cluster() {
  if cluster_answers; then
    log "a redis cluster already answers on 127.0.0.1:${CLUSTER_PORTS[0]}, using it"
    return
  fi
  # The single Redis may be someone else's: the cluster needs the binaries here.
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools
  fi
  local dir="$STACK/redis-cluster" port
  for port in "${CLUSTER_PORTS[@]}"; do
    mkdir -p "$dir/$port"
    # A node left over from an earlier run keeps a stale cluster config: start afresh.
    stop_pidfile "redis cluster node $port" "$dir/$port/redis.pid"
    rm -f "$dir/$port/nodes.conf" "$dir/$port/appendonly.aof" "$dir/$port/dump.rdb"
    rm -rf "$dir/$port/appendonlydir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 15000 \
      --appendonly yes --save '' --daemonize yes \
      --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log"
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for ((i = 0; i < 100; i++)); do
      timeout 1 redis-cli -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  local nodes=()
  for port in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || die "redis cluster creation failed (see $dir/create.log)"
  wait_for "redis cluster" cluster_answers 30
}

apt_updated=0
apt_install() {
  if [[ $apt_updated == 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  if [[ -x "$HOME/.cargo/bin/tansu" ]]; then echo "$HOME/.cargo/bin/tansu"; return; fi
  return 1
}

install_missing() {
  command -v redis-server >/dev/null 2>&1 || redis_answers || apt_install redis-server
  command -v clickhouse-server >/dev/null 2>&1 || apt_install clickhouse-server clickhouse-client
  if ! tansu_bin >/dev/null; then
    log "building tansu $TANSU_VERSION from the Cargo registry (about 15 minutes, once)"
    cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql
  fi
}

wait_for() {
  local name=$1 check=$2 secs=$3
  for ((i = 0; i < secs * 10; i++)); do
    if $check; then return 0; fi
    sleep 0.1
  done
  die "$name did not answer within ${secs}s (logs under $STACK/)"
}

start_redis() {
  if redis_answers; then
    log "redis already answers on 127.0.0.1:$REDIS_PORT, using it"
    return
  fi
  if redis_loading; then
    wait_for_redis
    log "redis already answers on 127.0.0.1:$REDIS_PORT, using it"
    return
  fi
  mkdir -p "$STACK/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STACK/redis" \
    --appendonly yes --save '' --daemonize yes \
    --pidfile "$STACK/redis/redis.pid" --logfile "$STACK/redis/redis.log"
  wait_for_redis
  # Only a server we started is ours to stop.
  touch "$STACK/redis/started-by-stack"
}

start_clickhouse() {
  if clickhouse_answers; then
    log "clickhouse already answers on 127.0.0.1:$CH_HTTP_PORT, using it"
    return
  fi
  local dir="$STACK/clickhouse"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
  # Debian's package config points at /var/lib/clickhouse; ours keeps everything here.
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/clickhouse-server.log</log>
        <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>1073741824</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
  cat >"$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! >"$dir/clickhouse.pid"
  wait_for clickhouse clickhouse_answers 60
}

start_tansu() {
  if kafka_answers; then
    log "a broker already listens on 127.0.0.1:$KAFKA_PORT, using it"
    return
  fi
  local bin
  bin=$(tansu_bin) || die "tansu is not installed"
  mkdir -p "$STACK/tansu"
  # Tansu reads its settings from the environment as well as flags.
  nohup "$bin" broker \
    --storage-engine "$TANSU_STORAGE" \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    >"$STACK/tansu/tansu.log" 2>&1 &
  echo $! >"$STACK/tansu/tansu.pid"
  wait_for tansu kafka_answers 60
}

stop_pidfile() {
  local name=$1 pidfile=$2
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

status_line() {
  local name=$1 addr=$2 check=$3
  if $check; then printf '%-11s up    %s\n' "$name" "$addr"; else printf '%-11s down  %s\n' "$name" "$addr"; return 1; fi
}

cmd=${1:-}
case "$cmd" in
  up)
    mkdir -p "$STACK"
    install_missing
    start_redis
    start_clickhouse
    start_tansu
    if [[ "${2:-}" == "--redis-cluster" ]]; then
      start_redis_cluster
      status_line "redis-cluster" "redis://127.0.0.1:${CLUSTER_PORTS[0]} (3 masters)" cluster_answers
    fi
    "$0" status
    ;;
  down)
    for port in "${CLUSTER_PORTS[@]}"; do
      stop_pidfile "redis cluster node $port" "$STACK/redis-cluster/$port/redis.pid"
    done
    stop_pidfile tansu "$STACK/tansu/tansu.pid"
    stop_pidfile clickhouse "$STACK/clickhouse/clickhouse.pid"
    if [[ -f "$STACK/redis/started-by-stack" ]]; then
      stop_pidfile redis "$STACK/redis/redis.pid"
      rm -f "$STACK/redis/started-by-stack"
    fi
    ;;
  status)
    rc=0
    status_line redis "redis://127.0.0.1:$REDIS_PORT" redis_answers || rc=1
    status_line clickhouse "http://127.0.0.1:$CH_HTTP_PORT" clickhouse_answers || rc=1
    status_line kafka "127.0.0.1:$KAFKA_PORT (tansu)" kafka_answers || rc=1
    exit $rc
    ;;
  *)
    echo "usage: $0 up [--redis-cluster]|down|status" >&2
    exit 2
    ;;
esac
