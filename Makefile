# The two set-up commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: install install-cuda12 install-cuda13 install-tpu test test-ci-slow lint quickstart finetune-demo clean plan-deps plan-deps-tpu plan-deps-cuda

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# On an accelerator host: the package with jax's own CUDA or TPU build (setup.cfg's extras of the
# same names), without the test extra.
install-cuda12: EXTRA = cuda12
install-cuda13: EXTRA = cuda13
install-tpu: EXTRA = tpu
install-cuda12 install-cuda13 install-tpu:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRA)]'

test: install plan-deps-tpu
	$(PY) -m pytest $(PYTEST_ARGS)

# The slow tests CI adds after `make test` (marked `ci`: a few minutes in all); `pytest -m slow`
# runs every slow test.
test-ci-slow: install
	$(PY) -m pytest -m "slow and ci" $(PYTEST_ARGS)

# Style, configured once in pyproject.toml: `.venv/bin/ruff format . && .venv/bin/ruff check --fix .`
# fixes what this reports.
lint: install
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

quickstart: install
	$(PY) -m t5x_lite.quickstart --model_dir=$(MODEL_DIR)

# Compilers for `python -m t5x_lite.plan`, at the versions the installed jax pins for its `tpu` and
# `cuda12` extras. They live beside the environment, not in it: only `plan` puts them on its path
# (libtpu holds a process lock file; the CUDA plugin must never start on a CPU run).
# The TPU part is a ~140 MB download (installed by `make test`); the CUDA part ~5 GB.
PLAN_DEPS := $(VENV)/plan-deps
plan_requirements = $(PY) -c 'from t5x_lite.plan import jax_extra_requirements as r; print("\n".join(r("$(1)")))'

$(PLAN_DEPS)/%/.installed: | $(VENV)/.installed
	rm -rf $(PLAN_DEPS)/$*
	$(call plan_requirements,$*) | xargs -d '\n' $(PY) -m pip install --quiet --target $(PLAN_DEPS)/$*
	touch $@

plan-deps-tpu: $(PLAN_DEPS)/tpu/.installed
plan-deps-cuda: $(PLAN_DEPS)/cuda/.installed
plan-deps: plan-deps-tpu plan-deps-cuda

clean:
	rm -rf $(VENV) build *.egg-info

# After `make quickstart`: fine-tune its model on the demo task (finding the doubled word in
# phrases of the quickstart corpus), evaluate by decoding and export to MODEL_DIR-finetuned
# (README, "Fine-tuning").
finetune-demo: install
	$(PY) -m t5x_lite.quickstart --finetune --model_dir=$(MODEL_DIR)
