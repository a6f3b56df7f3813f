#!/usr/bin/env bash
# A RabbitMQ 4.x beside the machine's RabbitMQ 3.x, for `make test-rabbitmq4` and CI.
#
#   scripts/rabbitmq4.sh build     fetch and build once into the cache (reused when present)
#   scripts/rabbitmq4.sh start     build if needed, start the node, wait until it answers
#   scripts/rabbitmq4.sh stop      stop the node
#   scripts/rabbitmq4.sh version   print the running server's version
#   scripts/rabbitmq4.sh ctl ARGS  rabbitmqctl against the 4.x node (e.g. `ctl list_queues`)
#   scripts/rabbitmq4.sh plugins ARGS  rabbitmq-plugins against it (e.g. `plugins list -e`)
#   scripts/rabbitmq4.sh env       print RABBIT_URL and WARREN_RABBITMQCTL for this node
#   scripts/rabbitmq4.sh paths     print where the build's tools and plugins are
#
# Why a build: Debian 12 packages RabbitMQ 3.10 only. Debian 13 (trixie) packages RabbitMQ 4.0,
# which is architecture-independent and runs on any Erlang/OTP >= 26, but trixie's Erlang binaries
# need a newer glibc than Debian 12 has. So Erlang/OTP 27 is built from trixie's source tarball
# (about 5 minutes on 2 cores) and the server package is unpacked beside it. apt reads a private
# sources list and lists directory under the cache: the machine's own apt state is left alone.
#
# The node: rabbit4@localhost, AMQP on 5673, management on 15673, distribution on 25673, and
# with RABBITMQ4_TLS_DIR=<folder of `warren certs generate`> AMQPS on 5674. Its
# configuration (infra/rabbitmq/rabbitmq4-test.conf) applies RabbitMQ 4.3's defaults where they
# differ from 4.0's; docs/13-rabbitmq-versions.md says which 4.3 behaviours that covers.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache="${WARREN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/warren}/rabbitmq4"
erlang="$cache/erlang"            # Erlang/OTP 27 installed here (bin/erl)
server="$cache/server"            # the unpacked rabbitmq-server package
state="$cache/state"              # the node's data, logs, config: recreated by every `start`
port="${RABBITMQ4_PORT:-5673}"
mgmt_port="${RABBITMQ4_MANAGEMENT_PORT:-15673}"
dist_port="${RABBITMQ4_DIST_PORT:-25673}"
tls_port="${RABBITMQ4_TLS_PORT:-5674}"
# A folder from `warren certs generate` (ca.pem, rabbitmq.pem, rabbitmq-key.pem): with it, the
# node also listens for AMQPS on $tls_port (tests/integration/test_tls.py).
tls_dir="${RABBITMQ4_TLS_DIR:-}"
node="rabbit4@localhost"

log() { echo "[rabbitmq4] $*" >&2; }

apt_private() {
  apt-get -o Dir::Etc::sourcelist=/dev/null \
          -o Dir::Etc::sourceparts="$cache/apt/sources.list.d" \
          -o Dir::State::Lists="$cache/apt/lists" \
          -o Dir::Cache="$cache/apt/cache" \
          -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}

fetch() {
  mkdir -p "$cache/apt/sources.list.d" "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial" "$cache/dl"
  # The machine's Debian mirror, suite trixie, binaries and sources.
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  cat >"$cache/apt/sources.list.d/trixie.sources" <<EOF
Types: deb deb-src
URIs: ${uri:-http://deb.debian.org/debian}
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  log "apt-get update (trixie, private lists under $cache/apt)"
  apt_private -qq update
  (cd "$cache/dl" && ls rabbitmq-server_*.deb >/dev/null 2>&1 || apt_private -qq download rabbitmq-server)
  (cd "$cache/dl" && ls erlang_*.orig.tar.* >/dev/null 2>&1 || apt_private -qq source --download-only erlang) || true
  ls "$cache"/dl/erlang_*.orig.tar.* >/dev/null 2>&1 || { log "could not download Erlang's source tarball"; exit 1; }
}

build() {
  if [ -x "$erlang/bin/erl" ] && [ -x "$server/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
    log "cached: $("$erlang/bin/erl" -noshell -eval 'io:format("Erlang/OTP ~s", [erlang:system_info(otp_release)]), halt().') and $(basename "$(ls "$cache"/dl/rabbitmq-server_*.deb)")"
    return
  fi
  fetch
  if [ ! -x "$erlang/bin/erl" ]; then
    local src="$cache/src"
    rm -rf "$src" && mkdir -p "$src"
    log "unpacking $(basename "$(ls "$cache"/dl/erlang_*.orig.tar.*)")"
    tar -xf "$cache"/dl/erlang_*.orig.tar.* -C "$src" --strip-components=1
    log "building Erlang/OTP (about 5 minutes on 2 cores; output in $cache/erlang-build.log)"
    (
      cd "$src"
      ./configure --prefix="$erlang" --without-wx --without-odbc --without-jinterface \
        --without-megaco --without-debugger --without-observer --without-et --without-diameter \
        --without-snmp --without-common_test --without-dialyzer --without-reltool --without-edoc \
        --without-erl_docgen --without-javac
      make -j"$(nproc)"
      make install
    ) >"$cache/erlang-build.log" 2>&1 || { tail -30 "$cache/erlang-build.log" >&2; log "Erlang build failed"; exit 1; }
    rm -rf "$src"
  fi
  rm -rf "$server" && mkdir -p "$server"
  dpkg -x "$cache"/dl/rabbitmq-server_*.deb "$server"
  log "built: Erlang in $erlang, RabbitMQ in $server"
}

# Where the build put the tools (rabbitmq-server, rabbitmqctl, erl ...) and the plugins.
tools_path="$erlang/bin:$server/usr/lib/rabbitmq/bin"
plugins_dir() { echo "$server"/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins; }

# The environment every rabbitmq-* script of the 4.x node needs.
node_env() {
  export PATH="$tools_path:$PATH"
  export RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist_port"
  export RABBITMQ_MNESIA_BASE="$state/mnesia" RABBITMQ_LOG_BASE="$state/log"
  export RABBITMQ_CONFIG_FILE="$state/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$state/enabled_plugins"
  export RABBITMQ_PID_FILE="$state/rabbit4.pid"
  # The same cookie as the 3.x node's CLI: both CLIs run as the same user.
  export HOME="${HOME:-/root}"
}

# The node's plugins: the event exchange (amq.rabbitmq.event: the audit service records the
# broker's security events, docs/14-security.md), the consistent-hash exchange (partitions keyed
# by order id: shared/ordering.py), the management UI and the Prometheus endpoint.
plugins="rabbitmq_management rabbitmq_event_exchange rabbitmq_prometheus rabbitmq_consistent_hash_exchange"

answers() { python3 -c "import socket; socket.create_connection(('127.0.0.1', ${1:-$port}), timeout=1).close()" 2>/dev/null; }

# Which certificates the node was started with: their folder and their CA (a folder whose CA
# was made again holds certificates the running node does not serve).
tls_marker() { echo "$tls_dir $(sha256sum "$tls_dir/ca.pem" 2>/dev/null | cut -c1-16)"; }

tls_config() {
  cat <<EOF
# AMQPS with Warren's development CA (warren certs generate). No client certificates: the
# clients authenticate with their user and password, inside the encrypted connection.
listeners.ssl.default = $tls_port
ssl_options.cacertfile = $tls_dir/ca.pem
ssl_options.certfile = $tls_dir/rabbitmq.pem
ssl_options.keyfile = $tls_dir/rabbitmq-key.pem
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
}

start() {
  build
  node_env
  if answers; then
    # Running with the certificates asked for (or none asked for): reuse it. Else restart: a
    # node with another CA's certificate would fail the clients that trust this one.
    if [ -z "$tls_dir" ] || { answers "$tls_port" && [ "$(cat "$state/tls-dir" 2>/dev/null)" = "$(tls_marker)" ]; }; then
      log "already running on 127.0.0.1:$port"
      # A node started by an older checkout may lack a plugin added since: enabled at once.
      RABBITMQ_PLUGINS_DIR=$(plugins_dir) \
        rabbitmq-plugins -q -n "$node" enable $plugins >/dev/null
      version; return
    fi
    log "running without AMQPS from $tls_dir: restarting it"
    rabbitmqctl -q -n "$node" stop "$RABBITMQ_PID_FILE"
  fi
  rm -rf "$state" && mkdir -p "$state/log" "$state/mnesia"
  sed -e "s/@PORT@/$port/" -e "s/@MGMT_PORT@/$mgmt_port/" "$here/infra/rabbitmq/rabbitmq4-test.conf" >"$state/rabbitmq.conf"
  if [ -n "$tls_dir" ]; then tls_config >>"$state/rabbitmq.conf"; tls_marker >"$state/tls-dir"; fi
  echo "[${plugins// /,}]." >"$state/enabled_plugins"
  log "starting $node on 127.0.0.1:$port (management :$mgmt_port)"
  # From its own folder: a node whose working directory is deleted (a checkout removed under
  # it) can no longer run a command, and stop_app fails half-way.
  (cd "$state" && rabbitmq-server -detached)
  for _ in $(seq 1 120); do
    if answers && rabbitmqctl -q -n "$node" await_startup --timeout 5 >/dev/null 2>&1 \
        && { [ -z "$tls_dir" ] || answers "$tls_port"; }; then
      version
      return
    fi
    sleep 1
  done
  log "did not come up within two minutes; log: $state/log"
  tail -20 "$state"/log/*.log >&2 || true
  exit 1
}

stop() {
  node_env
  if ! answers; then log "not running"; return; fi
  rabbitmqctl -q -n "$node" stop "$RABBITMQ_PID_FILE" && log "stopped"
}

version() {
  node_env
  local v otp
  v=$(rabbitmqctl -q -n "$node" version)
  otp=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
  local tls=""
  if answers "$tls_port"; then tls=" and amqps://localhost:$tls_port/"; fi
  echo "RabbitMQ $v on Erlang/OTP $otp at amqp://127.0.0.1:$port/$tls (node $node)"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  version) version ;;
  ctl) shift; node_env; exec rabbitmqctl -n "$node" "$@" ;;
  plugins)
    shift; node_env
    # The node finds its plugins beside its own code; the CLI must be told.
    RABBITMQ_PLUGINS_DIR=$(plugins_dir)
    export RABBITMQ_PLUGINS_DIR
    exec rabbitmq-plugins -n "$node" "$@"
    ;;
  paths)  # for another script's nodes of the same build (scripts/compose-cluster-rehearsal.sh)
    echo "RABBITMQ4_TOOLS=$tools_path"
    echo "RABBITMQ4_PLUGINS_DIR=$(plugins_dir)"
    ;;
  env)
    echo "RABBIT_URL=amqp://guest:guest@127.0.0.1:$port/"
    echo "WARREN_RABBITMQCTL='$here/scripts/rabbitmq4.sh ctl'"
    ;;
  -h|--help|help|"") sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "unknown command: $1 (try --help)" >&2; exit 2 ;;
esac
