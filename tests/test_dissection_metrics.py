"""The dissection callback's held-out figures reach ``trainer.callback_metrics`` under stable names, so that
``ModelCheckpoint(monitor=...)`` and ``EarlyStopping`` can use them (issue 20, item 7): a real tiny Trainer."""

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

import train as train_script
from lwtakit.io import read_csv
from tests.test_dissection_callback import tiny_cfg

MONITOR = "dissection/fc/invert/heldout_correlation"


class Seen(Callback):
    """What another callback finds in ``trainer.callback_metrics`` at each validation end (train.py's test stage
    resets them after fit)."""

    def __init__(self):
        self.seen = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_heldout_figures_drive_model_checkpoint_and_early_stopping(tmp_path, monkeypatch):
    made = {}
    build = train_script.build_callbacks

    def with_monitors(cfg, run_dir, datamodule):  # listed after the dissection callback, as a user would add them
        made["best"] = ModelCheckpoint(dirpath=str(run_dir / "best"), monitor=MONITOR, mode="max", save_top_k=1)
        made["stop"] = EarlyStopping(monitor=MONITOR, mode="max", patience=10, strict=True)
        made["seen"] = Seen()
        return [*build(cfg, run_dir, datamodule), made["best"], made["stop"], made["seen"]]

    monkeypatch.setattr(train_script, "build_callbacks", with_monitors)
    result = train_script.train(tiny_cfg(tmp_path, "trainer.max_epochs=3", "logger=none"))
    # the figure per epoch, computed here from labels.csv: the mean over the classifier's units that have one
    rows = read_csv(result.run_dir / "labels.csv")
    per_epoch = {e: np.mean([float(r["heldout_correlation"]) for r in rows if int(r["epoch"]) == e
                             and r["layer"] == "fc" and r["heldout_correlation"]]) for e in range(3)}
    seen = made["seen"].seen
    assert [s[MONITOR] for s in seen] == pytest.approx([per_epoch[e] for e in range(3)], abs=1e-6)
    assert {"dissection/fc/invert/heldout_f1", "dissection/fc/invert/concepts"} <= set(seen[-1])
    best_epoch = max(per_epoch, key=per_epoch.get)
    assert float(made["best"].best_model_score) == pytest.approx(per_epoch[best_epoch], abs=1e-6)
    assert f"epoch={best_epoch}-" in made["best"].best_model_path  # the most interpretable epoch was kept
    assert float(made["stop"].best_score) == pytest.approx(per_epoch[best_epoch], abs=1e-6)
