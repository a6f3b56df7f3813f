# Warren: every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Procfile commands (python, warren, nx-27017, honcho) resolve to the virtualenv.
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies

test: $(STAMP) ## Run every test (starts RabbitMQ if down; the tests start the MongoDB stand-in and SMTP sink)
	@scripts/fetch-mermaid.sh
	@scripts/ensure-rabbitmq.sh
	$(BIN)/pytest $(PYTEST_ARGS)

RABBITMQ4_URL := amqp://guest:guest@127.0.0.1:5673/

# The 4.x node also listens for AMQPS, with a CA of the tests' own (tests/integration/test_tls.py).
TEST_TLS_DIR := $(CURDIR)/.run/test-tls
RABBITMQ4_AMQPS_URL := amqps://guest:guest@localhost:5674/?cafile=$(TEST_TLS_DIR)/ca.pem

test-rabbitmq4: $(STAMP) ## The broker tests against RabbitMQ 4.x with 4.3's defaults (builds it once, ~6 min)
	@$(BIN)/warren certs generate --output $(TEST_TLS_DIR)
	@RABBITMQ4_TLS_DIR=$(TEST_TLS_DIR) scripts/rabbitmq4.sh start
	RABBIT_URL=$(RABBITMQ4_URL) WARREN_RABBITMQCTL="$(CURDIR)/scripts/rabbitmq4.sh ctl" \
		WARREN_TEST_AMQPS_URL="$(RABBITMQ4_AMQPS_URL)" WARREN_TEST_RABBITMQ_METRICS=127.0.0.1:15693 \
		$(BIN)/pytest tests/integration tests/e2e tests/faults tests/chaos $(PYTEST_ARGS)
	@scripts/rabbitmq4.sh version

test-unit: $(STAMP) ## Unit tests only (no broker needed)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Replicas of every service (docs/15-backlog.md, "Scaling consumers"; docs/18-scaling.md):
# `make run PAYMENT_REPLICAS=4 ORDER_REPLICAS=2`. Each replica has its own port (order 8000,
# 8010 ...; inventory 8001, 8011 ...; payment 8002, 8012 ...; notification 8003, 8013 ...),
# scraped by Prometheus and shown by `warren top`; the email workers have none.
PAYMENT_REPLICAS ?= 2
INVENTORY_REPLICAS ?= 1
ORDER_REPLICAS ?= 1
NOTIFICATION_REPLICAS ?= 1
EMAILS_REPLICAS ?= 1
REPLICAS := ORDER_REPLICAS=$(ORDER_REPLICAS) INVENTORY_REPLICAS=$(INVENTORY_REPLICAS) \
	PAYMENT_REPLICAS=$(PAYMENT_REPLICAS) NOTIFICATION_REPLICAS=$(NOTIFICATION_REPLICAS) \
	EMAILS_REPLICAS=$(EMAILS_REPLICAS)

run: $(STAMP) ## Run the whole system locally without Docker (Ctrl-C stops it all; ORDER_REPLICAS, PAYMENT_REPLICAS ...)
	@scripts/ensure-rabbitmq.sh
	@mkdir -p .run
	@echo ""
	@echo "  Order API + docs   http://127.0.0.1:8000/docs"
	@echo "  Health             http://127.0.0.1:8000/readyz (notification :8003, audit :8004; the replicas below)"
	@# The Procfile with one line per replica, and their scrape targets (cli/replicas.py).
	@$(BIN)/python -m cli.replicas --order $(ORDER_REPLICAS) --inventory $(INVENTORY_REPLICAS) \
		--payment $(PAYMENT_REPLICAS) --notification $(NOTIFICATION_REPLICAS) \
		--emails $(EMAILS_REPLICAS) --output .run/Procfile
	@echo "  Emails (Maildir)   .run/mail/new      -- try: make demo"
	@echo "  MongoDB stand-in   mongodb://127.0.0.1:27017"
	@echo "  RabbitMQ           $${RABBIT_URL:-amqp://127.0.0.1:5672} (management UI, if enabled: http://127.0.0.1:15672)"
	@echo "  Traces             .run/spans.jsonl   -- try: warren traces show <order id>"
	@echo "  Metrics, alerts    http://127.0.0.1:9090 (Prometheus; each service's own: :8000/metrics ...)"
	@echo ""
	@# One broker user per service (rabbitmqctl, as root); else every service is the operator.
	eval "$$($(BIN)/warren topology provision --env)"; \
	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_BSP_SCHEDULE_DELAY=500 \
	$(REPLICAS) $(BIN)/honcho start -f .run/Procfile

# Beyond one machine, on one machine (docs/18-scaling.md): a three-node RabbitMQ cluster of the
# installed RabbitMQ, HAProxy in front (AMQP 5700, the order API 8088), and CLUSTER_REPLICAS of
# every service. Ctrl-C stops the services; `make cluster-stop` stops the nodes and HAProxy.
CLUSTER_REPLICAS ?= 2

cluster: $(STAMP) ## Three RabbitMQ nodes + HAProxy, every service scaled out (CLUSTER_REPLICAS each; API on :8088)
	@ORDER_REPLICAS=$(CLUSTER_REPLICAS) scripts/rabbitmq-cluster.sh start
	@echo "  Order API (HAProxy) http://127.0.0.1:8088/docs  -- try: make demo WARREN_API=http://127.0.0.1:8088"
	@eval "$$(scripts/rabbitmq-cluster.sh env)"; $(MAKE) --no-print-directory run \
		ORDER_REPLICAS=$(CLUSTER_REPLICAS) INVENTORY_REPLICAS=$(CLUSTER_REPLICAS) \
		PAYMENT_REPLICAS=$(CLUSTER_REPLICAS) NOTIFICATION_REPLICAS=$(CLUSTER_REPLICAS) \
		EMAILS_REPLICAS=$(CLUSTER_REPLICAS)

cluster-stop: ## Stop the local RabbitMQ cluster and HAProxy (`make cluster`); their data is kept
	@scripts/rabbitmq-cluster.sh stop

certs: $(STAMP) ## TLS: a development CA and the broker's and MongoDB's certificates in secrets/tls (for docker-compose.tls.yml)
	$(BIN)/warren certs generate --readable --output secrets/tls

demo: $(STAMP) ## Place a sample order and follow it to its final state (needs `make run` or compose)
	$(BIN)/warren demo
	$(BIN)/warren demo --token tok_chargeDeclined

USERS ?= 20
SPAWN_RATE ?= 5
DURATION ?= 1m
HOST ?= http://127.0.0.1:8000

load: $(STAMP) ## Locust, headless, against `make run` or compose (USERS, SPAWN_RATE, DURATION, HOST)
	@mkdir -p reports
	$(BIN)/locust -f loadtests/locustfile.py --headless --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--run-time $(DURATION) --host $(HOST) \
		--html reports/locust.html --csv reports/locust
	@echo "reports: reports/locust.html, reports/locust_stats.csv (SAGA rows = end-to-end time)"

memory: $(STAMP) ## Resident memory of each process of a running `make run`, and the sum
	$(BIN)/python -m loadtests.memory

bench: $(STAMP) ## Benchmark: broker, one hop 3 ways, saga shipped/traced/untraced, counted per order, database (~15 min)
	@scripts/ensure-rabbitmq.sh
	$(BIN)/python -m loadtests.bench --output reports/bench.json

BASE ?= HEAD~1
COMPARE_ARGS ?= --modes shipped --rates 10,15 --shares "" --no-burst
bench-compare: $(STAMP) ## A lever's before and after: the benchmark from BASE (a commit) and from here, ABBA (~10 min)
	@scripts/ensure-rabbitmq.sh
	$(BIN)/python -m loadtests.compare $(BASE) --pairs 2 -- $(COMPARE_ARGS)

# The drain's own vhost (never make run's "/"), made before and deleted after, where rabbitmqctl
# runs (root). Elsewhere, create it once by hand, or point DRAIN_RABBIT_URL at another.
DRAIN_VHOST := warren-drain
ORDERS ?= 600
CTL_HERE := [ "$$(id -u)" = 0 ] && command -v rabbitmqctl >/dev/null

drain: $(STAMP) ## Benchmark: stop payment, build a backlog of ORDERS (600), drain it with 1, 2, 4 consumers; plot (~4 min)
	@scripts/ensure-rabbitmq.sh
	@if $(CTL_HERE); then rabbitmqctl -q add_vhost $(DRAIN_VHOST) 2>/dev/null || true; \
		rabbitmqctl -q set_permissions -p $(DRAIN_VHOST) guest '.*' '.*' '.*'; fi
	$(BIN)/python -m loadtests.drain --orders $(ORDERS) \
		--rabbit-url $${DRAIN_RABBIT_URL:-amqp://guest:guest@127.0.0.1:5672/$(DRAIN_VHOST)}; \
	status=$$?; if $(CTL_HERE); then rabbitmqctl -q delete_vhost $(DRAIN_VHOST); fi; exit $$status

# The same for the ordering comparison: its own vhost, made before and deleted after.
ORDERING_VHOST := warren-ordering

ordering-compare: $(STAMP) ## Benchmark: notification's order events through one queue vs partitions, 2 replicas: held back, out of order, latency (~3 min)
	@scripts/ensure-rabbitmq.sh
	@if $(CTL_HERE); then rabbitmqctl -q add_vhost $(ORDERING_VHOST) 2>/dev/null || true; \
		rabbitmqctl -q set_permissions -p $(ORDERING_VHOST) guest '.*' '.*' '.*'; fi
	$(BIN)/python -m loadtests.ordering \
		--rabbit-url $${ORDERING_RABBIT_URL:-amqp://guest:guest@127.0.0.1:5672/$(ORDERING_VHOST)}; \
		status=$$?; if $(CTL_HERE); then rabbitmqctl -q delete_vhost $(ORDERING_VHOST); fi; exit $$status

# The labs' own vhost (never "/"): created once where rabbitmqctl runs (root).
labs-compare: $(STAMP) ## The labs' brokers side by side: throughput, latency (~2 min; QUICK=1: seconds)
	@scripts/ensure-rabbitmq.sh
	@if [ "$$(id -u)" = 0 ] && command -v rabbitmqctl >/dev/null; then \
		rabbitmqctl -q add_vhost warren-labs && \
		rabbitmqctl -q set_permissions -p warren-labs guest '.*' '.*' '.*'; fi
	$(BIN)/python -m labs.compare $(if $(QUICK),--quick)

chaos: $(STAMP) ## Every fault in turn under load; counts lost orders and duplicated effects (~20 min; ONLY=name)
	@scripts/ensure-rabbitmq.sh
	$(BIN)/python -m loadtests.chaos $(foreach s,$(ONLY),--only $(s)) --output reports/chaos.json

seed: $(STAMP) ## (Re)load the demo catalog, resetting stock levels
	$(BIN)/warren seed --reset

compose-rehearsal: $(STAMP) ## Run docker-compose.yml's app containers locally against stand-ins and place an order
	@scripts/ensure-rabbitmq.sh
	$(BIN)/python scripts/compose_rehearsal.py

# The profile cluster of docker-compose.yml (docs/18-scaling.md, "Compose"): cluster.env, read
# after .env, starts the profile, points the services at HAProxy and runs two of each. Needs a
# Docker engine.
COMPOSE_CLUSTER := docker compose --env-file .env --env-file cluster.env

compose-cluster: ## docker compose with cluster.env: 3 broker nodes, 3 MongoDB members, HAProxy, 2 of each service
	$(COMPOSE_CLUSTER) up --build --wait

compose-cluster-rehearsal: $(STAMP) ## The profile cluster's broker config on three RabbitMQ 4.x nodes here: they cluster, queues grow to 3
	scripts/compose-cluster-rehearsal.sh

compose-cluster-down: ## Stop the profile cluster, keeping its data (back to one node of each: add -v, see cluster.env)
	$(COMPOSE_CLUSTER) down

secrets: $(STAMP) ## Write ./secrets (compose's secret files) from .env, after changing a secret there
	$(BIN)/warren secrets write

compose-check: $(STAMP) ## Validate docker-compose.yml against the Compose schema
	$(BIN)/check-jsonschema --schemafile $$( [ -f ../shared/compose-spec.schema.json ] && echo ../shared/compose-spec.schema.json || echo infra/compose-spec.schema.json ) docker-compose.yml

docs: $(STAMP) ## Serve the tutorial on http://127.0.0.1:8088 (8000 is the order API)
	@scripts/fetch-mermaid.sh
	$(BIN)/mkdocs serve -a 127.0.0.1:8088

# Runs the chapters' marked ```bash blocks in order and checks each output. It starts the system
# itself, in a scratch copy of the tree, so stop `make run` first (or pass ARGS=--running).
tutorial-check: $(STAMP) ## Run the tutorial's commands against a fresh system and check their output (~2 min)
	@scripts/ensure-rabbitmq.sh
	$(BIN)/python scripts/tutorial_check.py $(ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

constraints: ## Re-pin constraints.txt from the current .venv (after changing requirements)
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean: ## Remove local run data (.run) and caches
	rm -rf .run .pytest_cache .ruff_cache reports

.PHONY: help install test test-rabbitmq4 test-unit run demo load memory bench bench-compare drain ordering-compare labs-compare chaos seed compose-rehearsal compose-cluster compose-cluster-rehearsal compose-cluster-down secrets compose-check docs tutorial-check lint constraints clean
