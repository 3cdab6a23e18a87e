# The two set-up commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: install test quickstart clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

quickstart: install
	$(PY) -m t5x_lite.quickstart --model_dir=$(MODEL_DIR)

clean:
	rm -rf $(VENV) build *.egg-info
