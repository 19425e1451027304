"""DissectionCallback with the real Lightning Trainer (train.train on tiny synthetic data, CPU): when it
dissects, what it writes and logs, and what survives a resume."""

import collections
import json

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

import train as train_script
from callbacks.dissection import DissectionCallback, layer_summaries
from lwtakit import plots
from lwtakit.config import DissectionConfig
from lwtakit.dissection_setup import clip_configured
from lwtakit.drift import agreement, settle_epochs, stability
from lwtakit.io import read_csv
from tests.test_train import tiny_cfg as _tiny_cfg

# Smaller still than test_train's TINY: 2 training steps per epoch, a narrower net, one eval mode.
FAST = ("data.train_size=64", "model.width=0.0625", "eval.modes=[argmax]", "sparsity.enabled=false")


def tiny_cfg(tmp_path, *overrides):
    return _tiny_cfg(tmp_path, *FAST, *overrides)


def _callback(result) -> DissectionCallback:
    return next(cb for cb in result.trainer.callbacks if isinstance(cb, DissectionCallback))


def _blocks(rows) -> collections.Counter:
    """Rows per dissection, keyed by (epoch, step)."""
    return collections.Counter((int(r["epoch"]), int(r["step"])) for r in rows)


def _as_csv(rows, columns) -> list[dict[str, str]]:
    """History rows as read back from labels.csv (every value a string, None as '')."""
    return [{c: "" if r.get(c) is None else str(r.get(c)) for c in columns} for r in rows]


# ---------------------------------------------------------------------------------------- W&B logging
def test_wandb_label_table_is_one_growing_incremental_table_and_grids_are_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb
    from wandb.sdk.wandb_run import Run

    payloads, tables = [], []
    original = Run.log

    def spy(self, data, *args, **kwargs):
        sizes = {k: len(v.data) for k, v in data.items() if isinstance(v, wandb.Table)}
        out = original(self, data, *args, **kwargs)
        payloads.append(dict(data))
        for k, v in data.items():
            if isinstance(v, wandb.Table):
                tables.append((k, v, sizes[k], v.log_mode, v._increment_num))
        return out

    monkeypatch.setattr(Run, "log", spy)
    result = train_script.train(tiny_cfg(tmp_path, "trainer.max_epochs=2", "dissection.grid_units=2"))
    run = result.run_dir
    history = _callback(result).history
    blocks = _blocks(history)
    assert len(blocks) == 2  # one dissection per epoch; the one at fit end is the same step: skipped

    # One table object, logged under one key, growing by each dissection's rows, increments 0, 1.
    assert [k for k, *_ in tables] == ["dissection/labels"] * 2
    assert tables[0][1] is tables[1][1]
    assert [size for _, _, size, _, _ in tables] == [blocks[min(blocks)], len(history)]
    assert [(mode, num) for _, _, _, mode, num in tables] == [("INCREMENTAL", 0), ("INCREMENTAL", 1)]
    # Every payload of the callback carries the step of the epoch it belongs to: that of the epoch's last batch, where
    # Lightning logs the epoch's validation metrics (the labels' own step column is the global step after it).
    ours = [p for p in payloads if any(k.startswith("dissection/") for k in p)]
    assert ours and all("trainer/global_step" in p for p in ours)
    steps = sorted(p["trainer/global_step"] for p in ours if "dissection/labels" in p)
    assert steps == sorted(step - 1 for _, step in blocks)

    # On disk: each increment file holds only that dissection's new rows; together, labels.csv.
    (offline,) = (run / "wandb").glob("offline-run-*")
    files = sorted((offline / "files" / "media" / "table" / "dissection").glob("labels_*.table.json"),
                   key=lambda p: int(p.name.split("_")[1]))
    sizes = [len(json.loads(f.read_text())["data"]) for f in files]
    assert sizes == [blocks[k] for k in sorted(blocks)]
    assert sum(sizes) == len(read_csv(run / "labels.csv"))
    # Top-image grids of every dissected layer, at both dissections.
    grids = offline / "files" / "media" / "images" / "dissection"
    layers = {r["layer"] for r in history}
    for layer in layers:
        assert len(list((grids / layer).glob("top_images_*.png"))) >= 2, layer
    # Stability at fit end went through the Lightning loggers (W&B and the CSV).
    for layer in layers:
        key = f"dissection/{layer}/invert/stable_fraction"
        assert any(key in p for p in payloads), key
    header = (run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {f"dissection/{layer}/invert/mean_settle_epoch" for layer in layers} <= set(header)
    # Held-out interpretability with every dissection, next to accuracy (issue 8.8), and the mode in each row.
    for name in ("heldout_f1", "heldout_auprc", "heldout_correlation", "heldout_significant", "concepts"):
        assert {f"dissection/{layer}/invert/{name}" for layer in layers} <= set(header), name
    assert {r["mode"] for r in history} == {"mc"} and all("heldout_f1" in r for r in history)


# ---------------------------------------------------------------------------------------- when it runs
def test_fast_dev_run_writes_no_labels(tmp_path):
    result = train_script.train(tiny_cfg(tmp_path, "trainer.fast_dev_run=true", "logger=none"))
    assert not (result.run_dir / "labels.csv").exists()
    assert not (result.run_dir / "label_stability.csv").exists()
    assert _callback(result).history == []


def test_checkpoint_dissections_one_block_each_mid_epoch_ones_kept_apart_and_never_in_sanity_check(
        tmp_path, monkeypatch):
    calls, saves, sanity = [], [], []
    run, save, val_end = DissectionCallback.run, DissectionCallback.on_save_checkpoint, \
        DissectionCallback.on_validation_end

    def spy_run(self, trainer, pl_module):
        calls.append((trainer.sanity_checking, trainer.global_step))
        return run(self, trainer, pl_module)

    def spy_save(self, trainer, pl_module, checkpoint):
        saves.append(trainer.global_step)
        return save(self, trainer, pl_module, checkpoint)

    def spy_val_end(self, trainer, pl_module):
        sanity.append(trainer.sanity_checking)
        return val_end(self, trainer, pl_module)

    monkeypatch.setattr(DissectionCallback, "run", spy_run)
    monkeypatch.setattr(DissectionCallback, "on_save_checkpoint", spy_save)
    monkeypatch.setattr(DissectionCallback, "on_validation_end", spy_val_end)
    build = train_script.build_callbacks

    def with_step_checkpoints(cfg, run_dir, datamodule):  # also a checkpoint after every step (mid-epoch)
        return [*build(cfg, run_dir, datamodule),
                ModelCheckpoint(dirpath=str(run_dir / "steps"), every_n_train_steps=1, save_top_k=-1)]

    monkeypatch.setattr(train_script, "build_callbacks", with_step_checkpoints)
    # 3 steps in one epoch: a checkpoint after every step (1, 2, 3) and at the epoch's end (3 again).
    result = train_script.train(tiny_cfg(tmp_path, "data.train_size=96", "logger=none",
                                         "dissection.every_n_epochs=0", "dissection.on_checkpoint=true",
                                         "dissection.at_fit_end=false"))
    assert sanity[0] is True, "no sanity check ran"
    assert not any(s for s, _ in calls), "dissected in the sanity check"
    assert sorted(set(saves)) == [1, 2, 3] and len(saves) == 4
    rows = read_csv(result.run_dir / "labels.csv")
    blocks = _blocks(rows)
    assert sorted(blocks) == [(0, 1), (0, 2), (0, 3)]  # one block per checkpointed step
    assert len(set(blocks.values())) == 1  # and every block complete, none duplicated
    assert rows == _as_csv(_callback(result).history, _callback(result).columns)
    # Each checkpoint holds the history up to and including its own dissection.
    for ckpt in sorted((result.run_dir / "steps").glob("*.ckpt")):
        state = torch.load(ckpt, weights_only=True)
        cb_state = next(v for k, v in state["callbacks"].items() if k.startswith("DissectionCallback"))
        assert max(r["step"] for r in cb_state["history"]) == state["global_step"], ckpt.name
    # Drift keeps the dissections of one epoch apart: 2 transitions, not none.
    for layer, points in agreement(rows, "invert").items():
        assert [e for e, _ in points] == [0, 0], layer
    stab = read_csv(result.run_dir / "label_stability.csv")
    assert {r["layer"] for r in stab} == {r["layer"] for r in rows}
    for r in stab:
        assert r["method"] == "invert" and r["dissections"] == "3"
        assert 0 < float(r["stable_fraction"]) <= 1 and float(r["mean_settle_epoch"]) == 0
    assert stab == [{k: str(v) for k, v in r.items()} for r in _callback(result).label_stability()]


# ---------------------------------------------------------------------------------------- state, resume
def test_resume_restores_history_and_rewrites_labels_csv_without_lost_or_duplicated_rows(tmp_path):
    common = ("logger=none", "optim.schedule=none")
    first = train_script.train(tiny_cfg(tmp_path, "trainer.max_epochs=1", *common))
    cb = _callback(first)
    assert _blocks(cb.history) == _blocks(read_csv(first.run_dir / "labels.csv"))

    # state_dict -> checkpoint (weights_only) -> load_state_dict gives back the same history.
    state = torch.load(first.last_ckpt, weights_only=True)["callbacks"][cb.state_key]
    fresh = DissectionCallback(cb.probe, cb.concepts, DissectionConfig(top_images=4))
    fresh.load_state_dict(state)
    # repr: a held-out p-value is NaN where the label is true on no evaluation image (NaN != NaN)
    assert repr(fresh.history) == repr(cb.history) and fresh.done == cb.done
    assert repr(fresh.state_dict()) == repr(cb.state_dict())

    # A crash after a dissection the checkpoint never saw: labels.csv holds an extra, newer block.
    labels = first.run_dir / "labels.csv"
    extra = [dict(r, epoch="1", step="99") for r in read_csv(labels)]
    with labels.open("a") as fh:
        fh.writelines(",".join(r[c] for c in cb.columns) + "\n" for r in extra)
    assert len(_blocks(read_csv(labels))) == 2

    resumed = train_script.train(tiny_cfg(tmp_path, "trainer.max_epochs=2", "ckpt_path=last", *common))
    history = _callback(resumed).history
    rows = read_csv(resumed.run_dir / "labels.csv")
    assert sorted(_blocks(rows)) == [(0, 2), (1, 4)]  # the stray step-99 block is gone
    assert rows == _as_csv(history, cb.columns)  # exactly the history: nothing lost, nothing twice
    assert repr(history[: len(cb.history)]) == repr(cb.history)


# ---------------------------------------------------------------------------------------- CLIP-Dissect
def test_clip_dissect_switched_on_when_clip_weights_are_configured(tmp_path, monkeypatch):
    import open_clip

    from lwtakit.clip import save_local_dir
    from tests.test_clip import TINY_CFG

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    folder = save_local_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "tinyclip")
    result = train_script.train(tiny_cfg(tmp_path / "runs", "logger=none", f"dissection.clip.model=local-dir:{folder}",
                                         f"dissection.clip.cache_dir={tmp_path / 'cache'}"))
    assert _callback(result).methods == ["invert", "clip_dissect"]
    methods = collections.Counter(r["method"] for r in read_csv(result.run_dir / "labels.csv"))
    assert methods["clip_dissect"] > 0 and methods["invert"] > 0


@pytest.mark.parametrize("clip, expected", [
    ({}, False),  # the default model name alone names no weights
    ({"pretrained": "openai"}, True),
    ({"model": "ViT-B-32", "pretrained": "/weights.bin"}, True),
    ({"model": "local-dir:/some/folder"}, True),
    ({"model": "hf-hub:timm/some-clip"}, True),
])
def test_clip_configured(clip, expected):
    from lwtakit.config import ClipConfig

    assert clip_configured(OmegaConf.merge(OmegaConf.structured(ClipConfig), clip)) is expected


# ---------------------------------------------------------------------------------------- drift by (epoch, step)
def _rows(labels):
    """labels: [(epoch, step, label of unit 0)]."""
    return [{"epoch": e, "step": s, "layer": "fc", "unit": 0, "method": "invert", "label": lab, "score": 0.5}
            for e, s, lab in labels]


def test_two_dissections_in_one_epoch_are_not_merged():
    rows = _rows([(0, 2, "red"), (0, 3, "blue"), (1, 6, "blue")])
    assert agreement(rows, "invert") == {"fc": [(0, 0.0), (1, 1.0)]}
    assert settle_epochs(rows, "invert") == {("fc", 0): 0}
    s = stability(rows, "invert")["fc"]
    assert s["stable_fraction"] == 2 / 3 and s["dissections"] == 3
    # Order is by step within the epoch, whatever order the rows come in.
    assert agreement(list(reversed(rows)), "invert") == agreement(rows, "invert")


def test_layer_summary_compares_with_the_previous_dissection_of_the_same_epoch():
    previous = _rows([(0, 2, "red"), (0, 3, "blue")])
    summary = layer_summaries(_rows([(0, 4, "blue")]), previous)[("fc", "invert")]
    assert summary["label_changed"] == 0.0  # vs step 3 (blue), not a merged epoch 0
    summary = layer_summaries(_rows([(0, 4, "red")]), previous)[("fc", "invert")]
    assert summary["label_changed"] == 1.0


# ---------------------------------------------------------------------------------------- plot
def test_label_agreement_plot_has_integer_epoch_ticks():
    fig = plots.label_agreement({"fc": [(1, 0.2), (2, 0.6), (3, 0.7)]})
    fig.canvas.draw()
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
