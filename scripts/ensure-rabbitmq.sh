#!/usr/bin/env bash
# Make sure a RabbitMQ answers on $RABBIT_URL (default 127.0.0.1:5672); start the local one if not.
# Used by `make test` and `make run`. With RABBIT_URL pointing elsewhere (compose), it only checks.
set -euo pipefail

url="${RABBIT_URL:-amqp://guest:guest@127.0.0.1:5672/}"
hostport=$(python3 - "$url" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(f"{u.hostname or '127.0.0.1'} {u.port or 5672}")
PY
)
read -r host port <<<"$hostport"

answers() { python3 -c "import socket,sys; socket.create_connection(('$host', $port), timeout=1).close()" 2>/dev/null; }

# Its Prometheus endpoint (queue depths, consumers, alarms: docs/13-monitoring.md), on the local
# broker: the plugin ships with RabbitMQ; enabling it needs no restart (root runs rabbitmq-plugins).
metrics() {
  case "$host" in 127.0.0.1|localhost) ;; *) return 0 ;; esac
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', 15692), timeout=1).close()" 2>/dev/null; then
    return 0
  fi
  # Optional: a broker that cannot get it still runs everything else.
  if command -v rabbitmq-plugins >/dev/null && [ "$(id -u)" = 0 ] \
      && rabbitmq-plugins -q enable rabbitmq_prometheus >/dev/null 2>&1; then
    echo "RabbitMQ's metrics on :15692 (rabbitmq_prometheus enabled)"
  else
    echo "RabbitMQ's metrics are off: rabbitmq-plugins enable rabbitmq_prometheus (as root)" >&2
  fi
  return 0
}

# The consistent-hash exchange (notification's partitions by order id, shared/topology.py: the
# topology declares it, so Warren needs it), on the local broker: it ships with RabbitMQ, and
# enabling it needs no restart. Idempotent.
consistent_hash() {
  case "$host" in 127.0.0.1|localhost) ;; *) return 0 ;; esac
  if command -v rabbitmq-plugins >/dev/null && [ "$(id -u)" = 0 ]; then
    if rabbitmq-plugins -q list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
      return 0
    fi
    if rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1; then
      echo "RabbitMQ's consistent-hash exchange enabled (rabbitmq_consistent_hash_exchange)"
      return 0
    fi
  fi
  echo "No consistent-hash exchange, which Warren's topology declares (notification's partitions):" \
    "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange (as root)" >&2
  return 0
}

if answers; then
  echo "RabbitMQ answers on $host:$port"
  metrics
  consistent_hash
  exit 0
fi
case "$host" in
  127.0.0.1|localhost) ;;
  *) echo "RabbitMQ at $host:$port does not answer (is compose's broker up?)" >&2; exit 1 ;;
esac
if ! command -v rabbitmq-server >/dev/null; then
  echo "No RabbitMQ on $host:$port and rabbitmq-server is not installed." >&2
  echo "Install it (apt-get install rabbitmq-server) or point RABBIT_URL at one (docker compose up rabbitmq)." >&2
  exit 1
fi
echo "Starting the local RabbitMQ (rabbitmq-server -detached)..."
rabbitmq-server -detached
# `rabbitmqctl wait` blocks until the node that owns the pid file has booted.
pidfile=$(ls /var/lib/rabbitmq/mnesia/*.pid 2>/dev/null | head -n1 || true)
if [ -n "$pidfile" ]; then
  timeout 120 rabbitmqctl wait "$pidfile" --timeout 120 >/dev/null || true
fi
for _ in $(seq 1 120); do
  if answers; then echo "RabbitMQ is up on $host:$port"; metrics; consistent_hash; exit 0; fi
  sleep 1
done
echo "RabbitMQ did not come up on $host:$port within two minutes" >&2
exit 1
