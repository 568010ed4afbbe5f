"""Int8 quantization of the post-filter's conv stack with torchao's PT2E flow, and its int8 twin.

The conv stack is captured with ``torch.export`` (batch and frame size dynamic), annotated by
``PostFilterQuantizer`` and prepared with ``prepare_qat_pt2e``; ``convert_pt2e`` then yields the
reference int8 graph (quantize/dequantize around float convs with int8 weights). ``int8_layers``
reads that graph into plain records, and ``Int8ConvStack`` runs the records with the same
arithmetic, so a filter rebuilt from a file computes exactly what the converted graph computes.

The int8 scheme (what the records hold):
    * conv weights: int8, symmetric per output channel in [-127, 127], float32 scales;
    * conv inputs: the first is the decoded 8-bit frame, quantized with the fixed scale 1/255
      (lossless); the others (ReLU outputs) uint8 affine with moving-average min/max observers;
    * the last conv's output (the residual correction): int8 affine;
    * biases: float32.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.export import Dim, export
from torchao.quantization.pt2e import (
    FusedMovingAvgObsFakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    allow_exported_model_train_eval,
)
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
)

from src.modules.postfilter.network import residual_filter

CONV = torch.ops.aten.conv2d.default
RELU = torch.ops.aten.relu.default
_DTYPES = {"uint8": torch.uint8, "int8": torch.int8}


class PostFilterQuantizer(Quantizer):
    """PT2E quantizer of a chain of 2-D convs (with ReLUs between them); see the module doc.

    Args:
        averaging_constant: Moving-average constant of the min/max observers (per step).
        input_scale: Fixed scale of the first conv's input (1/255: 8-bit frames in [0, 1]).
    """

    def __init__(self, averaging_constant: float = 0.01, input_scale: float = 1.0 / 255.0) -> None:
        super().__init__()
        self.averaging_constant = float(averaging_constant)
        self.input_scale = float(input_scale)

    def config(self) -> dict[str, float]:
        """Constructor arguments (kept in checkpoints to rebuild the prepared graph)."""
        return {"averaging_constant": self.averaging_constant, "input_scale": self.input_scale}

    def _observed(self, dtype: torch.dtype, lo: int, hi: int) -> QuantizationSpec:
        observer = MovingAverageMinMaxObserver.with_args(averaging_constant=self.averaging_constant)
        return QuantizationSpec(
            dtype=dtype,
            quant_min=lo,
            quant_max=hi,
            qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(observer=observer),
        )

    def _weight(self) -> QuantizationSpec:
        observer = MovingAveragePerChannelMinMaxObserver.with_args(averaging_constant=self.averaging_constant)
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(observer=observer),
        )

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        convs = [n for n in model.graph.nodes if n.op == "call_function" and n.target == CONV]
        first_input = FixedQParamsQuantizationSpec(
            dtype=torch.uint8, scale=self.input_scale, zero_point=0, quant_min=0, quant_max=255,
            qscheme=torch.per_tensor_affine,
        )  # fmt: skip
        for i, conv in enumerate(convs):
            act = first_input if i == 0 else self._observed(torch.uint8, 0, 255)
            out = self._observed(torch.int8, -128, 127) if i == len(convs) - 1 else None
            conv.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={conv.args[0]: act, conv.args[1]: self._weight()}, output_qspec=out, _annotated=True
            )
        return model

    def validate(self, model: fx.GraphModule) -> None:
        pass


def prepare_qat(body: nn.Module, in_channels: int, quantizer: PostFilterQuantizer) -> fx.GraphModule:
    """Export the conv stack (dynamic batch and size) and insert fake-quantize modules.

    The prepared graph keeps the stack's parameter objects and names (``0.weight``, ...), so the
    optimizer and a float checkpoint's weights stay valid; the fake-quantize modules add buffers.

    Args:
        body: The conv stack, ``(batch, in_channels, h, w)`` → same.
        in_channels: Its input channels.
        quantizer: The annotation scheme.

    Returns:
        The prepared ``GraphModule``, fake quantization and observers *enabled*.
    """
    example = torch.zeros(2, in_channels, 16, 16, device=next(body.parameters()).device)
    dynamic = ({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},)
    graph = export(body, (example,), dynamic_shapes=dynamic).module()
    prepared = prepare_qat_pt2e(graph, quantizer)
    # Lightning switches train/eval on every module; the graph has no dropout or batch norm, so
    # the switch changes nothing in it (observers are switched explicitly, see set_quantization).
    allow_exported_model_train_eval(prepared)
    _materialize(prepared, example)
    return prepared


@torch.no_grad()
def _materialize(prepared: fx.GraphModule, example: torch.Tensor) -> None:
    """Give every fake-quantizer buffer its final shape, holding "not observed yet" values.

    Per-channel fake quantizers size their scale, zero point and min/max buffers on their first
    call. Doing that here — observers off, so min/max become ±inf ("unobserved") — keeps the
    buffer shapes fixed for the whole run: a checkpoint from any phase loads into a freshly
    prepared graph, and weight averaging can copy buffers one to one.
    """
    set_quantization(prepared, fake_quant=False, observe=False)
    prepared(example)
    for fq in fake_quantizers(prepared):
        if isinstance(fq, FusedMovingAvgObsFakeQuantize):
            fq.scale.fill_(1.0)  # the first call leaves them uninitialised
            fq.zero_point.fill_(0)
    set_quantization(prepared, fake_quant=True, observe=True)


def fake_quantizers(module: nn.Module) -> list[FakeQuantizeBase]:
    """Every fake-quantize module inside ``module``."""
    return [m for m in module.modules() if isinstance(m, FakeQuantizeBase)]


def set_quantization(module: nn.Module, fake_quant: bool, observe: bool) -> None:
    """Switch fake quantization and observer updates of every fake quantizer in ``module``."""
    for fq in fake_quantizers(module):
        fq.enable_fake_quant(fake_quant)
        fq.enable_observer(observe)


def quantization_state(module: nn.Module) -> tuple[bool, bool]:
    """(fake quantization on, observers on) — on if any fake quantizer has it on."""
    fqs = fake_quantizers(module)
    return any(bool(fq.fake_quant_enabled[0]) for fq in fqs), any(bool(fq.observer_enabled[0]) for fq in fqs)


def convert(prepared: fx.GraphModule) -> fx.GraphModule:
    """The reference int8 graph of a prepared stack (``convert_pt2e`` on a copy)."""
    return convert_pt2e(copy.deepcopy(prepared))


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization: ``q = clamp(round(x / scale) + zero_point, lo, hi)``."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    dtype: str

    @classmethod
    def from_node(cls, node: fx.Node) -> QParams:
        """From a ``quantize_per_tensor``/``dequantize_per_tensor`` node's arguments."""
        _, scale, zp, lo, hi, dtype = node.args[:6]
        return cls(float(scale), int(zp), int(lo), int(hi), str(dtype).removeprefix("torch."))

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize and dequantize ``x`` (the arithmetic of PyTorch's quantized_decomposed ops)."""
        q = torch.clamp(torch.round(x * (1.0 / self.scale)) + self.zero_point, self.quant_min, self.quant_max)
        return (q.to(_DTYPES[self.dtype]).to(torch.float32) - self.zero_point) * self.scale


@dataclass(frozen=True)
class Int8Conv:
    """One quantized conv of the stack.

    Attributes:
        weight: ``(out, in, k, k)`` int8.
        weight_scale: ``(out,)`` float32 per-channel scales.
        weight_zero_point: ``(out,)`` int64 (zeros for the symmetric scheme).
        bias: ``(out,)`` float32.
        padding: Conv padding (pixels, per side).
        input_q: Quantization of the conv's input.
        relu: Whether a ReLU follows.
        output_q: Quantization of the output (the last conv only).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor
    padding: tuple[int, int]
    input_q: QParams
    relu: bool
    output_q: QParams | None

    def dequantized_weight(self) -> torch.Tensor:
        zp, scale = self.weight_zero_point.view(-1, 1, 1, 1), self.weight_scale.view(-1, 1, 1, 1)
        return (self.weight.to(torch.float32) - zp) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(self.input_q.fake_quant(x), self.dequantized_weight(), self.bias, 1, list(self.padding))
        if self.relu:
            x = torch.relu(x)
        return self.output_q.fake_quant(x) if self.output_q is not None else x

    def meta(self) -> dict[str, Any]:
        """JSON-able description (the arrays go separately)."""
        return {
            "padding": list(self.padding),
            "relu": self.relu,
            "input_q": asdict(self.input_q),
            "output_q": None if self.output_q is None else asdict(self.output_q),
        }


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), gm)


def _single_user(node: fx.Node, target: Any) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].target == target else None


def int8_layers(converted: fx.GraphModule) -> list[Int8Conv]:
    """Read a converted conv stack (``convert``) into ``Int8Conv`` records, in order.

    Raises:
        ValueError: The graph is not a chain of quantized convs of the expected pattern.
    """
    qd = torch.ops.quantized_decomposed
    layers = []
    for conv in (n for n in converted.graph.nodes if n.op == "call_function" and n.target == CONV):
        act, weight, bias = conv.args[:3]
        if act.target != qd.dequantize_per_tensor.default or weight.target != qd.dequantize_per_channel.default:
            raise ValueError(f"{conv.name}: input or weight is not quantized ({act.target}, {weight.target})")
        w_int8, w_scale, w_zp = (_attr(converted, a.target) for a in weight.args[:3])
        relu = _single_user(conv, RELU)
        tail = relu or conv
        q_out = _single_user(tail, qd.quantize_per_tensor.default)
        is_last = not any(u.target == CONV for u in _downstream(tail))
        layers.append(
            Int8Conv(
                weight=w_int8.detach().clone(),
                weight_scale=w_scale.detach().to(torch.float32).clone(),
                weight_zero_point=w_zp.detach().to(torch.int64).clone(),
                bias=_attr(converted, bias.target).detach().to(torch.float32).clone(),
                padding=tuple(int(p) for p in conv.args[4]),
                input_q=QParams.from_node(act),
                relu=relu is not None,
                output_q=QParams.from_node(q_out) if (is_last and q_out is not None) else None,
            )
        )
    if not layers:
        raise ValueError("the converted graph has no quantized conv")
    return layers


def _downstream(node: fx.Node) -> list[fx.Node]:
    seen, todo = [], list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.append(n)
            todo.extend(n.users)
    return seen


class Int8ConvStack(nn.Module):
    """The conv stack computed from ``Int8Conv`` records (int8 weights dequantized on the fly).

    Shape:
        ``(batch, in_channels, h, w)`` → same.
    """

    def __init__(self, layers: list[Int8Conv]) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.forward(x)
        return x


class Int8PostFilter(nn.Module):
    """The post-filter rebuilt from int8 records: ``frame + shuffle(int8 stack(unshuffle(frame)))``.

    Args:
        layers: The quantized convs (from ``int8_layers`` or an artifact file).
        unshuffle: PixelUnshuffle factor of the filter.

    Shape:
        ``(batch, channels, H, W)`` in [0, 1] → same shape (not clamped).
    """

    def __init__(self, layers: list[Int8Conv], unshuffle: int) -> None:
        super().__init__()
        self.stack = Int8ConvStack(layers)
        self.factor = unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_filter(x, self.stack, self.factor)


def observed(module: nn.Module) -> bool:
    """Whether every observing fake quantizer in ``module`` has seen data (finite min/max)."""
    for fq in fake_quantizers(module):
        obs = getattr(fq, "activation_post_process", None)
        min_val = getattr(obs, "min_val", None)
        if min_val is not None and (min_val.numel() == 0 or not torch.isfinite(min_val).all()):
            return False
    return True
