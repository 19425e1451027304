"""LWTA layer: hard competition, sampling distribution, straight-through gradients, KL, modes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from lwtakit.errors import UserError
from lwtakit.lwta import (
    LWTA,
    LWTAOptions,
    lwta_inference,
    lwta_layers,
    mc_predict,
    set_inference,
    set_temperature,
    total_kl,
)


def _blocks(x, U, dim):
    """[..., C, ...] -> [..., C/U, U, ...] moved so that U is last (independent of the module)."""
    x = x.movedim(dim, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // U, U)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("U", [2, 3, 4])
@pytest.mark.parametrize("shape,dim", [((4, 12, 5, 3), 1), ((3, 7, 12), -1)])
def test_one_winner_per_block_output_is_input_at_winner(U, shape, dim, grad):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=grad)
    m = LWTA(U).train()
    y = m(x).detach()
    x = x.detach()
    mask = m.winner_mask()
    assert mask.shape == x.shape and mask.dtype == torch.bool
    assert (_blocks(mask, U, dim).sum(-1) == 1).all()
    assert torch.equal(y[mask], x[mask])
    assert (y[~mask] == 0).all()
    # the stored winner indices agree with the mask and keep no graph
    w = m.last_winners
    assert w.dtype == torch.uint8 and not w.requires_grad
    assert torch.equal(_blocks(mask, U, dim).float().argmax(-1), w.movedim(dim, -1).long())


@pytest.mark.parametrize("U,T", [(2, 1.0), (2, 0.5), (3, 2.0), (4, 0.7)])
def test_winner_frequencies_follow_softmax_h_over_T(U, T):
    torch.manual_seed(1)
    h = torch.tensor([0.3, -0.4, 1.0, 0.1])[:U]
    n = 40000
    x = h.repeat(n, 1)  # n tokens, one block each
    m = LWTA(U, temperature=T)
    m(x)
    counts = np.bincount(m.last_winners.view(-1).numpy(), minlength=U)
    p = torch.softmax(h.double() / T, 0).numpy()
    p /= p.sum()
    assert stats.chisquare(counts, p * n).pvalue > 1e-3
    if T != 1.0:  # the temperature acts on the sample itself, not only on the gradient
        q = torch.softmax(h.double(), 0).numpy()
        q /= q.sum()
        assert stats.chisquare(counts, q * n).pvalue < 1e-6


@pytest.mark.parametrize("U,fused", [(2, False), (2, True), (3, False)])
def test_temperature_on_the_relaxation_samples_from_softmax_h(U, fused):
    """DISCOVER's formulation: winners come from softmax(h) whatever T (T shapes only the gradient)."""
    torch.manual_seed(11)
    h, T, n = torch.tensor([0.3, -0.4, 1.0])[:U], 0.4, 40000
    m = LWTA(U, temperature=T, temperature_on="relaxation", fused=fused)
    m(h.repeat(n, 1))
    counts = np.bincount(m.last_winners.view(-1).numpy(), minlength=U)
    p = torch.softmax(h.double(), 0).numpy()
    assert stats.chisquare(counts, p / p.sum() * n).pvalue > 1e-3
    q = torch.softmax(h.double() / T, 0).numpy()
    assert stats.chisquare(counts, q / q.sum() * n).pvalue < 1e-6
    with pytest.raises(UserError, match="temperature_on"):
        LWTA(U, temperature_on="winner")


def _reference(x, U, T, gumbel, dim, on="logits"):
    """Straight-through Gumbel-softmax written with plain autograd ops: hard = onehot(argmax(h/T + g)),
    relaxation softmax(h/T + g) (``on="logits"``); or DISCOVER's F.gumbel_softmax(h, tau=T, hard=True):
    hard = onehot(argmax(h + g)), relaxation softmax((h + g)/T) (``on="relaxation"``)."""
    xb = _blocks(x, U, dim)
    if on == "logits":
        z = xb / T + gumbel
        soft = torch.softmax(z, -1)
    else:
        z = xb + gumbel
        soft = torch.softmax(z / T, -1)
    hard = F.one_hot(z.argmax(-1), U).to(x.dtype)
    y = xb * (hard + soft - soft.detach())
    y = y.reshape(*y.shape[:-2], -1)
    return y.movedim(-1, dim)


@pytest.mark.parametrize("on", ["logits", "relaxation"])
@pytest.mark.parametrize("U", [2, 3])
@pytest.mark.parametrize("shape,dim", [((3, 12, 4, 5), 1), ((5, 2, 12), -1)])
@pytest.mark.parametrize("T", [1.0, 0.6])
def test_gradients_match_reference_straight_through(U, shape, dim, T, on):
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    m = LWTA(U, temperature=T, save_dtype="same", dim=dim, temperature_on=on)
    C = shape[dim]
    P = math.prod(shape[: dim % len(shape)])
    Q = math.prod(shape[dim % len(shape) + 1 :])
    if U == 2:
        u = torch.rand(P, C // 2, Q, dtype=torch.double)
        y = m(x, _noise=u)
        # the pair sampler's noise as Gumbels: g1 - g0 = logit(u) (Logistic)
        g = torch.zeros(P, C // 2, Q, 2, dtype=torch.double)
        g[..., 1] = torch.logit(u)
    else:
        g = -torch.log(-torch.log(torch.rand(P, C // U, U, Q, dtype=torch.double)))
        y = m(x, _noise=g)
        g = g.movedim(2, -1)
    # reshape the noise to the reference's [..., blocks, U] layout
    if dim == 1:  # [B, G, H*W, U] -> [B, H, W, G, U]
        g_ref = g.reshape(shape[0], C // U, *shape[2:], U).movedim(1, -2)
    else:
        g_ref = g.reshape(*shape[:-1], C // U, U)
    y_ref = _reference(x, U, T, g_ref, dim, on)
    assert torch.allclose(y, y_ref, atol=1e-12)
    w = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    (gr,) = torch.autograd.grad((y_ref * w).sum(), x)
    assert torch.allclose(gx, gr, atol=1e-10)
    assert (gx != 0).float().mean() > 0.9  # losers get gradient through the relaxation too


def test_half_precision_saves_stay_close_to_exact_gradient():
    torch.manual_seed(3)
    x = torch.randn(4, 16, 6, 6, requires_grad=True)
    u = torch.rand(4, 8, 36)
    grads = []
    for sd in ("same", "half"):
        y = LWTA(2, temperature=0.8, save_dtype=sd)(x, _noise=u)
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), x)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-2, atol=1e-3)


def test_U1_is_plain_dense_activation():
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(LWTA(1)(x), F.relu(x))
    assert torch.equal(LWTA(1, dense="gelu")(x), F.gelu(x))


def test_argmax_mode_is_deterministic_and_sample_mode_is_stochastic_in_eval():
    torch.manual_seed(4)
    x = torch.randn(8, 10, 4, 4)
    m = LWTA(2, inference="argmax").eval()
    y1, y2 = m(x), m(x)
    assert torch.equal(y1, y2)
    xb = _blocks(x, 2, 1)
    expect = (xb * F.one_hot(xb.argmax(-1), 2)).reshape(8, 4, 4, 10).movedim(-1, 1)
    assert torch.equal(y1, expect)
    m.inference = "sample"
    assert not torch.equal(m(x), m(x))


def test_U_not_dividing_width_is_a_user_error():
    with pytest.raises(UserError, match="U=3.*width 10"):
        LWTA(3)(torch.randn(2, 10, 4, 4))
    with pytest.raises(UserError, match="inference"):
        LWTA(2, inference="mc")
    with pytest.raises(UserError):
        set_temperature(torch.nn.Sequential(LWTA(2)), 0.0)


def test_kl_term_matches_direct_computation():
    torch.manual_seed(5)
    U, T = 4, 0.8
    x = torch.randn(3, 8, 2, 2, requires_grad=True)
    model = torch.nn.Sequential(LWTA(U, temperature=T, kl=True), LWTA(U, temperature=T, kl=False)).train()
    model(x)
    kl = model[0].kl_divergence()
    direct = []
    for b in range(3):
        for g in range(2):
            for i in range(2):
                for j in range(2):
                    q = torch.softmax(x[b, g * U:(g + 1) * U, i, j].detach() / T, 0).numpy()
                    direct.append(float((q * np.log(q * U)).sum()))
    assert abs(kl.item() - np.mean(direct)) < 1e-5
    assert kl.requires_grad and model[1].kl_divergence().item() == 0.0
    assert torch.allclose(total_kl(model), kl)
    kl.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_helpers_and_mc_predict_restore_modes():
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), LWTA(2, inference="argmax"), torch.nn.Linear(8, 3))
    model.train()
    assert list(lwta_layers(model)) == ["1"]
    set_temperature(model, 0.5)
    assert model[1].temperature == 0.5
    x = torch.randn(4, 5)
    torch.manual_seed(7)
    p = mc_predict(model, x, 5)
    assert model.training and model[1].inference == "argmax"
    torch.manual_seed(7)
    model.eval()
    set_inference(model, "sample")
    with torch.no_grad():
        manual = torch.stack([torch.softmax(model(x), -1) for _ in range(5)]).mean(0)
    assert torch.allclose(p, manual, atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(4))


def test_mc_predict_averaging_logits_is_the_softmax_of_the_mean_seeded_logits():
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), LWTA(2), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(16, 5)
    torch.manual_seed(11)
    p = mc_predict(model, x, 6, average="logits")
    torch.manual_seed(11)
    with torch.no_grad():
        logits = [model(x) for _ in range(6)]
    manual = torch.softmax(sum(logits) / 6, -1)
    assert torch.allclose(p, manual, atol=1e-6)
    # a different function from the mean of the probabilities (both are distributions)
    torch.manual_seed(11)
    probs = mc_predict(model, x, 6)
    assert torch.allclose(probs, torch.stack([torch.softmax(z, -1) for z in logits]).mean(0), atol=1e-6)
    assert (p - probs).abs().max() > 1e-3
    assert torch.allclose(p.sum(-1), torch.ones(16))


def test_mc_predict_refuses_an_unknown_average():
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), LWTA(2))
    with pytest.raises(UserError, match="probs, logits"):
        mc_predict(model, torch.randn(2, 5), 2, average="median")


@pytest.mark.parametrize("U", [2, 4])
def test_measured_sparsity_is_one_over_U(U):
    torch.manual_seed(8)
    x = torch.randn(4, 16, 8, 8)
    m = LWTA(U)
    y = m(x)
    assert (y != 0).float().mean().item() == pytest.approx(1 / U)
    assert m.winner_mask().float().mean().item() == pytest.approx(1 / U)


def test_record_off_stores_nothing():
    m = LWTA(2)
    m.record = False
    m(torch.randn(2, 4))
    assert m.last_winners is None and m.winner_mask() is None


@pytest.mark.parametrize("on", ["logits", "relaxation"])
@pytest.mark.parametrize("T", [1.0, 0.6])
def test_fused_compiled_kernels_match_eager(T, on):
    """The torch.compile'd U=2 kernels compute the same output, winners and gradient as the eager ops.

    The gradient is compared with the tensors saved for backward in float32 (``save_dtype="same"``): each path
    computes them with its own float32 exp (ATen's and Inductor's kernels differ by an ulp, and by instruction set),
    so they agree to float32 rounding (rtol 1e-5 covers a few ulps through the product); saved as float16 (the
    default) one ulp there can flip a float16 rounding, a relative 2**-11, which says nothing about the kernels."""
    torch.manual_seed(9)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    u = torch.rand(2, 4, 16)
    w = torch.randn(2, 8, 4, 4)
    res = []
    for fused in (False, True):
        m = LWTA(2, temperature=T, fused=fused, temperature_on=on, save_dtype="same")
        y = m(x, _noise=u)
        (gx,) = torch.autograd.grad((y * w).sum(), x)
        res.append((y.detach(), m.last_winners.clone(), gx))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    assert torch.allclose(res[0][2], res[1][2], rtol=1e-5, atol=1e-6)
    # with its own noise, the fused sampler still yields one winner per block, value = input
    m = LWTA(2, temperature=T, fused=True)
    y = m(x).detach()
    mask = m.winner_mask()
    assert (mask.view(2, 4, 2, 16).sum(2) == 1).all() and torch.equal(y[mask], x.detach()[mask])


def test_fused_sampler_frequencies_follow_softmax_h_over_T():
    torch.manual_seed(10)
    h, T, n = torch.tensor([0.3, -0.4]), 0.5, 40000
    m = LWTA(2, temperature=T, fused=True)
    m(h.repeat(n, 1))
    counts = np.bincount(m.last_winners.view(-1).numpy(), minlength=2)
    p = torch.softmax(h.double() / T, 0).numpy()
    assert stats.chisquare(counts, p / p.sum() * n).pvalue > 1e-3


@pytest.mark.parametrize("U", [2, 3, 4])
@pytest.mark.parametrize("shape", [(3, 12, 5, 5), (2, 7, 12)])
def test_argmax_mode_matches_a_direct_per_block_argmax(U, shape):
    x = torch.randn(*shape).round(decimals=1)  # rounding makes ties; the first unit of a tie wins
    layer = LWTA(U=U, inference="argmax").eval()
    d = 1 if x.dim() == 4 else -1
    blocks = x.movedim(d, -1).unflatten(-1, (-1, U))
    expected = (blocks * torch.nn.functional.one_hot(blocks.argmax(-1), U)).flatten(-2).movedim(-1, d)
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.winner_mask(), expected != 0) or (x == 0).any()


def test_lwta_inference_restores_each_layers_mode_also_after_an_exception():
    model = torch.nn.Sequential(LWTA(2, inference="argmax"), LWTA(2, inference="sample"))
    with pytest.raises(RuntimeError, match="inside"):
        with lwta_inference(model, "argmax"):
            assert [m.inference for m in model] == ["argmax", "argmax"]
            raise RuntimeError("inside")
    assert [m.inference for m in model] == ["argmax", "sample"]
    with lwta_inference(model, "sample"):
        with lwta_inference(model, "argmax"):
            assert [m.inference for m in model] == ["argmax", "argmax"]
        assert [m.inference for m in model] == ["sample", "sample"]
    assert [m.inference for m in model] == ["argmax", "sample"]
    with lwta_inference(model, None):  # None: as they are
        assert [m.inference for m in model] == ["argmax", "sample"]
    with pytest.raises(UserError, match="inference mode"):
        with lwta_inference(model, "mean"):
            pass
    assert [m.inference for m in model] == ["argmax", "sample"]


def test_options_build_the_layer_and_hold_the_defaults():
    layer = LWTAOptions(U=4, temperature=0.5, inference="argmax", kl=True, temperature_on="relaxation").build()
    assert (layer.U, layer.temperature, layer.inference, layer.kl, layer.temperature_on) == \
        (4, 0.5, "argmax", True, "relaxation")
    default = LWTA()
    assert (default.U, default.temperature, default.inference, default.dense, default.fused) == \
        (LWTAOptions.U, LWTAOptions.temperature, LWTAOptions.inference, "relu", LWTAOptions.fused)
    assert LWTAOptions(U=1, dense="gelu").build()(torch.tensor([-1.0])).item() == pytest.approx(F.gelu(
        torch.tensor([-1.0])).item())
    with pytest.raises(UserError, match="block size"):
        LWTAOptions(U=0)
    with pytest.raises(UserError, match="temperature"):
        LWTAOptions(temperature=float("inf"))
    with pytest.raises(TypeError):
        LWTA(2, bogus=1)


def _lowbias32(x: int) -> int:
    """Python-int reference of the lowbias32 hash (xor-shift 16, * 0x7feb352d, xor-shift 15, * 0x846ca68b,
    xor-shift 16, all mod 2**32)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_uniforms_match_the_integer_hash_and_are_uniform_and_independent():
    """The fused CPU sampler's counter-based uniforms: the tensor hash equals plain integer arithmetic, the
    values are uniform (KS), adjacent values independent (chi-square on a 4x4 grid), seeds give new streams."""
    from lwtakit.lwta.kernels import _hash_uniform, _mix32

    xs = [0, 1, 2**16 + 3, 2**31 - 1, 2**31, 2**32 - 1, 123456789]
    assert _mix32(torch.tensor(xs)).tolist() == [_lowbias32(v) for v in xs]
    seed = torch.tensor([12345, 678])
    like = torch.empty(200000)
    u = _hash_uniform(seed, like)
    m = [_lowbias32(_lowbias32(i ^ 12345) ^ 678) >> 9 for i in (0, 1, 99999)]
    assert u[[0, 1, 99999]].tolist() == [(v + 0.5) / 2**23 for v in m]
    assert u.min() >= 2**-24 and u.max() <= 1 - 2**-24
    assert stats.kstest(u.double().numpy(), "uniform").pvalue > 1e-3
    cells = (u * 4).long().clamp_max(3)
    pairs = np.bincount((cells[:-1:2] * 4 + cells[1::2]).numpy(), minlength=16)
    assert stats.chisquare(pairs).pvalue > 1e-3
    other = _hash_uniform(torch.tensor([12346, 678]), like)
    assert abs(np.corrcoef(u.numpy(), other.numpy())[0, 1]) < 0.01


def test_fused_sampling_is_reproducible_under_manual_seed():
    x = torch.randn(4, 8, 16, 16)
    m = LWTA(2, fused=True)
    winners = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        m(x)
        winners.append(m.last_winners.clone())
    assert torch.equal(winners[0], winners[1]) and not torch.equal(winners[0], winners[2])
