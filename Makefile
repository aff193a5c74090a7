# Two commands for a new user:  make run  (set up + start the sidecar)  and  make test.
# Both are idempotent: stamps skip work already done, models are prepared once into the cache.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctxgate-deps
# A bare `torch` requirement pulls a multi-GB CUDA build. On CPU machines we install this pin
# first (on our machines it resolves to a local CPU wheel); elsewhere, point TORCH_INDEX at a
# CPU wheel index, e.g. make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: run test lint setup models system-deps bench chaos eval litellm clean help

help:
	@echo "make run    set everything up and start the sidecar on 127.0.0.1:8340 (embedded upstream)"
	@echo "make test   set everything up, run the static checks (make lint) and the test suite"
	@echo "make lint   ruff (lint + format check) and mypy on compressor/ and service/"
	@echo "make bench  compression speed table (ctxgate bench)"
	@echo "make chaos  the sidecar under faults (ctxgate bench chaos)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: installing the CUDA build of $(TORCH_SPEC)"; \
	  $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	else \
	  echo "no GPU: installing the CPU build of $(TORCH_SPEC)"; \
	  $(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@$(PY) -c "import torch, sys; cpu = not torch.cuda.is_available(); b = torch.__version__; \
	  sys.exit('a CUDA torch build was installed on a CPU machine: ' + b) if cpu and '+cu' in b else print('torch', b)"
	touch $@

setup: $(STAMP)

models: $(STAMP)
	$(BIN)/ctxgate models prepare scorer embedder

# redis-server for the Redis cache tests, chromium for the dashboard browser test (Debian)
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup models system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

run: setup models
	$(BIN)/ctxgate serve

bench: setup models
	$(BIN)/ctxgate bench

# faults, loopback only, bounded: 50 streams for 90 s, Redis frozen and killed, the sidecar kill -9'd
chaos: setup models system-deps
	$(BIN)/ctxgate bench chaos --seconds 90 --streams 50 --out eval/results/chaos.json

# LiteLLM's proxy with ctxgate as its headroom guardrail and as a model's api_base (tests/service/test_litellm_guardrail.py).
# litellm[proxy] lives in its own venv: a few hundred MB nothing else needs.
LITELLM_VENV ?= .venv-litellm
litellm: setup models system-deps
	test -x $(LITELLM_VENV)/bin/litellm || (python3.11 -m venv $(LITELLM_VENV) && $(LITELLM_VENV)/bin/pip install -q 'litellm[proxy]==1.108.7')
	CTXGATE_LITELLM=$(abspath $(LITELLM_VENV))/bin/litellm $(PY) -m pytest -q tests/service/test_litellm_guardrail.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
