"""The labeler registry: a labeler written outside the package is one class and one registration, and then every
entry point runs it (dissect(), analyze.py dissect); built-in labelers refuse a dissection that lacks what they
need before any work."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lwtakit.data import probe_subset
from lwtakit.data.synthetic import ConceptShapes
from lwtakit.dissect import ConceptSource, DissectOptions, dissect
from lwtakit.errors import UserError
from lwtakit.labelers.base import (
    CONCEPT_LABELS,
    Labeler,
    create_labeler,
    labeler_names,
    register_labeler,
    rows_from_dicts,
)
from lwtakit.labels import LabelRow, LabelTable


@dataclass
class MeanGapConfig:
    min_gap: float = 0.0


@register_labeler
class MeanGap(Labeler):
    """Label = the concept whose positives have the highest mean activation minus the negatives' mean."""

    name = "mean_gap"
    config_class = MeanGapConfig
    needs = frozenset({CONCEPT_LABELS})

    def label(self, target, ctx):
        acts = target.acts.double()
        labels = torch.as_tensor(ctx.concepts.labels).double()
        pos = (labels.T @ acts) / labels.sum(0).clamp_min(1)[:, None]            # [K, C]
        neg = ((1 - labels).T @ acts) / (1 - labels).sum(0).clamp_min(1)[:, None]
        gap = pos - neg
        best = gap.argmax(0)
        return rows_from_dicts([{"unit": u, "label": ctx.concepts.names[int(best[u])], "score": float(gap[best[u], u])}
                                for u in range(acts.shape[1]) if float(gap[best[u], u]) >= self.config.min_gap],
                               target, self.name)


class ColourNet(nn.Module):
    """Conv units wired to detect red / green / blue."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.conv.weight.data.copy_(torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0]])
                                    .view(3, 3, 1, 1))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def probe():
    return probe_subset(ConceptShapes(size=400, split="val"), 200, seed=0)


def test_a_labeler_registered_outside_the_package_runs_in_dissect(probe):
    assert "mean_gap" in labeler_names() and "invert" in labeler_names()
    result = dissect(ColourNet().eval(), probe, ["act"], ["mean_gap", "invert"], ConceptSource.from_dataset(probe),
                     DissectOptions(progress=False))
    table = result.table
    assert table.methods == ["mean_gap", "invert"]
    assert [r.label for r in table.select("act", "mean_gap")] == ["red", "green", "blue"]
    # its rows are typed like every labeler's, with the recording's firing rates
    row = table.select("act", "mean_gap").rows[0]
    assert isinstance(row, LabelRow) and row.firing_rate == pytest.approx(float(result.recording.firing["act"][0]))
    # the config travels whole: a threshold above every gap leaves no rows
    strict = create_labeler("mean_gap", min_gap=1e9)
    assert len(dissect(ColourNet().eval(), probe, ["act"], [strict], ConceptSource.from_dataset(probe),
                       DissectOptions(progress=False)).table) == 0


def test_a_registered_labeler_runs_from_the_command_line(tmp_path, capsys):
    import analyze
    import train as train_script
    from lwtakit.config import load_config

    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=r", "data.train_size=32", "data.val_size=64",
                                  "data.test_size=32", "data.batch_size=32", "model.width=0.0625",
                                  "trainer.max_epochs=1", "logger=none", "dissection.enabled=false",
                                  "trainer.enable_progress_bar=false"])
    ckpt = train_script.train(cfg).last_ckpt
    code = analyze.main(["dissect", "--ckpt", str(ckpt), "--methods", "mean_gap", "--probe-size", "48",
                         "--top-images", "4", "--grid-units", "1", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    table = LabelTable.read_csv(tmp_path / "o" / "labels.csv")
    assert table.methods == ["mean_gap"] and len(table) > 6


def test_missing_needs_and_unknown_names_are_one_line_errors(probe):
    with pytest.raises(UserError, match="method clip_dissect needs CLIP weights"):
        dissect(ColourNet(), probe, ["act"], ["clip_dissect"], ConceptSource.from_dataset(probe))
    with pytest.raises(UserError, match="unknown dissection method 'netdissect'; choose from .*invert"):
        create_labeler("netdissect")
    with pytest.raises(ValueError, match="already registered"):
        register_labeler(type("Other", (MeanGap,), {"name": "invert"}))


def test_label_table_summaries_and_csv_round_trip(tmp_path):
    from lwtakit.labelers.invert import Formula, InvertRow

    names = ["red", "blue", "dark green"]
    f = Formula.atom(0, False, names).extend("AND", 2, True)
    rows = [InvertRow("l", 0, "invert", str(f), 0.9, 0.5, 1e-5, ("red", "blue"), auc=0.9, length=2, formula=f),
            InvertRow("l", 1, "invert", "blue", 0.7, 0.5, 0.2, ("blue",), auc=0.7, length=1),
            InvertRow("l", 2, "invert", "", None, 0.0, None, (), length=0),
            LabelRow("l", 0, "iou", "blue", 0.3, 0.5, extra={"iou": 0.3, "threshold": 1.5})]
    table = LabelTable(rows)
    s = table.summaries()[("l", "invert")]
    assert (s.units, s.distinct_labels) == (3, 3)
    assert s.mean_score == pytest.approx(0.8) and s.significant == pytest.approx(1 / 3)
    assert table.summaries()[("l", "iou")].significant is None
    assert [u for u, _ in table.best_units("l")] == [0, 1]
    path = table.write_csv(tmp_path / "labels.csv")
    back = LabelTable.read_csv(path, concept_names=names)
    assert table.columns() == ["layer", "unit", "method", "label", "score", "firing_rate", "auc", "p_value", "length",
                               "top5", "iou", "threshold"]
    assert back.rows[0].formula == f and back.rows[0].concept == "red"
    as_text = [{k: str(v) for k, v in r.record().items()} for r in table]
    assert [{k: str(v) for k, v in r.record().items()} for r in back] == as_text
