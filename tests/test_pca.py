"""PCA directions and completeness curves against direct computations."""

import numpy as np
import pytest
import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.labelers.pca import ablation_curve, fit_pca, neuron_basis, variance_curves
from lwtakit.labelers.run_options import RunOptions


def _acts(N=300, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=g) * torch.linspace(3, 0.2, C)[:, None]
    return torch.randn(N, C, generator=g) @ mix + 2.0


def test_fit_pca_matches_covariance_eigendecomposition():
    x = _acts()
    pca = fit_pca(x)
    cov = np.cov(x.numpy().astype(np.float64), rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    np.testing.assert_allclose(pca.explained_variance.numpy(), evals, rtol=1e-6)
    # Same directions up to sign; orthonormal rows; projections decorrelated with those variances.
    np.testing.assert_allclose(np.abs(pca.components.numpy() @ evecs), np.eye(6), atol=1e-4)
    z = pca.project(x).double()
    np.testing.assert_allclose(np.cov(z.numpy(), rowvar=False), np.diag(evals), atol=1e-3 * evals[0])
    assert pca.total_variance == pytest.approx(float(np.trace(cov)))


def test_variance_curves_vs_direct():
    x = _acts()
    curves = variance_curves(x)
    var = x.double().var(0)
    direct_neurons = np.cumsum(np.sort(var.numpy())[::-1]) / var.sum().item()
    np.testing.assert_allclose(curves["neurons"].numpy(), direct_neurons, rtol=1e-10)
    evals = np.linalg.eigvalsh(np.cov(x.double().numpy(), rowvar=False))[::-1]
    np.testing.assert_allclose(curves["pca"].numpy(), np.cumsum(evals) / evals.sum(), rtol=1e-8)
    # PCs are the optimal k-dimensional subspace: never below the neuron axes.
    assert torch.all(curves["pca"] >= curves["neurons"] - 1e-12)
    assert curves["pca"][-1] == pytest.approx(1.0) and curves["neurons"][-1] == pytest.approx(1.0)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(5, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_ablation_endpoints_and_middle_vs_direct():
    model = Tiny().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g)
    with torch.no_grad():
        h = model.act(model.fc1(x))
        clean = model.fc2(h).argmax(1)
    y = clean.clone()
    y[:40] = (y[:40] + 1) % 3  # unablated accuracy 0.8, not 1
    ds = torch.utils.data.TensorDataset(x, y)
    for basis in ("pca", "neurons"):
        accs = ablation_curve(model, "act", ds, basis=basis, ks=[0, 3, 8], acts=h, run=RunOptions(batch_size=64))
        assert accs[0] == pytest.approx(0.8)
        with torch.no_grad():
            const = model.fc2(h.mean(0, keepdim=True)).argmax(1)  # every input maps to the mean
        assert accs[2] == pytest.approx(float((y == const).float().mean()))
    V, mu = neuron_basis(h)
    with torch.no_grad():
        h3 = h - ((h - mu) @ V[:3].t()) @ V[:3]
        direct = float((model.fc2(h3).argmax(1) == y).float().mean())
    assert ablation_curve(model, "act", ds, basis=V, mean=mu, ks=[3])[0] == pytest.approx(direct)


def test_conv_ablation_projects_over_channels():
    conv = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(30, 3, 5, 5)
    ds = torch.utils.data.TensorDataset(x, torch.randint(0, 2, (30,)))
    accs = ablation_curve(conv, "1", ds, basis="pca", ks=[0, 4])
    with torch.no_grad():
        full = float((conv(x).argmax(1) == ds.tensors[1]).float().mean())
        mu = conv[1](conv[0](x)).mean(dim=(0, 2, 3))  # per-channel mean over images and positions
        const = conv[4](mu[None]).argmax(1)
    assert accs[0] == pytest.approx(full)
    assert accs[1] == pytest.approx(float((ds.tensors[1] == const).float().mean()))
    with pytest.raises(UserError):
        ablation_curve(conv, "1", ds, basis="pca", ks=[9])
    with pytest.raises(UserError):
        fit_pca(torch.zeros(1, 3))
