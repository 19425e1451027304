"""What a resume (``ckpt_path=last``, or a checkpoint of the run's own folder) may change, and when it has nothing
to do (issue 23).

A resume continues the run its checkpoint stored: the keys that define what is trained (the run's arm,
:mod:`lwtakit.arm`, and its seed) must be as stored, or the resume is refused with the keys that differ
(``key: old -> new``): a resumed run that silently trained something else would no longer be the run its folder
says it is. ``trainer.max_epochs`` may grow (train more), not shrink below the stored value (the schedules were
laid out for it). Where the run is written and logged, and the hardware it runs on (:data:`NOTED`), may change;
such changes are reported in one note line. A run that already reached its ``max_epochs`` and wrote its
``results.json`` is finished: resuming it writes nothing.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lwtakit.arm import NOT_ARM, flatten
from lwtakit.errors import UserError

GROWS = "trainer.max_epochs"
# Set by train.py or by the command itself, so they differ between a run and its resume by design.
IGNORED = ("ckpt_path", "overwrite", "run_id", "arm", "arm_id")
# May change on a resume, with a note: the run's place, logging, hardware and self-analysis (the arm's exclusions
# but the seed, which picks the sample a run is).
NOTED = tuple(k for k in NOT_ARM if k not in IGNORED and k != "seed")


def _under(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any], where: str) -> str | None:
    """Compare the config a checkpoint stored with the one a resume of it was given (both plain nested mappings):
    a note naming the allowed changes (None if there are none), or a :class:`UserError` naming the refused ones.
    ``where``: the checkpoint, for the message."""
    old, new = flatten(stored), flatten(current)
    changed = [k for k in sorted(old.keys() & new.keys()) if old[k] != new[k] and not _under(k, IGNORED)]
    refused = [k for k in changed if not _under(k, NOTED) and k != GROWS]
    if GROWS in changed and new[GROWS] < old[GROWS]:
        refused.append(GROWS)

    def show(keys: list[str]) -> str:
        return ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in keys)

    if refused:
        raise UserError(f"resuming {where} with a changed config ({show(refused)}); a resume continues the run as "
                        "it was configured: pass the run's settings (its config.yaml), start a new run under another "
                        f"run_name, or only raise {GROWS} to train more")
    return f"note: resuming with a changed config: {show(changed)}" if changed else None


def finished_line(run_dir: Path, checkpoint: Path, epochs_done: int, max_epochs: int) -> str | None:
    """The line for a resume of a finished run, or None when there is work left: the checkpoint has reached
    ``max_epochs`` and ``results.json`` (written after the final test) is whole and newer than the checkpoint."""
    results = Path(run_dir) / "results.json"
    if epochs_done < max_epochs or not results.is_file():
        return None
    if results.stat().st_mtime < Path(checkpoint).resolve().stat().st_mtime:
        return None  # the results of an earlier finish: this checkpoint's test has not run
    try:
        json.loads(results.read_text(encoding="utf-8"))
    except ValueError:
        return None
    folder = shlex.quote(Path(run_dir).name)
    return (f"run {run_dir} already finished at epoch {epochs_done}; nothing to do (its results.json stands): to "
            f"train more, resume with run_name={folder} ckpt_path=last trainer.max_epochs=N (N > {epochs_done})")
