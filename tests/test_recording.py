"""Activation recording: reductions, firing rates, hook hygiene, state restoration, O(N x C) memory."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.recording import RecordOptions, analysis_mode, capture, record_activations


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.drop(self.act(self.conv(x)))
        return self.fc(self.pool(h).flatten(1))


class Tokens(nn.Module):
    def forward(self, x):  # [B, 3, H, W] -> [B, T=H*W, D=3]
        return x.flatten(2).transpose(1, 2)


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = Tokens()

    def forward(self, x):
        return self.tok(x).sum()


def _data(n=10, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def test_reductions_match_direct_computation():
    torch.manual_seed(0)
    net = TinyNet()
    ds = _data()
    rec = record_activations(net, ds, ["act", "fc"], batch_size=4, progress=False)
    net.eval()
    with torch.no_grad():
        maps = net.act(net.conv(ds.tensors[0]))
        logits = net(ds.tensors[0])
    torch.testing.assert_close(rec.acts["act"], maps.mean(dim=(2, 3)))
    torch.testing.assert_close(rec.acts_max["act"], maps.amax(dim=(2, 3)))
    torch.testing.assert_close(rec.firing["act"], (maps > 0).float().mean(dim=(0, 2, 3)))
    torch.testing.assert_close(rec.acts["fc"], logits)
    assert torch.equal(rec.labels, ds.tensors[1])
    st = rec.stats["act"].compute()
    torch.testing.assert_close(st["mean"].float(), maps.mean(dim=(2, 3)).mean(0))
    assert not rec.acts["act"].is_inference()  # usable with autograd afterwards


def test_token_reduction_cls_and_mean():
    ds = _data(n=5)
    x = ds.tensors[0]
    tok = x.flatten(2).transpose(1, 2)
    cls = record_activations(TokenNet(), ds, ["tok"], batch_size=2, progress=False)
    mean = record_activations(TokenNet(), ds, ["tok"], batch_size=2, tokens="mean", progress=False)
    torch.testing.assert_close(cls.acts["tok"], tok[:, 0])
    torch.testing.assert_close(mean.acts["tok"], tok.mean(1))
    torch.testing.assert_close(cls.firing["tok"], (tok != 0).float().mean(dim=(0, 1)))


def _all_hooks(model):
    return [h for m in model.modules() for h in m._forward_hooks.values()]


def test_hooks_removed_after_exception_and_unknown_layer():
    net = TinyNet()
    with pytest.raises(ZeroDivisionError), capture(net, ["conv", "fc"]):
        assert len(_all_hooks(net)) == 2
        raise ZeroDivisionError
    assert _all_hooks(net) == []
    with pytest.raises(UserError, match="act"), capture(net, ["acts"]):  # close match "act"
        pass
    with pytest.raises(RuntimeError, match="conv"), capture(net, ["conv"]):
        pass  # no forward: the hook never fired
    assert _all_hooks(net) == []


def test_training_flags_and_rng_restored():
    net = TinyNet()
    net.train()
    net.fc.eval()  # a mixed state must come back exactly
    flags = [m.training for m in net.modules()]
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    # A loader that shuffles draws from the global torch RNG; the dropout would too in train mode.
    loader = torch.utils.data.DataLoader(_data(), batch_size=3, shuffle=True)
    record_activations(net, loader, ["act"], progress=False)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert [m.training for m in net.modules()] == flags


def test_analysis_mode_with_a_seed_restores_flags_and_rng_after_an_exception():
    net = TinyNet().train()
    torch.manual_seed(2)
    expected = torch.rand(3)
    seeded = torch.rand(2)
    torch.manual_seed(2)
    with pytest.raises(RuntimeError, match="inside"):
        with analysis_mode(net, seed=2):
            assert not net.training and torch.equal(torch.rand(3), expected)  # the block starts at the seed
            raise RuntimeError("inside")
    assert net.training
    assert torch.equal(torch.rand(3), expected) and torch.equal(torch.rand(2), seeded)


def test_memory_is_n_by_c_whatever_the_spatial_size():
    net = TinyNet()
    big = _data(n=8, size=40)
    rec = record_activations(net, big, ["act"], batch_size=4, progress=False)
    assert rec.acts["act"].shape == (8, 4) and rec.acts_max["act"].shape == (8, 4)
    with capture(net, ["act"]) as out:
        net(big.tensors[0][:4])
    # The hook keeps the reduced [B, C] piece, not the [B, C, 40, 40] map.
    assert [tuple(t.shape) for t in out["act"]] == [(4, 4)]


class _WinnerLayer(nn.Module):
    """Blocks of 2 channels; the winner passes its (possibly negative or zero) value; winner_mask()."""

    U = 2

    def forward(self, x):
        B, C, H, W = x.shape
        xv = x.view(B, C // 2, 2, H, W)
        mask = torch.zeros_like(xv, dtype=torch.bool).scatter_(2, xv.argmax(2, keepdim=True), True)
        self.mask = mask.view(x.shape)
        return x * self.mask

    def winner_mask(self):
        return self.mask


def test_firing_rate_uses_the_winner_mask():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _WinnerLayer())
    with torch.no_grad():
        net[0].bias.fill_(-10.0)  # every pre-activation negative: winners have negative outputs
    ds = _data(n=6)
    rec = record_activations(net, ds, ["1"], batch_size=4, progress=False)
    with torch.no_grad():
        pre = net[0](ds.tensors[0]).view(6, 2, 2, 6, 6)
        wins = torch.nn.functional.one_hot(pre.argmax(2), 2).movedim(-1, 2).reshape(6, 4, 6, 6)
    torch.testing.assert_close(rec.firing["1"], wins.float().mean(dim=(0, 2, 3)))
    assert rec.firing["1"].sum() == pytest.approx(2.0)  # one winner per block of 2: sparsity 1/U
    # per image and unit: the fraction of its positions where the unit wins
    torch.testing.assert_close(rec.firing_per_image["1"], wins.float().mean(dim=(2, 3)))
    assert torch.equal(rec.active_per_image["1"], torch.full((6,), 2.0))  # 2 winners at every position


def test_firing_and_active_units_per_image_of_a_dense_layer():
    """Per image: where each unit is non-zero, and the non-zero units averaged over the positions of the map
    (independent counts on the full maps)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    ds = _data(n=7)
    rec = record_activations(net, ds, ["1"], batch_size=3, progress=False)
    with torch.no_grad():
        out = net(ds.tensors[0])
    expected = torch.stack([(img != 0).sum() / (img.shape[1] * img.shape[2]) for img in out]).float()
    torch.testing.assert_close(rec.active_per_image["1"], expected)
    torch.testing.assert_close(rec.firing_per_image["1"], (out != 0).float().mean(dim=(2, 3)))
    torch.testing.assert_close(rec.firing["1"], (out != 0).float().mean(dim=(0, 2, 3)))


def test_lwta_resnet_firing_rate_is_one_over_u():
    models = pytest.importorskip("lwtakit.models")
    from lwtakit.lwta import LWTAOptions

    torch.manual_seed(0)
    net = models.build_model("resnet18", num_classes=4, act="lwta", lwta=LWTAOptions(U=4), width=0.25, img_size=16)
    layers = models.default_layers(net)
    rec = record_activations(net, _data(n=6, size=16), layers, batch_size=3, progress=False)
    lwta_layers = [n for n in layers if hasattr(net.get_submodule(n), "winner_mask")]
    assert lwta_layers
    for name in lwta_layers:
        # exactly one winner per block of 4 at every position (even where the winner's value is <= 0)
        assert float(rec.firing[name].mean()) == pytest.approx(0.25, abs=1e-6)
        assert rec.acts[name].shape[0] == 6


def test_moments_are_of_every_position_of_the_mean_of_the_passes():
    """With ``passes`` forward passes per batch, the per-position moments are those of the passes' mean map."""

    class Cycling(nn.Module):  # pass i of a batch scales the map by 1, 2, 3: their mean is twice the map
        calls = 0

        def forward(self, x):
            Cycling.calls += 1
            return x * (1 + (Cycling.calls - 1) % 3)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Cycling())
    x = torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    rec = record_activations(model, torch.utils.data.TensorDataset(x, torch.zeros(10)), ["1"],
                             RecordOptions(batch_size=4, passes=3, moments=True, progress=False))
    with torch.no_grad():
        maps = 2 * model[0](x)
    rows = maps.double().movedim(1, -1).reshape(-1, 4)
    moments = rec.moments["1"]
    assert moments.count == 10 * 4 * 4
    torch.testing.assert_close(moments.mean, rows.mean(0))
    torch.testing.assert_close(moments.covariance(), torch.cov(rows.t()))
    torch.testing.assert_close(rec.acts["1"], maps.mean(dim=(2, 3)))
