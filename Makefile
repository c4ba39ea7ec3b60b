# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
MODEL_ROOT ?= model_repo
GRAPH ?= graphs/ensemble.yaml

.PHONY: install models serve test test-fast bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a looser pin would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

# Trains the ten demo models only when some manifest is missing.
models: $(INSTALLED)
	$(BIN)/python -m models.train --root $(MODEL_ROOT) --if-missing

serve: models
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/serve run $(GRAPH)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not serve"

clean:
	rm -rf $(VENV) $(MODEL_ROOT) state
