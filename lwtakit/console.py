"""What the command-line tools print: the project's own messages and warnings always, and none of the known
third-party notices a user cannot act on (issue 11). Each silenced message is listed here with why."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator

# torch logs this at import of torch.utils.cpp_extension (pulled in by torch.compile / Triton) on every CPU-only
# machine that has a CUDA toolkit folder: nothing is wrong and nothing can be done about it.
_TORCH_CPP_EXTENSION = "torch.utils.cpp_extension"
# Lightning advertises its hosted logger on every Trainer with another logger; on Ctrl-C it announces its shutdown,
# which train.py reports itself in one line (issue 23).
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_LIGHTNING_NOISE = ("💡 Tip: For seamless cloud logging", "\nDetected KeyboardInterrupt")
# Lightning's own pytree helper calls an API torch deprecated; the fix is Lightning's to make.
_WARNING_NOISE = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
# Lightning's ModelCheckpoint warns when its folder holds files. A resume reads its checkpoint from the run's own
# folder, so there this is the expected state (silenced by resuming_in); about any other folder it is news.
_CHECKPOINT_DIR_NOT_EMPTY = "Checkpoint directory {} exists and is not empty."


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_third_party() -> None:
    """Silence the notices listed in this module, and only those; safe to call more than once."""
    logging.getLogger(_TORCH_CPP_EXTENSION).setLevel(logging.ERROR)
    for name in _LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(_LIGHTNING_NOISE))
    for pattern in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def resuming_in(checkpoint_dir: str | os.PathLike) -> Iterator[None]:
    """Inside the block (a run resuming from its own ``checkpoint_dir``), Lightning's warning that this folder
    exists and is not empty is dropped; the same warning about another folder, and every other warning, still
    shows. The filters are as before once the block ends."""
    # Lightning names the folder by its real path.
    message = re.escape(_CHECKPOINT_DIR_NOT_EMPTY.format(os.path.realpath(checkpoint_dir))) + r"\Z"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message)
        yield
