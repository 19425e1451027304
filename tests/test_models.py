"""Model builders, activation sites, conversion of torchvision models."""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from lwtakit.errors import UserError
from lwtakit.lwta import LWTA, LWTAOptions, lwta_layers
from lwtakit.models import build_model, convert_activations, default_layers, model_names

ACT_TYPES = (LWTA, nn.ReLU, nn.GELU)


def _fire_counts(model, x):
    counts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: counts.__setitem__(n, counts.get(n, 0) + 1))
             for n, m in model.named_modules() if isinstance(m, ACT_TYPES)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return counts, out


def _tiny(name, **kw):
    if name.startswith("vit"):
        return build_model(name, 7, depth=2, img_size=16, patch_size=4, **kw)
    return build_model(name, 7, width=0.125, **kw)


BUILT_IN = ["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small"]


def test_the_built_in_models_are_registered_first():
    assert model_names()[:len(BUILT_IN)] == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("act", ["lwta", "relu"])
def test_every_model_builds_and_every_activation_fires_once(name, act):
    torch.manual_seed(0)
    model = _tiny(name, act=act).train()
    x = torch.rand(2, 3, 16, 16)
    counts, out = _fire_counts(model, x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    acts = [n for n, m in model.named_modules() if isinstance(m, ACT_TYPES)]
    assert acts and all(counts.get(n) == 1 for n in acts), counts
    if act == "lwta":
        assert len(lwta_layers(model)) == len(acts)
    if name.startswith("resnet"):
        # stem + one per conv-bn pair in a block (2 basic / 3 bottleneck)
        per_block = 3 if name == "resnet50" else 2
        n_blocks = {"resnet18": 8, "resnet34": 16, "resnet50": 16}[name]
        assert len(acts) == 1 + per_block * n_blocks
        assert default_layers(model)[-1] == "fc"
    else:
        assert default_layers(model) == ["blocks.1.mlp.act", "head"]


def test_resnet_width_multiplier_and_imagenet_stem():
    m = build_model("resnet18", 10, lwta=LWTAOptions(U=4), width=0.25)
    assert [getattr(m, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    # A U that does not divide every width is refused (rounding the widths would break the dense twin, issue 23).
    with pytest.raises(UserError, match=r"model.U=4 does not divide the layer widths 6, 13, 26, 51 .*no U > 1"):
        build_model("resnet18", 10, lwta=LWTAOptions(U=4), width=0.1)
    with pytest.raises(UserError, match=r"model.U=3 does not divide the layer widths 64, 128, 256, 512 "
                                        r"\(model.width=1.0\); U in \{2, 4, 8, 16, 32, 64\} divides them all"):
        build_model("resnet18", 10, lwta=LWTAOptions(U=3), width=1.0)
    dense = build_model("resnet18", 10, width=0.1, act="relu")  # a dense net has no U: its widths as they come
    assert dense.layer1[0].conv1.out_channels == 6
    m = build_model("resnet18", 10, width=0.25, stem="imagenet", act="relu")
    assert m.conv1.kernel_size == (7, 7) and isinstance(m.maxpool, nn.MaxPool2d)
    assert m(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_normalisation_is_the_first_op():
    m = build_model("resnet18", 3, width=0.125, in_chans=1, mean=(0.2,), std=(0.5,), act="relu")
    seen = {}
    m.conv1.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    x = torch.rand(2, 1, 8, 8)
    m(x)
    assert torch.allclose(seen["x"], (x - 0.2) / 0.5)
    with pytest.raises(UserError, match="input channels"):
        m(torch.rand(2, 3, 8, 8))


def test_vit_lwta_competes_over_hidden_units_per_token():
    m = build_model("vit_tiny", 5, lwta=LWTAOptions(U=4), depth=1, img_size=8, patch_size=4)
    act = m.blocks[0].mlp.act
    m(torch.rand(2, 3, 8, 8))
    mask = act.winner_mask()
    assert mask.shape == (2, 5, 768)  # 4 patches + CLS, hidden 4 * 192
    assert (mask.view(2, 5, 192, 4).sum(-1) == 1).all()


def test_bad_names_and_widths():
    with pytest.raises(UserError, match="resnet18"):
        build_model("resnet19", 10)
    with pytest.raises(UserError, match="activation"):
        build_model("resnet18", 10, act="tanh")
    with pytest.raises(UserError, match="U=5"):
        build_model("vit_tiny", 10, lwta=LWTAOptions(U=5), depth=1)  # hidden 768 not divisible by 5


@pytest.mark.parametrize("U", [2, 4])
def test_convert_torchvision_resnet18(U):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=10)
    model = convert_activations(tv, LWTAOptions(U=U, temperature=1.0))
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    layers = lwta_layers(model)
    assert len(layers) == 17  # stem + 2 call sites in each of 8 BasicBlocks
    x = torch.rand(2, 3, 32, 32)
    counts, out = _fire_counts(model, x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert set(counts) == set(layers) and set(counts.values()) == {1}
    for m in layers.values():
        assert m.winner_mask().float().mean().item() == pytest.approx(1 / U)
    assert "layer4.1.relu" in default_layers(model) and default_layers(model)[-1] == "fc"
    # the original is untouched
    assert sum(isinstance(m, nn.ReLU) for m in tv.modules()) == 9


def test_convert_rejects_or_skips_indivisible_widths():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 2))
    with pytest.raises(UserError, match="width 6"):
        convert_activations(net, LWTAOptions(U=4), example_input=torch.rand(1, 4))
    conv = convert_activations(net, LWTAOptions(U=4), example_input=torch.rand(1, 4), skip_indivisible=True)
    assert isinstance(conv.get_submodule("1"), nn.ReLU)
    assert isinstance(conv.get_submodule("3"), LWTA) and conv.get_submodule("3").dense == "gelu"


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow defeats symbolic tracing
            x = self.relu(self.fc(x))
        return self.relu(x)


def test_untraceable_model_falls_back_with_warning():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = convert_activations(_Untraceable(), LWTAOptions(U=2))
    assert any("could not trace" in str(x.message) for x in w)
    assert isinstance(model.relu, LWTA)
    assert model(torch.rand(3, 4)).shape == (3, 4)
