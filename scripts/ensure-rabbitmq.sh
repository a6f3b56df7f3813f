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

if answers; then
  echo "RabbitMQ answers on $host:$port"
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
  if answers; then echo "RabbitMQ is up on $host:$port"; exit 0; fi
  sleep 1
done
echo "RabbitMQ did not come up on $host:$port within two minutes" >&2
exit 1
