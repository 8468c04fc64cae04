# One-command GPU runs that produce deployable engines:
#   docker build -t distill-deploy .
#   docker run --gpus all --rm -v "$PWD/exported:/workspace/distill-deploy/exported" distill-deploy
# The base image carries CUDA 13.0, cuDNN and TensorRT 10.13.3 (Python bindings included); every
# CUDA library here is CUDA 13: torch from PyPI (cu130), onnxruntime-gpu 1.31.1 (CUDA 13 build).
# The pins are one table (docs/deployment.md "Docker"; tests/test_dockerfile.py checks they agree with
# pyproject.toml's gpu extra). Rebuild engines whenever they change: engines are not portable.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends make python3-venv \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/distill-deploy
COPY pyproject.toml README.md Makefile ./
COPY pipeline ./pipeline
COPY stages ./stages
COPY configs ./configs

# The Makefile's install (venv + `pip install -e .`), with the image's TensorRT visible
# (--system-site-packages) and the CUDA build of ONNX Runtime in place of the CPU one: both wheels
# provide the same `onnxruntime` module, so the CPU one is removed first. Unlike `make install`, pip
# byte-compiles here: the image is built once and its containers start many times.
RUN python3 -m venv --system-site-packages .venv \
 && .venv/bin/pip install --upgrade pip \
 && .venv/bin/pip install -e '.[dev]' \
 && .venv/bin/pip uninstall -y onnxruntime \
 && .venv/bin/pip install 'onnxruntime-gpu==1.31.1' \
 && touch .venv/.installed-stamp

VOLUME ["/workspace/distill-deploy/exported"]
# Same as `make run`; pass another config or overrides with e.g. `make run CONFIG=configs/x.yaml ARGS="run.device=cuda"`.
CMD ["make", "run"]
