"""Active neurons: the LWTA winners of one input, even when a winner's value is negative."""

import pytest
import torch
from torch import nn

from lwtakit.explain import active_neurons


class ArgmaxLWTA(nn.Module):
    """Deterministic LWTA per the interface (blocks of U consecutive units on dim 1; winner passes its raw
    value, losers 0; ``winner_mask()``), built here so the test does not depend on the sampler."""

    def __init__(self, U=2):
        super().__init__()
        self.U = U
        self.mask = None

    def forward(self, x):
        B, C = x.shape[:2]
        xv = x.reshape(B, C // self.U, self.U, *x.shape[2:])
        mask = torch.zeros_like(xv, dtype=torch.bool).scatter_(2, xv.argmax(2, keepdim=True), True)
        self.mask = mask.reshape(x.shape)
        return x * self.mask

    def winner_mask(self):
        return self.mask


def _linear_model(U=2):
    lin = nn.Linear(3, 6, bias=True)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([-2.0, -1.0, 0.5, 3.0, -4.0, 1.0]))
    return nn.Sequential(nn.Flatten(), lin, ArgmaxLWTA(U))


def test_negative_winner_is_picked_not_the_zero_loser():
    model = _linear_model()
    rows = active_neurons(model, torch.rand(3, 1, 1), "2",
                          labels={1: "negative winner", 3: "big"})
    # blocks: (-2, -1) -> unit 1 wins with -1; (0.5, 3) -> 3; (-4, 1) -> 5
    assert [r["unit"] for r in rows] == [3, 5, 1]  # sorted by activation
    assert rows[2]["activation"] == pytest.approx(-1.0) and rows[2]["label"] == "negative winner"
    assert rows[1]["label"] is None
    # The reference's argmax over stored outputs would pick unit 0 (a loser, output 0) in block 0.
    out = model(torch.zeros(1, 3, 1, 1))[0].view(3, 2)
    assert int(out[0].argmax()) == 0


def test_conv_winners_match_direct_per_position_count():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    model = nn.Sequential(conv, ArgmaxLWTA(U=4))
    x = torch.rand(3, 6, 6)
    rows = active_neurons(model, x, "1", top=None)
    with torch.no_grad():
        pre = conv(x[None])[0].view(2, 4, 6, 6)
        win_frac = torch.stack([torch.nn.functional.one_hot(pre[b].argmax(0), 4).float().mean(dim=(0, 1))
                                for b in range(2)])
    expected = {b * 4 + int(win_frac[b].argmax()) for b in range(2)}
    assert {r["unit"] for r in rows} == expected and len(rows) == 2
    for r in rows:
        assert r["win_fraction"] == pytest.approx(float(win_frac.flatten()[r["unit"]]))
    acts = [r["activation"] for r in rows]
    assert acts == sorted(acts, reverse=True)


def test_dense_layer_falls_back_to_positive_units_and_top():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 6), nn.ReLU())
    x = torch.rand(3, 1, 1)
    with torch.no_grad():
        h = model(x[None])[0]
    rows = active_neurons(model, x, "2", top=2)
    positive = sorted(range(6), key=lambda u: -float(h[u]))
    positive = [u for u in positive if h[u] > 0][:2]
    assert [r["unit"] for r in rows] == positive


def test_real_lwta_layer_if_present():
    lwta = pytest.importorskip("lwtakit.lwta")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 6), lwta.LWTA(U=2, inference="argmax"))
    x = torch.rand(3, 1, 1)
    model.train()
    rows = active_neurons(model, x, "2", top=None)
    assert model.training  # mode restored
    with torch.no_grad():
        pre = model[1](x.flatten()[None])[0].view(3, 2)
    assert sorted(r["unit"] for r in rows) == [2 * b + int(pre[b].argmax()) for b in range(3)]
