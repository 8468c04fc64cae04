# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/default.yaml
ARGS   ?=
# Two workers, one per core (each test's torch work is mostly single-threaded); PYTEST_ARGS= for one.
PYTEST_ARGS ?= -n 2

.PHONY: install run test status clean-run browser baseline

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

test: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The report test opens report.html in headless Chromium. CI runs as root on Debian: install it
# there when missing; elsewhere the test skips and says why.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && apt-get install -y --no-install-recommends chromium; \
	fi

# Re-write the CI gate's baseline after an intended change to accuracy (review the diff, commit it).
# The smoke config runs once as the reference and four more times under other kernel sets and thread
# counts; every trained number's tolerance is 1.5x the largest deviation those runs show, so the
# baseline holds on other CPU types too.
SPREAD := exported/smoke-spread
baseline: install
	rm -rf exported/smoke-baseline $(SPREAD)
	$(PY) -m pipeline run configs/smoke.yaml --out exported/smoke-baseline
	ATEN_CPU_CAPABILITY=default $(PY) -m pipeline run configs/smoke.yaml --out $(SPREAD)/aten-default
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pipeline run configs/smoke.yaml --out $(SPREAD)/avx2
	ONEDNN_MAX_CPU_ISA=SSE41 $(PY) -m pipeline run configs/smoke.yaml --out $(SPREAD)/onednn-sse41
	$(PY) -m pipeline run configs/smoke.yaml --out $(SPREAD)/threads2 run.threads=2
	$(PY) -m pipeline gate exported/smoke-baseline --baseline tests/baselines/smoke.json --write-baseline \
		--latency-ratio-max 1.0 --spread-run $(SPREAD)/aten-default --spread-run $(SPREAD)/avx2 \
		--spread-run $(SPREAD)/onednn-sse41 --spread-run $(SPREAD)/threads2

clean-run:
	rm -rf exported/default
