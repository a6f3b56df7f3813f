#!/usr/bin/env bash
# Prometheus for the local run (the Procfile's `prometheus` line): infra/prometheus/
# prometheus.local.yml, with the alert rules, its data in .run/prometheus, on 127.0.0.1:9090.
# Without Prometheus installed the run goes on without it (honcho would stop everything if a
# process ended): it says how to install it, and waits.
set -euo pipefail
port="${PROMETHEUS_PORT:-9090}"
# The replicas' scrape targets (.run/scrape, which prometheus.local.yml and `warren top` read):
# make run wrote them with ORDER_REPLICAS, PAYMENT_REPLICAS ... and passes them on; a Procfile
# started by hand (honcho start) runs the default replicas, and gets those.
python -m cli.replicas --targets-only \
  --order "${ORDER_REPLICAS:-1}" --inventory "${INVENTORY_REPLICAS:-1}" \
  --payment "${PAYMENT_REPLICAS:-2}" --notification "${NOTIFICATION_REPLICAS:-1}" >/dev/null \
  || echo "could not write the scrape targets (.run/scrape): the services go unscraped" >&2
if ! command -v prometheus >/dev/null; then
  echo "Prometheus is not installed: no metrics or alerts in this run." >&2
  echo "Install it (Debian: apt-get install prometheus) and start make run again." >&2
  exec sleep infinity
fi
if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=1).close()" 2>/dev/null; then
  # Debian's package starts a Prometheus of its own on 9090: this run's stays out of its way.
  echo "Port $port is taken (another Prometheus?): no metrics in this run; PROMETHEUS_PORT=9095 make run picks another." >&2
  exec sleep infinity
fi
mkdir -p .run/prometheus
exec prometheus \
  --config.file=infra/prometheus/prometheus.local.yml \
  --storage.tsdb.path=.run/prometheus \
  --storage.tsdb.retention.time=2d \
  --web.listen-address="127.0.0.1:$port" \
  --enable-feature=exemplar-storage \
  --log.level=warn
