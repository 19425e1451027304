"""PCA directions and completeness curves against direct computations."""

import numpy as np
import pytest
import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.labelers.pca import ablation_curve, captured_variance, fit_pca, neuron_basis, variance_curves
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


# ------------------------------------------------------------------------------------------------------------------
# Per-position PCA of a conv layer (Dey et al. 2020): directions of the channel vectors at every image x position
# ------------------------------------------------------------------------------------------------------------------
class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _conv_data(n=40):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(n, 3, 6, 6, generator=g) * torch.rand(n, 3, 1, 1, generator=g)
    model = TinyConv().eval()
    with torch.no_grad():
        maps = model.act(model.conv(x))
        # a head centred on the probe's features: every class is predicted, so ablations change predictions
        model.fc.bias.copy_(-model.fc(model.pool(maps).flatten(1)).mean(0) + model.fc.bias)
        y = model(x).argmax(1)
    y[: n // 5] = (y[: n // 5] + 1) % 3  # unablated accuracy 0.8
    return model, torch.utils.data.TensorDataset(x, y), maps


def _moments(model, ds, batch_size):
    from lwtakit.recording import RecordOptions, record_activations

    rec = record_activations(model, ds, ["act"], RecordOptions(batch_size=batch_size, progress=False, moments=True))
    return rec.moments["act"]


def _direct_eig(maps):
    """Eigen-decomposition of the covariance of every (image, position) channel vector, all at once."""
    rows = maps.double().movedim(1, -1).reshape(-1, maps.shape[1]).numpy()
    cov = np.cov(rows, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    return evals[::-1], evecs[:, ::-1], rows.mean(0), cov


def test_per_position_variance_curve_equals_the_eigenvalues_of_the_per_position_covariance():
    model, ds, maps = _conv_data()
    moments = _moments(model, ds, batch_size=7)
    assert moments.count == maps.shape[0] * maps.shape[2] * maps.shape[3]
    evals, evecs, mean, cov = _direct_eig(maps)
    curves = variance_curves(moments)
    np.testing.assert_allclose(curves["pca"].numpy(), np.cumsum(evals) / np.trace(cov), atol=1e-6)
    np.testing.assert_allclose(curves["neurons"].numpy(), np.cumsum(np.sort(np.diag(cov))[::-1]) / np.trace(cov),
                               atol=1e-6)
    pca = fit_pca(moments)
    np.testing.assert_allclose(pca.explained_variance.numpy(), evals, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.abs(pca.components.double().numpy() @ evecs), np.eye(6), atol=1e-5)
    np.testing.assert_allclose(pca.mean.numpy(), mean, atol=1e-6)
    # Not the basis of the spatial means: that one is fitted on other vectors and captures less of this variance.
    pooled = fit_pca(maps.mean(dim=(2, 3)), k=2).components
    assert captured_variance(moments, pooled) < curves["pca"][1] - 1e-3
    V = torch.from_numpy(evecs[:, :2].T.copy())
    assert captured_variance(moments, V) == pytest.approx(float(curves["pca"][1]), abs=1e-9)


def test_streaming_fit_over_batches_equals_the_one_shot_fit():
    model, ds, maps = _conv_data()
    streamed, whole = _moments(model, ds, batch_size=7), _moments(model, ds, batch_size=len(ds))
    assert streamed.count == whole.count
    np.testing.assert_allclose(streamed.covariance().numpy(), whole.covariance().numpy(), rtol=1e-10, atol=1e-12)
    a, b = fit_pca(streamed), fit_pca(whole)
    np.testing.assert_allclose(a.explained_variance.numpy(), b.explained_variance.numpy(), rtol=1e-10)
    np.testing.assert_allclose(a.components.numpy(), b.components.numpy(), atol=1e-6)  # same signs too
    np.testing.assert_allclose(a.mean.numpy(), b.mean.numpy(), atol=1e-7)
    # Merging the moments of two halves gives the whole as well.
    half = len(ds) // 2
    first = _moments(model, torch.utils.data.Subset(ds, range(half)), 5)
    first.merge(_moments(model, torch.utils.data.Subset(ds, range(half, len(ds))), 5))
    np.testing.assert_allclose(first.covariance().numpy(), whole.covariance().numpy(), rtol=1e-10, atol=1e-12)


def test_conv_ablation_projects_out_the_per_position_directions():
    """The accuracy after projecting the top-k per-position directions out of every position, computed by hand."""
    model, ds, maps = _conv_data()
    x, y = ds.tensors
    evals, evecs, mean, _ = _direct_eig(maps)
    moments = _moments(model, ds, batch_size=9)
    pooled = fit_pca(maps.mean(dim=(2, 3)))  # the spatial means' basis: another curve, so the test tells them apart
    for k in (1, 3):
        V = torch.from_numpy(evecs[:, :k].T.copy()).float()
        mu = torch.from_numpy(mean).float()
        with torch.no_grad():
            h = maps.movedim(1, -1)
            h = (h - ((h - mu) @ V.t()) @ V).movedim(-1, 1)
            direct = float((model.fc(model.pool(h).flatten(1)).argmax(1) == y).float().mean())
        fitted = ablation_curve(model, "act", ds, "pca", ks=[k], acts=moments, run=RunOptions(batch_size=16))
        recorded = ablation_curve(model, "act", ds, "pca", ks=[k], run=RunOptions(batch_size=16))
        assert fitted == recorded == [pytest.approx(direct)]
        assert direct not in (0.8, ablation_curve(model, "act", ds, pooled.components, ks=[k], mean=pooled.mean)[0])
