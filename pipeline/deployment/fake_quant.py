"""Quantization-aware training: fake quantization on the student's convolutions, matching the
deployment recipe, and the student's export as a Q/DQ ONNX model of exactly the graph trained.

Every convolution but the classifier (kept in float, as in the post-training recipe) reads a
per-tensor quantized input (quantized by itself, or already by the unit before it: one quantizer
per tensor) and quantizes its weight per output channel, symmetric S8 (7-bit range where the recipe
asks for it), and its bias to INT32. Activations are U8 asymmetric for ONNX Runtime on CPU or S8
symmetric for TensorRT. A batch norm right after a convolution is folded into that convolution's
weight before the weight is quantized, with its running statistics frozen (Jacob et al., 2018):
what trains is what deploys, where BN is folded before INT8.

Each quantizer computes what ONNX QuantizeLinear then DequantizeLinear compute, to the bit
(:func:`quantize_dequantize`, straight-through gradients), and is exported through PyTorch's own
ops (``torch.fake_quantize_per_tensor_affine`` and ``..._per_channel_affine``), which both
``torch.onnx`` exporters turn into QuantizeLinear / DequantizeLinear: the Q/DQ ONNX model is the
trained graph, not a second quantization of it. NVIDIA Model Optimizer and torchao were the
alternatives; each is a large dependency for what two core ops do here, and torch.ao's eager and FX
QAT flows are deprecated.

The student keeps its modules and parameter names (conv and batch-norm classes are swapped in
place, as Model Optimizer does), so the quantizers' buffers are the only new state and
:func:`strip_quantizers` returns exactly the plain student's state dict.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from pipeline.deployment.export import conv_bn_pairs
from pipeline.models.backbones import ResNetBackbone

QUANTIZER_NAMES = ("input_quantizer", "output_quantizer")  # the attributes prepare_qat adds
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_BLOCKS_ENDING_IN_AN_ADD = (BasicBlock, Bottleneck)  # their last conv{i} feeds the residual sum


def quantize_dequantize(x: Tensor, scale: Tensor | float, zero_point: int, low: int, high: int) -> Tensor:
    """ONNX QuantizeLinear then DequantizeLinear: ``(clamp(round(x / scale) + zero_point) - zero_point)
    * scale``, rounding half to even; ``scale`` a number or one per channel of dim 0. The gradient is
    straight-through where the value is inside the integer range and zero outside, as
    ``torch.fake_quantize_*``'s.

    Not ``torch.fake_quantize_*`` itself: they multiply by ``1 / scale`` (float32), which rounds a
    value a hair past a rounding midpoint the other way from ONNX's division. The few codes that
    differ in early layers compound through the network into a measurably different model (0.3 %
    of pixels and 0.3 mIoU on a trained student), and QAT would fit the weights to that model
    rather than to the one ONNX Runtime runs. Under ``torch.onnx.export`` the torch ops are used, as
    the exporters turn them into Q/DQ nodes.
    """
    per_channel = isinstance(scale, Tensor) and scale.ndim == 1
    if torch.onnx.is_in_onnx_export():
        if not isinstance(scale, Tensor):
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, low, high)
        zeros = torch.full(scale.shape, zero_point, dtype=torch.int32, device=x.device)
        if per_channel:
            return torch.fake_quantize_per_channel_affine(x, scale, zeros, 0, low, high)
        return torch.fake_quantize_per_tensor_affine(x, scale, zeros, low, high)
    if per_channel:
        scale = scale.reshape(-1, *([1] * (x.ndim - 1)))
    code = torch.round(x / scale) + zero_point
    dequantized = (code.clamp(low, high) - zero_point) * scale
    inside = (code >= low) & (code <= high)
    return torch.where(inside, x + (dequantized - x).detach(), dequantized.detach())


def is_quantizer_key(key: str) -> bool:
    return any(part in QUANTIZER_NAMES for part in key.split("."))


@dataclass(frozen=True)
class FakeQuantScheme:
    """What the fake quantizers simulate: the deployment recipe's INT8 formats."""

    signed_activations: bool  # S8 symmetric (TensorRT); U8 asymmetric (ONNX Runtime on CPU) otherwise
    weight_bits: int = 8  # 7 where ONNX Runtime's VNNI-less x86 kernels need 7-bit weights
    per_channel_weights: bool = True  # one weight scale per output channel, else one per convolution
    momentum: float = 0.01  # of the activation ranges' moving average while training

    @property
    def weight_max(self) -> int:
        return 2 ** (self.weight_bits - 1) - 1


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantization with a range observed from the data: the first batch's min/max,
    then a moving average while training; fixed in eval mode."""

    def __init__(self, scheme: FakeQuantScheme) -> None:
        super().__init__()
        self.scheme = scheme
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))
        self.frozen: tuple[float, int] | None = None  # (scale, zero point) as constants, for export

    def observe(self, x: Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if not bool(self.observed):
            self.low.copy_(low)
            self.high.copy_(high)
            self.observed.fill_(True)
        else:
            m = self.scheme.momentum
            self.low.mul_(1 - m).add_(m * low)
            self.high.mul_(1 - m).add_(m * high)

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the current range, as ONNX Runtime computes them for its recipe."""
        low, high = min(float(self.low), 0.0), max(float(self.high), 0.0)  # zero must be exact
        if self.scheme.signed_activations:
            return max(abs(low), high, 1e-8) / 127.0, 0
        scale = max(high - low, 1e-8) / 255.0
        return scale, int(min(max(round(-low / scale), 0), 255))

    def freeze(self) -> None:
        self.frozen = self.qparams()

    def scale(self) -> float:
        """The scale the last forward used (the frozen one once frozen)."""
        return (self.frozen or self.qparams())[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen is not None:  # constants: nothing data-dependent for the exporter to trace
            scale, zero_point = self.frozen
        else:
            if self.training:
                self.observe(x)
            elif not bool(self.observed):
                raise RuntimeError("activation quantizer has no range yet: calibrate (calibrate_ranges) before eval")
            scale, zero_point = self.qparams()
        low, high = (-128, 127) if self.scheme.signed_activations else (0, 255)
        return quantize_dequantize(x, scale, zero_point, low, high)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A batch norm folded into the convolution before it (see :class:`QuantConv2d`): passes its
    input through; its parameters and frozen statistics live on, read by that convolution."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class QuantConv2d(nn.Conv2d):
    """A Conv2d (class swapped in place by :func:`prepare_qat`) that fake-quantizes its input (unless
    the module it reads from quantized it already), its BN-folded weight, its bias to INT32 at input
    scale x weight scale (as ONNX Runtime's integer convolution adds it: its graph optimiser
    quantizes a float bias so) and, when no activation follows it (a projection before a residual
    sum, a branch before a concatenation), its output."""

    input_quantizer: ActivationQuantizer | None  # None where the input is already quantized upstream
    input_range: list[ActivationQuantizer]  # the quantizer that set the input's scale: its own or upstream
    output_quantizer: ActivationQuantizer | None
    folded_bn: list[nn.BatchNorm2d]  # a list, so the batch norm is not registered twice
    weight_max: int
    per_channel_weights: bool

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias with the following batch norm folded in (running statistics frozen)."""
        if not self.folded_bn:
            return self.weight, self.bias
        bn = self.folded_bn[0]
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * factor
        if self.bias is not None:
            bias = bias + self.bias * factor
        return self.weight * factor.reshape(-1, 1, 1, 1), bias

    def weight_scale(self, weight: Tensor) -> Tensor:
        """Symmetric, per output channel (or one for the whole weight): the largest magnitude maps
        to ``weight_max``."""
        frozen = getattr(self, "frozen_weight_scale", None)
        if frozen is not None:  # a constant initializer in the ONNX graph, as TensorRT requires
            return frozen
        magnitude = weight.detach().abs()
        peak = magnitude.amax(dim=(1, 2, 3)) if self.per_channel_weights else magnitude.amax()
        return peak.clamp_min(1e-12) / self.weight_max

    def quantized_bias(self, bias: Tensor, weight_scale: Tensor) -> Tensor:
        """``bias`` on the INT32 grid of input scale x weight scale (per output channel or one)."""
        return quantize_dequantize(bias, self.input_range[0].scale() * weight_scale, 0, -2**31, 2**31 - 1)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.folded()
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        weight_scale = self.weight_scale(weight)
        weight = quantize_dequantize(weight, weight_scale, 0, -128, 127)
        if bias is not None and not torch.onnx.is_in_onnx_export():  # exported: already on the grid (export_ready)
            bias = self.quantized_bias(bias, weight_scale)
        y = self._conv_forward(x, weight, bias)
        return y if self.output_quantizer is None else self.output_quantizer(y)


class QuantReLU(nn.ReLU):
    """A ReLU after a quantized convolution that fake-quantizes its output, so ONNX Runtime runs the
    convolution, its batch norm and this activation as one integer convolution."""

    output_quantizer: ActivationQuantizer

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quantizer(super().forward(x))


class QuantReLU6(nn.ReLU6):
    """:class:`QuantReLU` for ReLU6 (MobileNetV2)."""

    output_quantizer: ActivationQuantizer

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quantizer(super().forward(x))


_QUANT_ACTIVATION = {nn.ReLU: QuantReLU, nn.ReLU6: QuantReLU6}


_SHARED = "shared"  # an activation module a ResNet block applies more than once: one range cannot fit both


def _what_follows(model: nn.Module) -> dict[int, nn.Module | str | None]:
    """For each convolution (by id) in a Sequential or a ResNet block: the activation module applied to
    its (batch-normed) output, None when its output goes on un-activated, or :data:`_SHARED`."""
    follows: dict[int, nn.Module | str | None] = {}
    for owner in model.modules():
        if isinstance(owner, nn.Sequential):
            children = list(owner.children())
            for i, child in enumerate(children):
                if isinstance(child, nn.Conv2d):
                    rest = [c for c in children[i + 1:] if not isinstance(c, nn.BatchNorm2d)][:1]
                    follows[id(child)] = rest[0] if rest and type(rest[0]) in _QUANT_ACTIVATION else None
        elif isinstance(owner, (*_BLOCKS_ENDING_IN_AN_ADD, ResNetBackbone)):
            convs = [getattr(owner, f"conv{i}") for i in (1, 2, 3) if hasattr(owner, f"conv{i}")]
            for conv in convs:
                last = conv is convs[-1] and isinstance(owner, _BLOCKS_ENDING_IN_AN_ADD)
                follows[id(conv)] = None if last else _SHARED
    return follows


_PASS_THROUGH = (nn.BatchNorm2d, nn.Identity, nn.Dropout)  # folded or no-ops at inference


def _input_producers(model: nn.Module) -> dict[int, nn.Module]:
    """For each convolution (by id): the module whose output it reads (through batch norms and
    no-ops), from an FX trace of the plain model; empty where the model cannot be traced."""
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: fall back to a quantizer per convolution
        warnings.warn(f"prepare_qat: {type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: "
                      f"{exc}); every convolution quantizes its own input, and ONNX Runtime merges the resulting "
                      f"back-to-back Q/DQ pairs, so its INT8 model can differ slightly from the trained one")
        return {}
    modules = dict(traced.named_modules())
    producers: dict[int, nn.Module] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        source = node.args[0]
        while source.op == "call_module" and isinstance(modules[source.target], _PASS_THROUGH):
            source = source.args[0]
        if source.op == "call_module":
            producers[id(modules[node.target])] = modules[source.target]
    return producers


def prepare_qat(model: nn.Module, scheme: FakeQuantScheme, float_modules: Iterable[nn.Module] = ()) -> nn.Module:
    """Make ``model``'s convolutions quantization-aware, in place (``float_modules`` stay float);
    returns it. Parameter names and values are unchanged; the quantizers' buffers are new state.

    Each tensor is quantized once: a convolution reading the output of a quantized activation or
    of a convolution with an output quantizer does not quantize it again. Two quantizers in a row
    would export as back-to-back Q/DQ pairs, which ONNX Runtime's optimiser merges into one pair
    with a range of its own: a different model from the one trained (0.1-0.4 mIoU on a student)."""
    keep_float = {id(m) for m in float_modules}
    following_bn = {id(getattr(owner, conv)): getattr(owner, bn) for owner, conv, bn in conv_bn_pairs(model)}
    follows = _what_follows(model)
    producers = _input_producers(model)
    device = next(model.parameters()).device
    for module in list(model.modules()):
        if type(module) is not nn.Conv2d or id(module) in keep_float:
            continue
        bn, activation = following_bn.get(id(module)), follows.get(id(module))
        module.__class__ = QuantConv2d
        module.input_quantizer = ActivationQuantizer(scheme).to(device)
        module.output_quantizer = None
        module.folded_bn = [] if bn is None else [bn]
        module.weight_max = scheme.weight_max
        module.per_channel_weights = scheme.per_channel_weights
        if bn is not None:
            bn.__class__ = FoldedBatchNorm2d
        if activation is None and id(module) in follows:
            module.output_quantizer = ActivationQuantizer(scheme).to(device)
        elif isinstance(activation, nn.Module) and type(activation) in _QUANT_ACTIVATION:
            activation.__class__ = _QUANT_ACTIVATION[type(activation)]
            activation.output_quantizer = ActivationQuantizer(scheme).to(device)
    for conv in quant_convs(model):
        upstream = getattr(producers.get(id(conv)), "output_quantizer", None)
        if isinstance(upstream, ActivationQuantizer):
            conv.input_quantizer = None
        conv.input_range = [upstream if conv.input_quantizer is None else conv.input_quantizer]
    return model


def quant_convs(model: nn.Module) -> list[QuantConv2d]:
    return [m for m in model.modules() if isinstance(m, QuantConv2d)]


def quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


@torch.no_grad()
def calibrate_ranges(model: nn.Module, batches: Iterable[Tensor]) -> None:
    """Initial activation ranges from calibration images: min/max over the first batch, then the
    moving average (observation without training: dropout off, batch norms frozen anyway)."""
    training = model.training
    model.eval()
    for quantizer in quantizers(model):
        quantizer.train()
    for images in batches:
        model(images)
    model.train(training)


def strip_quantizers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The plain student's state dict: the quantizers' buffers left out."""
    return {key: value for key, value in state.items() if not is_quantizer_key(key)}


def quantizer_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Only the quantizers' buffers (their ranges)."""
    return {key: value for key, value in state.items() if is_quantizer_key(key)}


@torch.no_grad()
def export_ready(model: nn.Module, signed_activations: bool | None = None) -> nn.Module:
    """An eval-mode copy to export: each batch norm folded into its convolution's weight for good,
    each range frozen into constants (re-expressed as S8 symmetric or U8 asymmetric when
    ``signed_activations`` is given), so the exporter sees fixed Q/DQ parameters."""
    ready = copy.deepcopy(model).cpu().eval()
    for conv in quant_convs(ready):
        weight, bias = conv.folded()
        conv.weight = nn.Parameter(weight.detach().clone())
        conv.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        conv.folded_bn = []
        conv.register_buffer("frozen_weight_scale", conv.weight_scale(conv.weight))
    for quantizer in quantizers(ready):
        if signed_activations is not None:
            quantizer.scheme = replace(quantizer.scheme, signed_activations=signed_activations)
        quantizer.freeze()
    for conv in quant_convs(ready):
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.quantized_bias(conv.bias, conv.frozen_weight_scale))
    for owner in list(ready.modules()):
        for name, child in owner.named_children():
            if isinstance(child, FoldedBatchNorm2d):
                setattr(owner, name, nn.Identity())
            elif isinstance(child, (QuantReLU, QuantReLU6)):
                # Plain activation + quantizer: the exporter's ReLU6-as-clamp rewrite sees a plain ReLU6.
                plain = nn.ReLU() if isinstance(child, QuantReLU) else nn.ReLU6()
                setattr(owner, name, nn.Sequential(plain, child.output_quantizer))
    return ready


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace every QuantizeLinear of a constant (the exported weights) by its INT8 result, stored as
    an initializer, in place; returns how many. The graph then has the form post-training Q/DQ models
    have (DequantizeLinear of an INT8 initializer into each Conv), which ONNX Runtime fuses into
    integer convolutions and TensorRT requires, and the file stores weights in 8 bits."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constant_nodes = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            constant_nodes[node.output[0]] = node
    folded, dropped = 0, []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(name in constants for name in node.input[:3]):
            continue
        x, scale, zero_point = (constants[name] for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and x.ndim > 1:  # per channel: broadcast along the axis
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        info = np.iinfo(zero_point.dtype)
        # ONNX QuantizeLinear rounds half to even, as numpy.rint does.
        q = np.clip(np.rint(x / scale) + zero_point.astype(np.int32), info.min, info.max).astype(zero_point.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        dropped.append(node)
        folded += 1
    for node in dropped:
        graph.node.remove(node)
    # Constants only the folded Q nodes read are dead now.
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for name, node in constant_nodes.items():
        if name not in used:
            graph.node.remove(node)
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return folded
