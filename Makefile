# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BENCH_INSTALLED := $(VENV)/.bench-installed
MODEL_ROOT ?= model_repo
GRAPH ?= graphs/ensemble.yaml

.PHONY: install models serve deploy status test test-fast bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a looser pin would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

# Trains the demo models whose manifest is missing or stale (trained for another runtime).
models: $(INSTALLED)
	$(BIN)/python -m models.train --root $(MODEL_ROOT) --if-missing

# Serve's HAProxy ingress with throughput-optimized settings won the benchmark's throughput at 64
# connections in every run on Intel Xeon and on two nodes, and tied with HAProxy alone on AMD
# EPYC; Serve's controller reconciling every 0.5 s instead of 0.1 s cut its idle CPU about fourfold; HAProxy's per-request metrics line,
# parsed in Python by Serve's HAProxy manager, cost a twelfth of the ensemble's CPU per answer (BENCHMARKS.md). A stopping ingress
# replica stays reachable 2 s instead of Ray's 30 s, a wait meant for external load balancers:
# Serve takes it out of HAProxy at once, and while it drains it holds its CPUs, which the router
# that replaces it in a deploy waited 30 s for (BENCHMARKS.md, "Deploying under load"); Ctrl-C
# waits for it too. Serve's HTTP-server callback (deployments/http_callback.py) answers predict
# requests in the router's process ahead of Serve's per-request wrapper, 0.19 of the router's
# 0.43 CPU ms per answer.
# cluster.yaml starts every node with these.
SERVE_ENV ?= RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5 RAY_SERVE_HAPROXY_METRICS_ENABLED=0 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2 RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=60 RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.http_callback:middlewares

serve: models
	$(BIN)/python -m graphs.deploy --check $(GRAPH)
	$(SERVE_ENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/serve run $(GRAPH)

# Ray turns token authentication on for the local instance that `make serve` starts (its token in
# ~/.ray/auth_token), but its clients send that token only under RAY_AUTH_MODE=token: without it
# `serve deploy` and `serve status` are refused ("Missing authentication token").
CLIENT_ENV := RAY_AUTH_MODE=token

# Deploys GRAPH onto the running `make serve`, e.g. `make deploy GRAPH=graphs/canary.yaml`, and
# returns once it runs. Unlike `serve deploy`, the applications GRAPH drops are deleted only then,
# and a GRAPH that does not come up is undone (graphs/deploy.py).
deploy: models
	$(CLIENT_ENV) $(BIN)/python -m graphs.deploy $(GRAPH)

status: $(INSTALLED)
	$(CLIENT_ENV) $(BIN)/serve status

$(BENCH_INSTALLED): $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# The whole benchmark against its peers, one run (about 20 minutes on 2 cores); see BENCHMARKS.md.
# BENCH_ARGS passes options, e.g. BENCH_ARGS="--duration 3 --systems noop,fastapi".
bench: models $(BENCH_INSTALLED)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not serve"

clean:
	rm -rf $(VENV) $(MODEL_ROOT) state
