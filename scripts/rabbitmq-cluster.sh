#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, from the installed RabbitMQ, with HAProxy in
# front: what `make cluster` runs the scaled-out system on (docs/18-scaling.md).
#
#   scripts/rabbitmq-cluster.sh start          start the three nodes, join them, start HAProxy
#   scripts/rabbitmq-cluster.sh stop           stop HAProxy and the nodes (their data is kept)
#   scripts/rabbitmq-cluster.sh reset          stop, and delete the nodes' data
#   scripts/rabbitmq-cluster.sh status         the cluster's members, running or not
#   scripts/rabbitmq-cluster.sh stop-node N    stop node N (1-3) alone: a failover
#   scripts/rabbitmq-cluster.sh start-node N   start node N again; it rejoins by itself
#   scripts/rabbitmq-cluster.sh ctl ARGS       rabbitmqctl against the first running node
#   scripts/rabbitmq-cluster.sh env            print RABBIT_URL and WARREN_RABBITMQCTL for it
#
# The nodes: warren-c1@localhost, warren-c2@localhost, warren-c3@localhost; AMQP on 5701-5703,
# Prometheus metrics on 15701-15703, distribution on 25701-25703. HAProxy listens on 5700 and
# hands each new connection to a node that answers; a client whose node dies reconnects
# through it to a survivor. It also balances the order API on 8088 over the order replicas
# (8000, 8010, 8020 ... those that answer /readyz) and serves its own statistics on 8404.
# Beside the machine's own RabbitMQ on 5672, which it leaves alone.
#
# The nodes run as the rabbitmq user (the Debian wrapper), with the machine's Erlang cookie;
# their data is in /var/lib/rabbitmq/warren-cluster (RABBITMQ_CLUSTER_DIR).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state="${RABBITMQ_CLUSTER_DIR:-/var/lib/rabbitmq/warren-cluster}"
lb_port="${RABBITMQ_CLUSTER_PORT:-5700}"
api_port="${WARREN_API_LB_PORT:-8088}"
api_replicas="${ORDER_REPLICAS:-2}"
nodes=(1 2 3)

log() { echo "[cluster] $*" >&2; }
node_name() { echo "warren-c$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }
ctl_on() { local n=$1; shift; rabbitmqctl -q -n "$(node_name "$n")" "$@"; }

answers() { python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), timeout=1).close()" 2>/dev/null; }

running() { ctl_on "$1" status >/dev/null 2>&1; }
started() { ctl_on "$1" await_startup >/dev/null 2>&1; }

wait_for() {  # wait_for WHAT SECONDS COMMAND...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq 1 "$((seconds * 2))"); do
    "$@" && return 0
    sleep 0.5
  done
  log "gave up waiting for $what after ${seconds}s"
  return 1
}

write_config() {
  local n=$1 dir="$state/c$1"
  mkdir -p "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
# This machine only: HAProxy and the tools connect over loopback (guest may, from there).
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $((15700 + n))
# A node that loses its peers pauses rather than diverge (the usual choice for three nodes).
cluster_partition_handling = pause_minority
EOF
  echo "[rabbitmq_consistent_hash_exchange,rabbitmq_prometheus]." >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$state"
}

launch_node() {  # start node N in the background (it may wait for its peers to boot)
  local n=$1 dir="$state/c$1"
  if running "$n"; then log "$(node_name "$n") already running"; return 0; fi
  write_config "$n"
  log "starting $(node_name "$n") (AMQP 127.0.0.1:$(amqp_port "$n"))"
  RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
  RABBITMQ_DIST_PORT=$((25700 + n)) RABBITMQ_MNESIA_BASE="$dir/mnesia" \
  RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/pid" \
    rabbitmq-server -detached >/dev/null
}

start_node() {
  launch_node "$1"
  wait_for "$(node_name "$1")" 90 started "$1"
}

joined() {  # whether node N is in node 1's cluster
  ctl_on 1 cluster_status --formatter json 2>/dev/null \
    | python3 -c "import json,sys; sys.exit('$(node_name "$1")' not in json.load(sys.stdin)['disk_nodes'])"
}

join() {
  local n=$1
  joined "$n" && return 0
  log "joining $(node_name "$n") to $(node_name 1)"
  ctl_on "$n" stop_app
  ctl_on "$n" join_cluster "$(node_name 1)"
  ctl_on "$n" start_app
}

haproxy_config() {
  local api_servers="" i
  for i in $(seq 1 "$api_replicas"); do
    api_servers+="    server order$i 127.0.0.1:$((8000 + 10 * (i - 1))) check"$'\n'
  done
  cat <<EOF
# Written by scripts/rabbitmq-cluster.sh: the broker cluster and the order API behind one address each.
global
    maxconn 4096
defaults
    timeout connect 2s
    # AMQP connections live for hours; the clients' heartbeats keep them busy.
    timeout client 3h
    timeout server 3h
    retries 2
listen amqp
    bind 127.0.0.1:$lb_port
    mode tcp
    balance leastconn
    option tcp-check
    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
$(for n in "${nodes[@]}"; do echo "    server c$n 127.0.0.1:$(amqp_port "$n") check"; done)
listen api
    bind 127.0.0.1:$api_port
    mode http
    timeout client 30s
    timeout server 30s
    balance roundrobin
    option httpchk GET /readyz
    # A replica that stops answering is out within 2 s; a connection that cannot reach its
    # server is sent to another one.
    option redispatch
    default-server inter 1s fall 2 rise 2
$api_servers
listen stats
    bind 127.0.0.1:8404
    mode http
    stats enable
    stats uri /
EOF
}

start_haproxy() {
  local pidfile="$state/haproxy.pid"
  command -v haproxy >/dev/null || { log "HAProxy is not installed: apt-get install -y haproxy"; exit 1; }
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    if haproxy_config | cmp -s - "$state/haproxy.cfg"; then
      log "HAProxy already running (pid $(cat "$pidfile"))"
      return 0
    fi
    stop_haproxy  # another replica count: start it again with the new servers
  fi
  haproxy_config >"$state/haproxy.cfg"
  haproxy -c -q -f "$state/haproxy.cfg"
  haproxy -D -p "$pidfile" -f "$state/haproxy.cfg"
  wait_for "HAProxy on $lb_port" 10 answers "$lb_port"
  log "HAProxy: AMQP on 127.0.0.1:$lb_port, order API on 127.0.0.1:$api_port ($api_replicas replicas), stats http://127.0.0.1:8404"
}

stop_haproxy() {
  local pidfile="$state/haproxy.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid"
    wait_for "HAProxy to stop" 10 sh -c "! kill -0 $pid 2>/dev/null" || true  # its ports free
    log "HAProxy stopped"
  fi
  rm -f "$pidfile"
}

start() {
  mkdir -p "$state"
  # All three before waiting for any: a node restarted after its peers went down waits for
  # them at boot (the last one stopped must come back first, or all together).
  for n in "${nodes[@]}"; do launch_node "$n"; done
  for n in "${nodes[@]}"; do wait_for "$(node_name "$n")" 120 started "$n"; done
  for n in 2 3; do join "$n"; done
  start_haproxy
  status
}

stop() {
  stop_haproxy
  for n in 3 2 1; do
    if running "$n"; then log "stopping $(node_name "$n")"; ctl_on "$n" stop; fi
  done
}

status() {
  local n
  for n in "${nodes[@]}"; do
    if running "$n"; then
      ctl_on "$n" cluster_status --formatter json \
        | python3 -c "import json,sys; s=json.load(sys.stdin); print('members:', ' '.join(sorted(s['disk_nodes'])), '| running:', ' '.join(sorted(s['running_nodes'])))"
      return 0
    fi
  done
  echo "no node of the cluster is running"
}

first_running() {
  local n
  for n in "${nodes[@]}"; do running "$n" && { echo "$n"; return 0; }; done
  log "no node of the cluster is running"; return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf "$state"; log "data deleted ($state)" ;;
  status) status ;;
  stop-node) ctl_on "${2:?node 1-3}" stop; log "$(node_name "$2") stopped" ;;
  start-node) start_node "${2:?node 1-3}" ;;
  ctl) shift; n=$(first_running); rabbitmqctl -n "$(node_name "$n")" "$@" ;;
  env)
    echo "export RABBIT_URL=amqp://guest:guest@127.0.0.1:$lb_port/"
    echo "export WARREN_RABBITMQCTL=\"$here/scripts/rabbitmq-cluster.sh ctl\""
    # Prometheus and `warren top` read every node's metrics (make run writes them as targets).
    echo "export RABBITMQ_METRICS_TARGETS=$(for n in "${nodes[@]}"; do printf '127.0.0.1:%s,' $((15700 + n)); done | sed 's/,$//')" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
