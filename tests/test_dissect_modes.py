"""Which network is dissected (mc / sample / argmax) and held-out assessment of its labels, each against an
independent computation."""

import pytest
import torch
from torch import nn

from lwtakit.data import ProbeSubset, probe_subset
from lwtakit.data.synthetic import ConceptShapes
from lwtakit.dissect import ConceptSource, DissectOptions, dissect
from lwtakit.errors import UserError
from lwtakit.evaluation.metrics import score_pairs
from lwtakit.evaluation.options import HeldOutOptions
from lwtakit.labelers.invert import label_units
from lwtakit.lwta import LWTA, lwta_inference
from lwtakit.recording import record_activations


class LWTANet(nn.Module):
    """Colour-sensitive 1x1 conv units competing in pairs, then spatial mean."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1)
        self.act = LWTA(U=2, inference="sample")

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def probe():
    return probe_subset(ConceptShapes(size=400, split="val"), 160, seed=0)


def test_mc_records_the_expected_activation_and_differs_from_argmax(probe):
    """mc = the mean over `passes` stochastic passes: with many passes it reaches the exact expectation of the LWTA
    output, E[h_u * 1(u wins)] = h_u softmax(h)_u per pair (T = 1), averaged over positions; argmax is another
    function; labels are tagged with the mode and the layer's own mode is restored."""
    net = LWTANet().eval()
    few = ProbeSubset(probe, list(range(16)))
    mc = dissect(net, few, ["act"], ["invert"], ConceptSource.from_dataset(few),
                 DissectOptions(mode="mc", passes=400, progress=False, heldout=None))
    x = torch.stack([few[i][0] for i in range(len(few))])
    with torch.no_grad():
        h = net.conv(x)                                          # [B, 8, H, W]
        pairs = h.view(h.shape[0], 4, 2, *h.shape[2:])
        expected = (pairs * torch.softmax(pairs, dim=2)).view_as(h).mean(dim=(2, 3))
    torch.testing.assert_close(mc.recording.acts["act"], expected, atol=0.01, rtol=0.05)
    argmax = dissect(net, few, ["act"], ["invert"], ConceptSource.from_dataset(few),
                     DissectOptions(mode="argmax", progress=False, heldout=None))
    assert (mc.recording.acts["act"] - argmax.recording.acts["act"]).abs().max() > 0.05
    assert {r.mode for r in mc.table} == {"mc"} and {r.mode for r in argmax.table} == {"argmax"}
    assert net.act.inference == "sample"


def test_held_out_labels_are_chosen_on_one_part_and_scored_on_the_other(probe):
    net = LWTANet().eval()
    opts = DissectOptions(mode="argmax", progress=False, heldout=HeldOutOptions(fraction=0.5, seed=4))
    result = dissect(net, probe, ["act"], ["invert"], ConceptSource.from_dataset(probe), opts)
    split = result.split
    assert sorted([*split.explain, *split.evaluate]) == list(range(len(probe)))
    # labels: INVERT on the explanation part alone
    with lwta_inference(net, "argmax"):
        acts = record_activations(net, probe, ["act"], progress=False).acts["act"]
    concepts = torch.as_tensor(probe.concept_matrix())
    alone = label_units(acts[split.explain], concepts[split.explain], probe.concept_names)
    assert [r.label for r in result.table] == [r["label"] for r in alone]
    # held-out F1: the metric of each unit's label on the evaluation part
    names = list(probe.concept_names)
    ids = [names.index(r.label) if not r.label.startswith("NOT ") else None for r in result.table]
    # a unit constant on the evaluation images (an LWTA loser that never wins there) is dead: no held-out value
    ev = acts[split.evaluate]
    dead = (ev.amax(0) == ev.amin(0)).tolist()
    assert [r.extra["dead"] for r in result.table] == [int(dead[r.unit]) for r in result.table]
    assert not any("concepts" in r.extra or "heldout_f1" in r.extra for r in result.table if dead[r.unit])
    live = [(r.unit, c) for r, c in zip(result.table, ids, strict=True) if c is not None and not dead[r.unit]]
    units, cols = [u for u, _ in live], [c for _, c in live]
    assert units
    f1 = score_pairs("f1", acts[split.evaluate], concepts[split.evaluate], units, cols, alpha=0.05)
    got = [result.table.rows[u].extra["heldout_f1"] for u in units]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.as_tensor(f1, dtype=torch.float64))
    assert all(isinstance(r.extra["concepts"], int) for r in result.table if not dead[r.unit])


def test_a_split_leaving_fewer_than_top_k_images_is_one_error(probe):
    tiny = ProbeSubset(probe, list(range(12)))
    with pytest.raises(UserError, match="each part needs at least 8"):
        dissect(LWTANet().eval(), tiny, ["act"], ["invert"], ConceptSource.from_dataset(tiny),
                DissectOptions(topk=8, progress=False))
    with pytest.raises(UserError, match="unknown dissection mode"):
        DissectOptions(mode="mean")


class _ClassesOnly(torch.utils.data.Dataset):
    """A probe set that names classes but no concepts (like MNIST or CIFAR): its concepts are its classes."""

    def __init__(self, base):
        self.base, self.class_names = base, ["circle", "square", "triangle", "cross", "ring", "diamond"]

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][:2]


def test_a_probe_of_class_labels_gets_the_sanity_table(probe):
    """The dissect report's sanity tests run on the classes when the probe names no concepts."""
    from lwtakit.analysis import DissectRequest, heldout_evaluation
    from lwtakit.evaluation.metrics import METRICS

    classes = _ClassesOnly(probe)
    concepts = ConceptSource.from_dataset(classes)
    assert concepts.labels is None and concepts.labels_from_classes
    opts = DissectOptions(mode="argmax", progress=False, heldout=HeldOutOptions(fraction=0.5, seed=1))
    result = dissect(LWTANet().eval(), classes, ["act"], ["invert"], concepts, opts)
    heldout = heldout_evaluation(result, concepts, DissectRequest(layers=["act"], labelers=[], options=opts))
    # NeuronEval's metrics, then the verdict's frequency-matched kappa (lwtakit/evaluation/unit_metrics.py)
    assert [row.metric for row in heldout.sanity] == [*METRICS, "heldout_kappa_matched"]
    assert all(0 <= row.missing_decrease <= 1 and 0 <= row.extra_decrease <= 1 for row in heldout.sanity)
