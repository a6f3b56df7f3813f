#!/usr/bin/env bash
# The broker half of docker-compose.yml's profile cluster, run for real on this machine: three
# RabbitMQ 4.x nodes (the version compose runs, built by scripts/rabbitmq4.sh) configured from
# the files compose mounts, started in compose's order; then what the profile promises is
# checked (docs/18-scaling.md, "Compose").
#
#   scripts/compose-cluster-rehearsal.sh          # make compose-cluster-rehearsal
#
# Each node gets what its container gets: a conf.d folder with infra/rabbitmq/rabbitmq.conf as
# 20-warren.conf and, on the second and third, infra/rabbitmq/cluster.conf as 30-cluster.conf
# (the node names rabbit@rabbitmq, rabbit@rabbitmq-2, rabbit@rabbitmq-3 replaced by this
# machine's: three nodes on one host need three names); the definitions `warren topology
# export` writes, as the broker-definitions job does; the Erlang cookie from the secret file
# secrets/broker_erlang_cookie, copied with `install -m 400` into the node's own HOME, as the
# containers' entrypoint does. Node 1 starts alone; nodes 2 and 3 together once node 1 passes
# compose's healthcheck (check_port_connectivity).
#
# It checks: the three nodes form one cluster by themselves (peer discovery, no join_cluster);
# every quorum queue of the definitions grows from one member to three (membership
# reconciliation); the cookie file as `make secrets` writes it (with its newline) is taken.
# What it cannot rehearse: the containers, compose's DNS names, HAProxy in front (checked by
# `haproxy -c` in tests/unit/test_compose_cluster.py), MongoDB's replica set.
#
# Ports 5711-5713 (AMQP), 15711-15713 (management), 15721-15723 (metrics), 25711-25713
# (distribution); state in $WARREN_CACHE_DIR/compose-cluster (default ~/.cache/warren),
# deleted at the end. Every node it started is stopped, whatever happens -- unless KEEP_STATE=1,
# which leaves the three nodes running to look at (stop each with `rabbitmqctl -n warren-kN@localhost
# stop`, HOME=<state>/kN).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state="${WARREN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/warren}/compose-cluster"
grow_seconds="${GROW_SECONDS:-120}"
nodes=(1 2 3)
started=()

log() { echo "[compose-cluster] $*" >&2; }
node_name() { echo "warren-k$1@localhost"; }
compose_name() { if [ "$1" = 1 ]; then echo "rabbit@rabbitmq"; else echo "rabbit@rabbitmq-$1"; fi; }

case "${1:-}" in
  -h|--help|help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

"$here/scripts/rabbitmq4.sh" build
eval "$("$here/scripts/rabbitmq4.sh" paths)"  # RABBITMQ4_TOOLS, RABBITMQ4_PLUGINS_DIR
export PATH="$RABBITMQ4_TOOLS:$PATH"

ctl() {  # ctl N ARGS: rabbitmqctl as node N's CLI (its HOME holds its cookie)
  local n=$1; shift
  HOME="$state/k$n" rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

stop_all() {
  for n in "${started[@]}"; do
    ctl "$n" stop >/dev/null 2>&1 || true
  done
  rm -rf "$state"
}
trap stop_all EXIT
[ -n "${KEEP_STATE:-}" ] && trap - EXIT

write_node() {  # the files node N's container gets
  local n=$1 dir="$state/k$1"
  mkdir -p "$dir/conf.d" "$dir/log" "$dir/mnesia"
  # What the image and compose's ports give a container: its own listeners.
  cat >"$dir/conf.d/10-node.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$((5710 + n))
management.tcp.port = $((15710 + n))
management.tcp.ip = 127.0.0.1
prometheus.tcp.port = $((15720 + n))
prometheus.tcp.ip = 127.0.0.1
EOF
  sed "s|^load_definitions = .*|load_definitions = $state/definitions.json|" \
    "$here/infra/rabbitmq/rabbitmq.conf" >"$dir/conf.d/20-warren.conf"
  # Logs to a file here (compose's go to the console, which a detached node has not).
  echo "log.file = rabbit.log" >"$dir/conf.d/40-log.conf"
  if [ "$n" != 1 ]; then
    local rename=()
    for m in "${nodes[@]}"; do rename+=(-e "s|= $(compose_name "$m")\$|= $(node_name "$m")|"); done
    sed "${rename[@]}" "$here/infra/rabbitmq/cluster.conf" >"$dir/conf.d/30-cluster.conf"
  fi
  cp "$here/infra/rabbitmq/enabled_plugins" "$dir/enabled_plugins"
  # The image has no rabbitmq.conf of its own (its settings are in conf.d): nor does this node,
  # rather than this machine's /etc/rabbitmq/rabbitmq.conf.
  : >"$dir/rabbitmq.conf"
  install -m 400 "$here/secrets/broker_erlang_cookie" "$dir/.erlang.cookie"
}

launch() {
  local n=$1 dir="$state/k$1"
  log "starting $(node_name "$n") (AMQP 127.0.0.1:$((5710 + n)))"
  (cd "$dir" && HOME="$dir" RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_PORT=$((5710 + n)) RABBITMQ_DIST_PORT=$((25710 + n)) \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_CONFIG_FILES="$dir/conf.d" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PLUGINS_DIR="$RABBITMQ4_PLUGINS_DIR" RABBITMQ_PID_FILE="$dir/pid" \
    rabbitmq-server -detached >/dev/null)
  started+=("$n")
}

healthy() {  # compose's healthcheck for node N
  HOME="$state/k$1" rabbitmq-diagnostics -q -n "$(node_name "$1")" check_port_connectivity >/dev/null 2>&1
}

wait_healthy() {
  for _ in $(seq 1 120); do
    healthy "$1" && return 0
    sleep 1
  done
  log "$(node_name "$1") not healthy after 120 s; its log:"
  tail -30 "$state/k$1"/log/*.log >&2 || true
  exit 1
}

rm -rf "$state" && mkdir -p "$state"
(cd "$here" && "$here/.venv/bin/warren" topology export --output "$state/definitions.json" >/dev/null)
for n in "${nodes[@]}"; do write_node "$n"; done

launch 1
wait_healthy 1
launch 2
launch 3
wait_healthy 2
wait_healthy 3

members=$(ctl 1 cluster_status --formatter json | python3 -c "import json,sys; print(' '.join(sorted(json.load(sys.stdin)['running_nodes'])))")
expected="$(node_name 1) $(node_name 2) $(node_name 3)"
if [ "$members" != "$expected" ]; then
  log "FAILED: the nodes did not form one cluster: node 1 sees [$members], not [$expected]"
  exit 1
fi
log "one cluster of three, formed by peer discovery: $members"

small_queues() {  # the quorum queues with fewer than three members: "name:count" ...
  ctl 1 list_queues name type members --formatter json | python3 -c "
import json, sys
print(' '.join(f\"{q['name']}:{len(q['members'])}\" for q in json.load(sys.stdin)
               if q['type'] == 'quorum' and len(q['members']) < 3))"
}
quorum=$(ctl 1 list_queues name type --formatter json | python3 -c "import json,sys; print(sum(q['type'] == 'quorum' for q in json.load(sys.stdin)))")
log "$quorum quorum queues from the definitions, each with one member at first; waiting for three"
began=$SECONDS
while true; do
  small=$(small_queues)
  [ -z "$small" ] && break
  if (( SECONDS - began > grow_seconds )); then
    log "FAILED: after ${grow_seconds} s, quorum queues with fewer than three members: $small"
    exit 1
  fi
  sleep 2
done
log "every one of the $quorum quorum queues has three members, after $((SECONDS - began)) s"
log "passed"
