"""Network-Dissection IoU: hand-wired colour detectors on ConceptShapes; streaming == direct computation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lwtakit.data.synthetic import ConceptShapes
from lwtakit.errors import UserError
from lwtakit.labelers.iou import iou_matrix, label_units


class ColourDetectors(nn.Module):
    """1x1 conv units max(0, r - g - b) (red), g - r - b (green), b - r - g (blue), then 2x2 avg-pool so
    that the maps must be upsampled to the mask resolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1., -1, -1], [-1, 1, -1], [-1, -1, 1]]).view(3, 3, 1, 1))
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.act(self.conv(x))).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def probe():
    return ConceptShapes(size=60, seed=3, split="val", img_size=32)


def test_colour_detectors_get_their_colour(probe):
    rows = label_units(ColourDetectors(), probe, "pool", batch_size=16)
    assert [r["label"] for r in rows] == ["red", "green", "blue"]
    assert all(r["iou"] > 0.04 for r in rows)  # Network Dissection's detector criterion


def test_streaming_iou_equals_direct_computation(probe):
    model = ColourDetectors().eval()
    q = 0.01
    iou, thresholds = iou_matrix(model, probe, "pool", quantile=q, batch_size=7)
    images = torch.stack([probe[i][0] for i in range(len(probe))])
    with torch.no_grad():
        maps = model.pool(model.act(model.conv(images)))  # all maps at once: fine for a tiny probe
    flat = maps.transpose(0, 1).reshape(3, -1).numpy()
    m = max(1, round(q * flat.shape[1]))
    t_direct = -np.sort(-flat, axis=1)[:, m - 1]
    np.testing.assert_allclose(thresholds.numpy(), t_direct)
    up = F.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False).numpy()
    masks = np.stack([probe.concept_masks(i) for i in range(len(probe))])  # [N, K, H, W]
    for k in range(3):
        on = (up[:, k] >= t_direct[k]) & (up[:, k] > flat[k].min())
        for c in range(masks.shape[1]):
            lab = masks[:, c]
            if not lab.any():
                assert np.isnan(iou[k, c])
                continue
            direct = (on & lab).sum() / (on | lab).sum()
            assert iou[k, c] == pytest.approx(direct, abs=1e-12)


class Projected(nn.Module):
    """ColourDetectors whose pooled maps are then projected, per position, on directions: V (y - mean)."""

    def __init__(self, mean, V):
        super().__init__()
        self.base = ColourDetectors()
        self.proj = nn.Conv2d(3, V.shape[0], 1)
        with torch.no_grad():
            self.proj.weight.copy_(V.view(*V.shape, 1, 1))
            self.proj.bias.copy_(-(V @ mean))

    def forward(self, x):
        b = self.base
        return self.proj(b.pool(b.act(b.conv(x)))).mean(dim=(2, 3))


def test_directions_are_dissected_like_units(probe):
    """IoU of directions (PCA components as units) equals the IoU of a layer that outputs their scores, and
    a direction along a detector gets that detector's concept."""
    torch.manual_seed(0)
    mean, V = torch.rand(3) * 0.1, torch.linalg.qr(torch.randn(3, 3))[0][:2]
    got, t_got = iou_matrix(ColourDetectors().eval(), probe, "pool", batch_size=16, directions=(mean, V))
    ref, t_ref = iou_matrix(Projected(mean, V).eval(), probe, "proj", batch_size=16)
    torch.testing.assert_close(t_got, t_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, ref, equal_nan=True, rtol=1e-4, atol=1e-6)
    along = torch.tensor([[0.0, 0, 1], [1, 0, 0]])  # the blue detector, then the red one
    rows = label_units(ColourDetectors(), probe, "pool", batch_size=16, directions=(torch.zeros(3), along))
    assert [r["label"] for r in rows] == ["blue", "red"]


def test_bad_layer_and_dataset(probe):
    with pytest.raises(UserError):
        label_units(ColourDetectors(), probe, "nope")
    with pytest.raises(UserError, match="conv layer"):
        label_units(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)), probe, "1")
    with pytest.raises(UserError, match="masks"):
        label_units(ColourDetectors(), torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8)), "pool")


class NoisyDetectors(ColourDetectors):
    """ColourDetectors whose pooled maps get fresh noise every pass: a stochastic network, as LWTA sampling is."""

    def __init__(self):
        super().__init__()
        self.noise = nn.Identity()

    def forward(self, x):
        maps = self.pool(self.act(self.conv(x)))
        return self.noise(maps + 0.3 * torch.rand_like(maps)).mean(dim=(2, 3))


def test_iou_of_a_stochastic_network_in_mc_measures_the_mean_of_its_passes(probe):
    """With passes P (the mc function) each batch's maps are the mean of P passes drawn from (seed, batch index),
    as the recording draws them: the thresholds equal the top quantile of maps averaged here by hand; one pass
    (what IoU measured under mc before) gives other thresholds."""
    from lwtakit.labelers.run_options import RunOptions
    from lwtakit.shard import batch_seed

    model, q, bs, passes, seed = NoisyDetectors().eval(), 0.01, 16, 4, 5
    _, thresholds = iou_matrix(model, probe, "noise", run=RunOptions(batch_size=bs, seed=seed, passes=passes),
                               quantile=q)
    _, one_pass = iou_matrix(model, probe, "noise", run=RunOptions(batch_size=bs, seed=seed), quantile=q)
    means = []
    with torch.no_grad():
        for b, start in enumerate(range(0, len(probe), bs)):
            torch.manual_seed(batch_seed(seed, b))
            x = torch.stack([probe[i][0] for i in range(start, min(start + bs, len(probe)))])
            maps = [model.pool(model.act(model.conv(x))) for _ in range(passes)]
            means.append(sum(m + 0.3 * torch.rand_like(m) for m in maps) / passes)
    flat = torch.cat(means).transpose(0, 1).reshape(3, -1)
    m = max(1, round(q * flat.shape[1]))
    torch.testing.assert_close(thresholds, flat.sort(dim=1, descending=True).values[:, m - 1])
    assert not torch.allclose(thresholds, one_pass)
