"""The console policy: known third-party notices are silenced, nothing else is."""

import logging
import warnings

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from lwtakit.console import quiet_third_party


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
