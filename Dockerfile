# One-command GPU runs that produce deployable engines:
#   docker build -t distill-deploy .
#   docker run --gpus all --rm -v "$PWD/exported:/workspace/distill-deploy/exported" distill-deploy
# The base image carries CUDA, cuDNN and TensorRT (Python bindings included); pin it here and
# rebuild engines whenever it changes: TensorRT engines are not portable across versions or GPUs.
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
# provide the same `onnxruntime` module, so the CPU one is removed first.
RUN python3 -m venv --system-site-packages .venv \
 && .venv/bin/pip install --upgrade pip \
 && .venv/bin/pip install -e '.[dev]' \
 && .venv/bin/pip uninstall -y onnxruntime \
 && .venv/bin/pip install 'onnxruntime-gpu>=1.20' \
 && touch .venv/.installed-stamp

VOLUME ["/workspace/distill-deploy/exported"]
# Same as `make run`; pass another config or overrides with e.g. `make run CONFIG=configs/x.yaml ARGS="run.device=cuda"`.
CMD ["make", "run"]
