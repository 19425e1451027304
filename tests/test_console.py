"""The console policy: known third-party notices are silenced, nothing else is."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from lwtakit.console import quiet_third_party, resuming_in

REPO = Path(__file__).resolve().parent.parent


def test_known_notices_are_silenced_and_others_are_not(tmp_path, caplog):
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter, not two
    cpp = logging.getLogger("torch.utils.cpp_extension")
    assert not cpp.isEnabledFor(logging.WARNING) and cpp.isEnabledFor(logging.ERROR)
    # a real Trainer with a CSV logger: Lightning's hosted-logger tip is gone, its other notices are not
    with caplog.at_level(logging.INFO):
        pl.Trainer(logger=CSVLogger(tmp_path), limit_train_batches=1.0, enable_progress_bar=False,
                   enable_checkpointing=False, accelerator="cpu")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("litlogger" in m for m in messages)
    assert any("`Trainer(limit_train_batches=1.0)` was configured" in m for m in messages)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert len(rank_zero.filters) == 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_third_party()  # catch_warnings reset the filters: install them again inside
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("lwtakit's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["lwtakit's own warning"]


def test_resume_drops_the_checkpoint_folder_notice_for_its_own_folder_only(tmp_path):
    own, other = tmp_path / "run" / "checkpoints", tmp_path / "elsewhere"
    own.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "run")  # Lightning names the folder by its real path
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with resuming_in(link / "checkpoints"):
            warnings.warn(f"Checkpoint directory {own} exists and is not empty.", UserWarning, stacklevel=1)
            warnings.warn(f"Checkpoint directory {other} exists and is not empty.", UserWarning, stacklevel=1)
            warnings.warn(f"Checkpoint directory {own}/sub exists and is not empty.", UserWarning, stacklevel=1)
            warnings.warn("lwtakit's own warning", UserWarning, stacklevel=1)
        warnings.warn(f"Checkpoint directory {own} exists and is not empty.", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [f"Checkpoint directory {other} exists and is not empty.",
                                              f"Checkpoint directory {own}/sub exists and is not empty.",
                                              "lwtakit's own warning",
                                              f"Checkpoint directory {own} exists and is not empty."]


def test_a_resumed_run_prints_no_third_party_notice(tmp_path):
    """train.py as the user runs it: a run, then its resume; the resume's console holds none of the silenced
    notices, and the run still reports itself."""
    import train as train_script

    tiny = [f"run_dir={tmp_path}", "run_name=r", "data.train_size=32", "data.val_size=16", "data.test_size=16",
            "data.batch_size=16", "model.width=0.125", "trainer.enable_progress_bar=false", "dissection.enabled=false",
            "logger=wandb", "trainer.max_epochs=1"]
    env = {**os.environ, "WANDB_MODE": "offline"}  # W&B's own notices are on the list too
    assert train_script.main(tiny) == 0
    done = subprocess.run([sys.executable, "train.py", *tiny, "trainer.max_epochs=2", "ckpt_path=last"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    assert f"run: {tmp_path / 'r'}" in console
    for noise in ("exists and is not empty", "💡 Tip", "LeafSpec", "cpp_extension", "anonymous setting"):
        assert noise not in console, console
