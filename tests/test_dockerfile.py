"""The Dockerfile cannot be built here (no Docker engine): check what can be checked without one,
that it copies everything the package needs, installs the way `make install` does, and runs the
command docs/deployment.md documents."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [keyword]]


def test_every_package_and_file_the_install_needs_is_copied_and_exists():
    copied = set()
    for args in instructions("COPY"):
        *sources, _destination = shlex.split(args)
        copied.update(sources)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {pattern.split(".")[0].rstrip("*") for pattern in packages}
    assert top_level <= copied, f"packages not copied into the image: {top_level - copied}"
    assert {"pyproject.toml", "Makefile", "configs"} <= copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


def test_the_image_installs_like_make_install_and_marks_it_done():
    run = " ".join(instructions("RUN"))
    makefile = (ROOT / "Makefile").read_text()
    # The same editable install of the same extra; only pip's flags may differ (the Makefile skips
    # byte-compiling, the image, built once and started many times, keeps it).
    project_install = re.compile(r"pip install (--\S+ )*-e '\.\[dev\]'")
    assert project_install.search(run) and project_install.search(makefile)
    stamp = re.search(r"^STAMP\s*:=\s*\$\(VENV\)/(\S+)", makefile, re.M).group(1)
    assert f"touch .venv/{stamp}" in run, "without the stamp, `make run` would reinstall inside the container"
    assert "--system-site-packages" in run, "the base image's TensorRT must stay importable in the venv"
    assert "onnxruntime-gpu" in run


def test_the_default_command_is_the_readme_one_command_run():
    assert instructions("CMD") == ['["make", "run"]']
    readme = (ROOT / "docs" / "deployment.md").read_text()
    workdir = instructions("WORKDIR")[0].strip()
    assert f"{workdir}/exported" in readme and "docker build -t distill-deploy ." in readme
    assert instructions("VOLUME") == [f'["{workdir}/exported"]']


def pins_in(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(onnxruntime-gpu|tensorrt-cu\d+)==([\w.]+)", text))


def test_dockerfile_readme_and_the_gpu_extra_name_one_set_of_versions_on_one_cuda_major():
    extra = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"])
    readme = (ROOT / "docs" / "deployment.md").read_text()
    pinned = pins_in(extra)
    assert set(pinned) == {"onnxruntime-gpu", "tensorrt-cu13"}, "every GPU package pinned, TensorRT by CUDA major"
    assert pins_in(readme) == pinned
    assert pins_in(DOCKERFILE)["onnxruntime-gpu"] == pinned["onnxruntime-gpu"]
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE, re.M).group(1)
    assert f"`{base}` (TensorRT {pinned['tensorrt-cu13'].rsplit('.', 1)[0]})" in readme
    components = ("| base image |", "| TensorRT (extra) |", "| ONNX Runtime |", "| PyTorch |")
    rows = [line for line in readme.splitlines() if line.startswith(components)]
    assert len(rows) == 4 and {row.rsplit("|", 2)[1].strip() for row in rows} == {"13"}
