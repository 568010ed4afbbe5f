"""Ariel networks: the transit fit, graph, Mamba encoder, linear prior, V50, its ablations and the baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.core.errors import ConfigError
from src.modules.ariel.baselines import PolyFitNet, PriorOnlyNet, ResidualMLPNet
from src.modules.ariel.module import ArielRegressor
from src.modules.ariel.parts import GaussianHead, PerBinLinearPrior
from src.modules.ariel.spectral_gnn import SpectralGNNEncoder, TemporalConvEncoder, spectral_edges
from src.modules.ariel.ssm import MambaEncoder, mamba_ssm_available
from src.modules.ariel.transit_fit import TransitWindowFit, fill_nonfinite_bins, window_share
from src.modules.ariel.v50 import ArielV50Net
from tests.conftest import compose_cfg

HOURS, T0, DURATION = 7.5, 3.95, 2.25  # on the fit's default (t0, duration) grid


def synthetic_batch(n: int = 4, steps: int = 60, noise: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Box transits with a linear drift: depth d_i (+ a small slope over the bins), ids 0..n-1."""
    g = torch.Generator().manual_seed(seed)
    times = ((torch.arange(steps) + 0.5) * HOURS / steps).expand(n, -1).double()
    box = window_share(times, torch.full((n,), T0, dtype=torch.float64), torch.full((n,), DURATION).double())
    depth = 0.005 + 0.01 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    target = depth + 1e-4 * torch.linspace(0, 1, 283, dtype=torch.float64)
    drift = 1 + 1e-3 * (times - HOURS / 2)
    flux = 1e4 * drift[..., None] * (1 - target[:, None, :] * box[..., None])
    flux = flux * (1 + noise * torch.randn(flux.shape, generator=g, dtype=torch.float64))
    return {
        "fgs1": flux[..., 0].float(),
        "fgs1_var": torch.ones(n, steps),
        "fgs1_time": times.float(),
        "airs": flux[..., 1:].float(),
        "airs_var": torch.ones(n, steps, 282),
        "airs_time": times.float(),
        "meta": torch.rand(n, 8, generator=g),
        "target": target.float(),
        "planet_id": torch.arange(n),
    }


BANDS = [[2.7, 0.18], [3.3, 0.15]]


def v50(layer_type: str = "gat", mamba: bool = True, graph_layers: int = 1) -> ArielV50Net:
    return ArielV50Net(
        TransitWindowFit(),
        MambaEncoder(3, d_model=16, n_layers=1) if mamba else None,
        TemporalConvEncoder(2, hidden=8, out_features=8),
        SpectralGNNEncoder(dim=16, n_layers=graph_layers, layer_type=layer_type, k=1, bands_um=BANDS),
        GaussianHead(16, hidden=16),
    )


def test_transit_fit_recovers_box_depths_and_its_sigma_is_calibrated() -> None:
    clean = synthetic_batch(4)
    fit = TransitWindowFit(poly_degree=2)(clean)
    assert torch.allclose(fit.t0_h, torch.full((4,), T0)) and torch.allclose(fit.duration_h, torch.full((4,), 2.25))
    torch.testing.assert_close(fit.depth, clean["target"], atol=2e-6, rtol=0)
    noisy = synthetic_batch(64, noise=1e-3, seed=1)
    fit = TransitWindowFit(poly_degree=2)(noisy)
    z = (fit.depth - noisy["target"]) / fit.depth_sigma
    assert abs(float(z.mean())) < 0.05 and 0.9 < float(z.std()) < 1.1  # 18,112 cells


def test_nan_bins_are_filled_from_their_neighbours() -> None:
    x = torch.tensor([[1.0, float("nan"), 3.0, float("nan"), float("nan"), 9.0, float("nan")]])
    torch.testing.assert_close(fill_nonfinite_bins(x), torch.tensor([[1.0, 2.0, 3.0, 6.0, 6.0, 9.0, 9.0]]))
    batch = synthetic_batch(2)
    batch["airs"][:, :, 40] = float("nan")
    fit = TransitWindowFit()(batch)
    assert torch.isfinite(fit.depth).all() and abs(float(fit.depth[0, 41] - batch["target"][0, 41])) < 1e-5


def test_spectral_edges_link_neighbours_and_bands() -> None:
    wl = torch.linspace(1.0, 1.9, 10, dtype=torch.float64)  # 0.1 um apart
    edge_index, attr = spectral_edges(wl, k=1, bands_um=[[1.4, 0.11]])  # band: bins 3, 4, 5
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert len(pairs) == edge_index.shape[1] == 18 + 2  # 9 neighbour pairs x 2, plus 3<->5
    assert (3, 5) in pairs and (5, 3) in pairs and (0, 2) not in pairs
    band = {p: a for p, a in zip(map(tuple, edge_index.T.tolist()), attr.tolist(), strict=True)}
    assert band[(3, 5)] == [2.0, 1.0] and band[(3, 4)] == [1.0, 1.0] and band[(1, 2)] == [1.0, 0.0]
    with pytest.raises(ConfigError, match="molecular band"):
        spectral_edges(wl, k=1, bands_um=[[1.4]])


@pytest.mark.parametrize("layer_type", ["gat", "gcn", "nnconv"])
def test_graph_layers_keep_shapes_and_pass_gradients(layer_type: str) -> None:
    gnn = SpectralGNNEncoder(dim=8, n_layers=2, layer_type=layer_type, k=2, bands_um=BANDS, heads=2)
    x = torch.randn(3, 282, 8, requires_grad=True)
    out = gnn(x)
    out[1].sum().backward()
    assert out.shape == (3, 282, 8) and torch.isfinite(out).all()
    # Graphs of a batch are disjoint: planet 1's output does not depend on planet 0's nodes.
    assert float(x.grad[0].abs().sum()) == 0.0 and float(x.grad[1].abs().sum()) > 0


def test_mamba_encoder_scans_both_ways_and_names_parameters_like_mamba_ssm() -> None:
    torch.manual_seed(0)
    causal = MambaEncoder(2, d_model=8, n_layers=1, bidirectional=False)
    both = MambaEncoder(2, d_model=8, n_layers=1, bidirectional=True)
    x = torch.randn(2, 12, 2)
    y = x.clone()
    y[:, -1] += 1.0  # change only the last step
    assert torch.allclose(causal(x)[:, 0], causal(y)[:, 0])  # a causal scan cannot see it at t=0
    assert not torch.allclose(both(x)[:, 0], both(y)[:, 0])
    names = {k.split("mixer.")[-1] for k in causal.state_dict() if ".mixer." in k}
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                     "dt_proj.bias", "A_log", "D", "out_proj.weight"}  # fmt: skip
    assert causal.resolved_backend(torch.device("cpu")) == "mambapy"
    with pytest.raises(ConfigError, match="backend='fast'"):
        MambaEncoder(2, backend="fast")


@pytest.mark.gpu
def test_mamba_backends_agree_on_identical_weights() -> None:
    if not torch.cuda.is_available() or not mamba_ssm_available():
        pytest.skip("needs a CUDA device and mamba-ssm (pip install -e .[gpu])")
    torch.manual_seed(0)
    enc = MambaEncoder(3, d_model=32, n_layers=2, backend="mambapy").cuda()
    x = torch.randn(4, 64, 3, device="cuda")
    reference = enc(x)
    enc.backend = "mamba_ssm"
    kernels = enc(x)
    torch.testing.assert_close(kernels, reference, atol=1e-4, rtol=1e-3)
    reloaded = MambaEncoder(3, d_model=32, n_layers=2, backend="mamba_ssm").cuda()
    reloaded.load_state_dict(enc.state_dict())  # one checkpoint, either backend
    torch.testing.assert_close(reloaded(x), reference, atol=1e-4, rtol=1e-3)


def test_per_bin_linear_prior_recovers_a_linear_law() -> None:
    x = torch.rand(20, 5, 1, dtype=torch.float64)
    slope = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    y = slope * x[..., 0] + 0.1
    prior = PerBinLinearPrior(5, 1, ridge=0.0)
    prior.fit(x, y)
    torch.testing.assert_close(prior.weight[:, 0], slope.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(prior(x.float()), y.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer_type", ["gat", "nnconv"])
def test_v50_predicts_finite_gaussians_around_its_prior(layer_type: str) -> None:
    torch.manual_seed(0)
    net = v50(layer_type)
    train = synthetic_batch(8, noise=2e-4, seed=2)
    net.fit_training_data([train])
    out = net(synthetic_batch(3, noise=2e-4, seed=3))
    assert out.mu.shape == out.sigma.shape == (3, 283) and bool((out.sigma > 0).all())
    assert out.embedding.shape == (3, net.embedding_features)
    # Before training the head adds nothing: mu is the white-light prior, within 1e-4 of the truth.
    truth = synthetic_batch(3, noise=2e-4, seed=3)["target"]
    assert float((out.mu.detach() - truth).abs().max()) < 1e-4
    with pytest.raises(ConfigError, match="n_meta"):
        net({**train, "meta": torch.zeros(8, 3)})


def test_regressor_learns_on_v50_and_the_mlp() -> None:
    torch.manual_seed(0)
    batch = synthetic_batch(8, noise=2e-4, seed=4)
    for net, loss in ((v50(), "gaussian_nll"), (ResidualMLPNet(n_meta=8, airs_groups=6, n_time=12), "mse")):
        module = ArielRegressor(net, optimizer=lambda params: torch.optim.Adam(params, lr=3e-3), loss=loss)
        module.fit_training_statistics([batch])
        opt = module.hparams.optimizer(params=module.parameters())
        losses = []
        for _ in range(25):
            out = module(batch)
            value = module._loss(out, batch["target"], mse=loss == "mse")
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(float(value))
        assert losses[-1] < losses[0] - 0.1, (type(net).__name__, losses[0], losses[-1])
    assert float(module.naive_sigma) == pytest.approx(float(batch["target"].double().std(unbiased=False)), rel=1e-6)


def test_polyfit_has_no_weights_and_corrects_its_depths() -> None:
    net = PolyFitNet(TransitWindowFit(), correction=True)
    assert not any(p.requires_grad for p in net.parameters())
    train = synthetic_batch(12, noise=1e-4, seed=5)
    net.fit_training_data([train])
    test = synthetic_batch(4, noise=1e-4, seed=6)
    out = net(test)
    assert out.mu.shape == (4, 283) and bool((out.sigma > 0).all())
    z = (out.mu - test["target"]) / out.sigma
    assert float(z.abs().max()) < 6.0


def test_v50_without_mamba_pools_the_fgs1_steps_without_parameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = v50(mamba=False)
    assert net.fgs1_encoder is None and not any("fgs1_encoder" in name for name, _ in net.named_parameters())
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in v50().parameters())
    train = synthetic_batch(8, noise=2e-4, seed=2)
    net.fit_training_data([train])
    fgs1 = net._fgs1_vector(train, net.fit(train))
    assert fgs1.shape == (8, 2 * 3)  # time mean and window mean of (flux, window, time)
    out = net(train)
    assert torch.isfinite(out.mu).all() and bool((out.sigma > 0).all())
    # The Hydra override of the benchmark selects it.
    cfg = compose_cfg(["experiment=ariel_v50", "data=ariel_toy", "model.net.fgs1_encoder=null"], tmp_path)
    assert instantiate(cfg.model).net.fgs1_encoder is None


def test_v50_without_gnn_passes_no_messages_between_bins(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 282, 16, requires_grad=True)
    for layers, crosses in ((1, True), (0, False)):
        graph = v50(graph_layers=layers).graph
        x.grad = None
        graph(x)[:, 100].sum().backward()
        others = torch.cat([x.grad[:, :100], x.grad[:, 101:]], dim=1)
        assert bool(others.abs().sum() > 0) is crosses, layers  # node 100 hears its neighbours or no one
    net = v50(graph_layers=0)
    assert len(net.graph.convs) == 0 and not any(".convs." in name for name, _ in net.named_parameters())
    torch.testing.assert_close(net.graph(x), x)
    net.fit_training_data([synthetic_batch(8, noise=2e-4, seed=2)])
    assert torch.isfinite(net(synthetic_batch(3, noise=2e-4, seed=3)).mu).all()
    cfg = compose_cfg(["experiment=ariel_v50", "data=ariel_toy", "model.net.graph.n_layers=0"], tmp_path)
    assert len(instantiate(cfg.model).net.graph.convs) == 0
    with pytest.raises(ConfigError, match="n_layers=-1"):
        SpectralGNNEncoder(n_layers=-1)


def test_prior_only_predicts_the_v50_prior_with_its_training_residual_as_sigma() -> None:
    torch.manual_seed(0)
    full, prior = v50(), PriorOnlyNet(TransitWindowFit(), prior_ridge=1e-2)
    assert not any(p.requires_grad for p in prior.parameters())
    train, test = synthetic_batch(12, noise=2e-4, seed=7), synthetic_batch(4, noise=2e-4, seed=8)
    full.fit_training_data([train])
    prior.fit_training_data([train])
    torch.testing.assert_close(prior(test).mu, full(test).ref)  # mu is exactly the V50's prior
    residual = train["target"] - prior(train).mu
    torch.testing.assert_close(prior(test).sigma[0], residual.pow(2).mean(0).sqrt() + 1e-6, rtol=1e-4, atol=1e-9)
    assert float(prior.unit) == pytest.approx(float(full.unit), rel=1e-5)  # the V50's loss unit
