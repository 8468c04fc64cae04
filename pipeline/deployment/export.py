"""PyTorch -> ONNX export, the careful way.

One file per export: eval mode, fixed names (``images`` in; ``logits`` out, plus ``labels`` when
argmax is asked for), an explicit exporter and opset, dynamic batch/height/width, weights inside
the file (no ``.data`` side file, which ONNX Runtime's quantisation pre-processing cannot read),
a full ``onnx.checker`` pass and provenance in ``metadata_props``. The file appears at its
destination only when all of that succeeded.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

from pipeline.artifacts import atomic_path
from pipeline.models.backbones import ResNetBackbone
from pipeline.runtime.torch_predictor import as_logits

log = logging.getLogger(__name__)

INPUT_NAME = "images"
LOGITS_NAME = "logits"
LABELS_NAME = "labels"
# Keys export_onnx writes itself; caller metadata with the same key is overridden.
RESERVED_KEYS = ("exporter", "opset", "torch_version", "onnx_version", "dynamic", "argmax")


class _Clamp(nn.Module):
    """``nn.Hardtanh`` (so ``nn.ReLU6``) as ``torch.clamp``: the same values and the same ONNX Clip node,
    but torch.export lowers hardtanh through clamp's Python reference with symbolic shapes, which made
    up a third of a dynamic MobileNetV2 export's time (docs/BENCHMARKS.md, first section)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.low, self.high)


def _hardtanh_as_clamp(module: nn.Module) -> None:
    """Replace every ``nn.Hardtanh`` below ``module`` (in place) with the equivalent :class:`_Clamp`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Hardtanh):
            setattr(module, name, _Clamp(child.min_val, child.max_val))
        else:
            _hardtanh_as_clamp(child)


# Modules whose forward feeds conv{i} straight into bn{i} (torchvision's ResNet blocks, our ResNet stem).
_CONV_BN_ATTRIBUTES = (BasicBlock, Bottleneck, ResNetBackbone)


def conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(owner, conv attribute, bn attribute)`` for every BatchNorm2d (with running statistics) that
    directly follows a Conv2d below ``module``: adjacent children of an ``nn.Sequential`` and the
    ``conv{i}``/``bn{i}`` attributes of :data:`_CONV_BN_ATTRIBUTES`; any other batch norm is not one."""
    candidates: list[tuple[nn.Module, str, str]] = []
    for owner in module.modules():
        if isinstance(owner, nn.Sequential):
            names = list(owner._modules)
            candidates += [(owner, conv, bn) for conv, bn in zip(names, names[1:])]
        elif isinstance(owner, _CONV_BN_ATTRIBUTES):
            candidates += [(owner, f"conv{i}", f"bn{i}") for i in (1, 2, 3)
                           if hasattr(owner, f"conv{i}") and hasattr(owner, f"bn{i}")]
    return [(owner, conv, bn) for owner, conv, bn in candidates
            if isinstance(getattr(owner, conv), nn.Conv2d) and isinstance(getattr(owner, bn), nn.BatchNorm2d)
            and getattr(owner, bn).track_running_stats]


def _fold_batchnorm(module: nn.Module) -> None:
    """Fold every batch norm of :func:`conv_bn_pairs` into its conv, in place (eval mode).

    The ONNX file is the same (the exporter's optimizer folds them into the convs anyway, to the same
    values) but torch.export no longer traces the batch norms under symbolic shapes: a dynamic
    export of the MobileNetV2 student takes about a third less time (docs/BENCHMARKS.md, "Export").
    """
    for owner, conv, bn in conv_bn_pairs(module):
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())


class _ExportHead(nn.Module):
    """Normalises the model's output to one logits tensor and optionally adds per-pixel labels."""

    def __init__(self, model: nn.Module, argmax: bool) -> None:
        super().__init__()
        self.model = model
        self.argmax = argmax

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = as_logits(self.model(images))
        if self.argmax:
            return logits, logits.argmax(1)  # int64 (B, H, W)
        return logits


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    example_shape: tuple[int, int, int, int],
    opset: int,
    dynamic: bool,
    argmax: bool,
    metadata: Mapping[str, Any],
    exporter: str = "auto",
) -> Path:
    """Export ``model`` to a single checked ONNX file at ``path`` and return ``path``.

    Tries the dynamo exporter first and falls back to the TorchScript exporter if it fails; the
    one used is recorded in metadata ``exporter``. ``metadata`` values that are not strings are
    stored as JSON. ``opset`` is the opset the file really has: the dynamo exporter builds at
    opset >= 18 and keeps 18 when it cannot convert down, and then ``opset_requested`` is added.
    ``exporter="torchscript"`` skips the dynamo attempt (for graphs it is known not to trace).
    """
    if exporter not in ("auto", "torchscript"):
        raise ValueError(f"exporter must be 'auto' or 'torchscript', got {exporter!r}")
    path = Path(path)
    batch, channels, height, width = example_shape
    if dynamic:
        if height < 2 or width < 2:
            raise ValueError(f"dynamic export needs example height/width >= 2, got {example_shape}")
        # torch.export specialises a size-1 dimension to the constant 1; a batch of 2 keeps it symbolic.
        batch = max(batch, 2)
    # Export a CPU copy: the caller's model keeps its device and train/eval mode.
    module = copy.deepcopy(model).cpu().eval()
    _hardtanh_as_clamp(module)
    _fold_batchnorm(module)
    example = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        wrap = argmax or not isinstance(module(example), torch.Tensor)
    # Wrapping prefixes initializer names with "model."; only wrap when the graph needs it.
    net = _ExportHead(module, argmax).eval() if wrap else module
    output_names = [LOGITS_NAME, LABELS_NAME] if argmax else [LOGITS_NAME]

    with atomic_path(path) as tmp:
        side_file = tmp.with_name(tmp.name + ".data")
        try:
            used, fallback_reason = "torchscript", None
            if exporter == "auto":
                try:
                    _export_dynamo(net, example, tmp, opset=opset, dynamic=dynamic, output_names=output_names)
                    used = "dynamo"
                except Exception as exc:  # noqa: BLE001 - any dynamo failure means: try the other exporter
                    fallback_reason = _first_line(exc)
                    log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter",
                                fallback_reason)
            if used == "torchscript":
                _export_torchscript(net, example, tmp, opset=opset, dynamic=dynamic, output_names=output_names)

            proto = onnx.load(str(tmp))
            actual_opset = _default_opset(proto)
            props = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
            props.update(
                exporter=used,
                opset=str(actual_opset),
                torch_version=torch.__version__,
                onnx_version=onnx.__version__,
                dynamic=str(dynamic).lower(),
                argmax=str(argmax).lower(),
            )
            if actual_opset != opset:
                log.warning("requested opset %d, exporter produced opset %d", opset, actual_opset)
                props["opset_requested"] = str(opset)
            if fallback_reason:
                props["exporter_fallback_reason"] = fallback_reason
            _set_metadata(proto, props)
            onnx.save_model(proto, str(tmp), save_as_external_data=False)
            # Full check (incl. strict shape inference) on the file, as a consumer would load it.
            onnx.checker.check_model(str(tmp), full_check=True)
        finally:
            side_file.unlink(missing_ok=True)
    return path


def _export_dynamo(
    net: nn.Module, example: torch.Tensor, dst: Path, *, opset: int, dynamic: bool, output_names: list[str]
) -> None:
    dynamic_shapes = None
    if dynamic:
        # Named dims become the ONNX dim_params "batch", "height", "width".
        dims = {
            0: torch.export.Dim("batch", min=1),
            2: torch.export.Dim("height", min=1),
            3: torch.export.Dim("width", min=1),
        }
        dynamic_shapes = (dims,)  # positional form: independent of the forward() argument name
    torch.onnx.export(
        net,
        (example,),
        str(dst),
        dynamo=True,
        external_data=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )


def _export_torchscript(
    net: nn.Module, example: torch.Tensor, dst: Path, *, opset: int, dynamic: bool, output_names: list[str]
) -> None:
    dynamic_axes = None
    if dynamic:
        nchw = {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {INPUT_NAME: nchw, LOGITS_NAME: nchw, LABELS_NAME: {0: "batch", 1: "height", 2: "width"}}
        dynamic_axes = {k: v for k, v in dynamic_axes.items() if k == INPUT_NAME or k in output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter warns it is legacy
        torch.onnx.export(
            net,
            (example,),
            str(dst),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )


def _first_line(exc: BaseException, limit: int = 500) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:limit]


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _set_metadata(proto: onnx.ModelProto, props: Mapping[str, str]) -> None:
    existing = {p.key: p.value for p in proto.metadata_props}
    existing.update(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, existing)


def read_metadata(path: Path) -> dict[str, str]:
    """The file's ``metadata_props`` as a dict (weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def simplify_onnx(src: Path, dst: Path) -> Path:
    """Simplify ``src`` with onnxslim into ``dst`` (may equal ``src``), keeping metadata; checked.

    Whether the simplified file is kept is the caller's decision (it must still pass parity).
    """
    import onnxslim

    src, dst = Path(src), Path(dst)
    original = onnx.load(str(src))
    slim = onnxslim.slim(original)
    if slim is None:  # onnxslim returns None only when it wrote to a path; defensive
        raise RuntimeError(f"onnxslim returned no model for {src}")
    props = {p.key: p.value for p in original.metadata_props}
    props["simplifier"] = f"onnxslim {getattr(onnxslim, '__version__', 'unknown')}"
    _set_metadata(slim, props)
    with atomic_path(dst) as tmp:
        onnx.save_model(slim, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
    return dst


def onnx_initializer_names(path: Path) -> list[str]:
    """Names of every initializer in the file, subgraphs (If/Loop bodies) included.

    The dynamo exporter names initializers after the module's parameter paths, so this list
    shows which modules' weights ended up in the file.
    """
    proto = onnx.load(str(path), load_external_data=False)
    names: list[str] = []
    _collect_initializers(proto.graph, names)
    return names


def _collect_initializers(graph: onnx.GraphProto, names: list[str]) -> None:
    names.extend(init.name for init in graph.initializer)
    names.extend(sparse.values.name for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_initializers(attr.g, names)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _collect_initializers(sub, names)
