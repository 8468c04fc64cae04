# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/default.yaml
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install run test status clean-run

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the declared dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m pipeline run $(CONFIG) $(ARGS)

status: install
	$(PY) -m pipeline status $(CONFIG) $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean-run:
	rm -rf exported/default
