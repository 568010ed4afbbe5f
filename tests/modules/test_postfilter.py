"""The post-filter network, its int8 twin and the restoration loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from src.core.errors import ConfigError
from src.modules.postfilter.losses import RestorationLoss
from src.modules.postfilter.network import PostFilterCNN, residual_filter
from src.modules.postfilter.quant import (
    Int8PostFilter,
    PostFilterQuantizer,
    convert,
    int8_layers,
    observed,
    prepare_qat,
    quantization_state,
    set_quantization,
)
from tests.video_support import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(n: int = 2, h: int = 24, w: int = 40, seed: int = 0) -> torch.Tensor:
    """8-bit frames in [0, 1], like decoded video."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255.0


def trained_qat_net(steps: int = 15) -> PostFilterCNN:
    torch.manual_seed(0)
    net = PostFilterCNN()
    net.body = prepare_qat(net.body, net.body_channels, PostFilterQuantizer(averaging_constant=0.1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for i in range(steps):
        x = frames(4, 32, 32, seed=i)
        target = (x + 0.05 * torch.sin(20 * x)).clamp(0, 1)
        loss = F.l1_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_default_filter_size_identity_start_and_odd_frames() -> None:
    net = PostFilterCNN()
    assert sum(p.numel() for p in net.parameters()) == 34_700  # in the 10-50 k range of the issue
    x = frames(2, 15, 17)  # not multiples of the unshuffle factor: padded and cropped back
    assert torch.equal(net(x), x)  # the last conv starts at zero: the untrained filter is the identity
    with pytest.raises(ConfigError, match="depth=1"):
        PostFilterCNN(depth=1)


def test_switched_off_fake_quantizers_compute_the_float_network() -> None:
    torch.manual_seed(1)
    net = PostFilterCNN()
    torch.nn.init.normal_(net.body[-1].weight, std=0.05)
    reference = copy.deepcopy(net)
    weight = net.body[0].weight
    net.body = prepare_qat(net.body, net.body_channels, PostFilterQuantizer())
    assert net.body.get_parameter("0.weight") is weight  # same parameters: the optimizer stays valid
    set_quantization(net.body, fake_quant=False, observe=False)
    x = frames(3, 40, 56)
    assert torch.equal(net(x), reference(x))
    assert quantization_state(net.body) == (False, False) and not observed(net.body)
    set_quantization(net.body, fake_quant=True, observe=True)
    assert not torch.equal(net(x), reference(x)) and observed(net.body)


def test_int8_records_reproduce_the_converted_graph_exactly() -> None:
    net = trained_qat_net()
    set_quantization(net.body, fake_quant=True, observe=False)
    converted = convert(net.body)
    layers = int8_layers(converted)
    assert [tuple(layer.weight.shape) for layer in layers] == [(32, 12, 3, 3)] + [(32, 32, 3, 3)] * 3 + [(12, 32, 3, 3)]
    assert all(layer.weight.dtype == torch.int8 and int(layer.weight.abs().max()) <= 127 for layer in layers)
    assert layers[0].input_q.scale == pytest.approx(1 / 255) and layers[0].input_q.zero_point == 0
    assert [layer.relu for layer in layers] == [True] * 4 + [False]
    assert layers[-1].output_q is not None and layers[-1].output_q.dtype == "int8"
    x = frames(3, 48, 64, seed=7)
    inflated = Int8PostFilter(layers, unshuffle=2)
    with torch.no_grad():
        assert torch.equal(inflated(x), residual_filter(x, converted, 2))
        # The fake-quantized training graph agrees with the int8 model to a few output steps.
        assert float((net(x) - inflated(x)).abs().max()) < 4 * layers[-1].output_q.scale


def test_restoration_loss_terms() -> None:
    pred, target = frames(2, 48, 48, seed=1), frames(2, 48, 48, seed=2)
    assert torch.equal(RestorationLoss(l1=1.0)(pred, target), F.l1_loss(pred, target))
    mixed = RestorationLoss(l1=0.5, mse=2.0)(pred, target)
    assert float(mixed) == pytest.approx(0.5 * float(F.l1_loss(pred, target)) + 2.0 * float(F.mse_loss(pred, target)))
    ms = RestorationLoss(l1=0.0, ms_ssim=1.0)
    assert ms.min_size() == 41 and float(ms(target, target)) == pytest.approx(0.0, abs=1e-5)
    assert float(ms(pred, target)) > 0.5
    with pytest.raises(ConfigError, match="needs sides of at least 41"):
        ms(pred[..., :32, :32], target[..., :32, :32])
    with pytest.raises(ConfigError, match="model.loss"):
        RestorationLoss(l1=0.0)
