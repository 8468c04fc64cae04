# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/default.yaml
ARGS   ?=
# Two workers, one per core (each test's torch work is mostly single-threaded), a test file per worker
# (some files' tests build on each other in order), in the order tests/conftest.py gives them, and
# the slowest tests listed at the end (where CI's time goes); PYTEST_ARGS= for one process.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder --durations=15

.PHONY: install run test status clean-run browser baseline smoke-reference gpu-check gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the declared dependencies change. pip byte-compiles one file at a time
# (--no-compile), compileall on every core: half the time. Without .pyc files, where
# PYTHONDONTWRITEBYTECODE is set (it is on the machines this project is built on), every Python
# process compiles torch afresh: 13 s each, for `make run` and each of the test suite's subprocesses.
# compileall exits 1 on the few files for other Python versions that packages ship (never imported).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install --no-compile -e '.[dev]'
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
		> /dev/null || true
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
# counts, two runs at a time (each run's output shows when it ends); every trained number's tolerance
# is 1.5x the largest deviation those runs show. Then a run on a kernel set none of them used (torch's
# AVX2 kernels alone on an AVX-512 machine, oneDNN at AVX on an AVX2 one; the reference's teacher
# reused) must pass the new baseline: the tolerances are tested, not only derived.
SMOKE_RUN   := $(PY) -m pipeline run configs/smoke.yaml
SPREAD      := exported/smoke-spread
SPREAD_RUNS := aten-default avx2 onednn-sse41 threads2
ENV_aten-default := ATEN_CPU_CAPABILITY=default
ENV_avx2         := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
ENV_onednn-sse41 := ONEDNN_MAX_CPU_ISA=SSE41
ARGS_threads2    := run.threads=2
HELD_OUT_KERNELS := $$($(PY) -c "import torch; print('ATEN_CPU_CAPABILITY=avx2' \
	if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 'ONEDNN_MAX_CPU_ISA=AVX')")
baseline: install
	rm -rf exported/smoke-baseline $(SPREAD)
	$(MAKE) -j2 --output-sync=target --no-print-directory smoke-reference $(addprefix smoke-spread-,$(SPREAD_RUNS))
	$(PY) -m pipeline gate exported/smoke-baseline --baseline tests/baselines/smoke.json --write-baseline \
		--latency-ratio-max 1.0 $(foreach run,$(SPREAD_RUNS),--spread-run $(SPREAD)/$(run))
	mkdir -p $(SPREAD)/held-out && cp -al exported/smoke-baseline/train_teacher $(SPREAD)/held-out/
	env $(HELD_OUT_KERNELS) $(SMOKE_RUN) --out $(SPREAD)/held-out
	$(PY) -m pipeline gate $(SPREAD)/held-out --baseline tests/baselines/smoke.json

smoke-reference:
	$(SMOKE_RUN) --out exported/smoke-baseline

smoke-spread-%:
	env $(ENV_$*) $(SMOKE_RUN) --out $(SPREAD)/$* $(ARGS_$*)

# The GPU check, sized for 8 minutes of one GPU: the smoke pipeline on CUDA (bf16, channels_last,
# torch.compile), the training benchmark at crop 513 and the TaT loss naive against SDPA at N = 16641,
# in one table (exported/gpu-check/gpu_check.md). It runs with the machine's own python3 and torch;
# where that machine reaches no package registry, `make gpu-wheels` (here) puts what it lacks in .whl/
# for it to install first.
GPU_PYTHON ?= python3
GPU_SITE   := /tmp/gpu-check-site
gpu-check:
	@if [ -d .whl ]; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade \
		--target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(GPU_SITE) PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m pipeline.benchmarks.gpu_check --out exported/gpu-check

# Wheels (CPython 3.12, x86-64 Linux) of what the GPU check needs beyond torch, onnx, onnxruntime,
# OpenCV, SciPy and PyYAML: the versions this project's venv runs.
GPU_WHEELS := albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 onnxslim==0.1.98
gpu-wheels: install
	rm -rf .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)

clean-run:
	rm -rf exported/default
