"""What ``train.py --help`` lists after its options (issue 11): the experiment configs, each with the first
sentence of its leading comment, the config groups with their choices, read from configs/ as it is, the sweep
launchers (issue 19) and the run's top-level keys (issue 23)."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

from lwtakit.config import CONFIG_DIR, GROUPS

# The run's own keys (not in a group), what they do (issue 23).
TOP_LEVEL_KEYS = (
    ("run_name", "the run folder's name under run_dir (default: <experiment>-<time>; with -m: the sweep folder's)"),
    ("run_dir", "where run folders go (default: runs)"),
    ("ckpt_path", "resume: last (the run folder's last.ckpt) or a checkpoint file"),
    ("overwrite", "true: start clean in a run folder that holds a run (removes its files)"),
    ("logger", "wandb (offline unless wandb.mode=online; also CSV) | csv | none"),
    ("seed", "the seed of weights, data order and LWTA samples (sweep it: seed=0,1,2 with -m)"),
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def describe(path: Path) -> str:
    """The first sentence of the comment block that opens the YAML file ``path`` ('' when it opens without one)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text


def config_epilog(config_dir: Path = CONFIG_DIR) -> str:
    """The experiment configs (``--config NAME``) with their descriptions, then ``GROUP=`` and its choices for
    every config group, wrapped to the terminal like argparse's own help."""
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
    experiments = sorted((config_dir / "experiment").glob("*.yaml"))
    column = max(len(p.stem) for p in experiments) + 4
    lines = ["experiment configs (--config NAME, files in configs/experiment/):"]
    for path in experiments:
        lines += textwrap.wrap(describe(path) or "(no description)", width,
                               initial_indent=f"  {path.stem:<{column - 2}}", subsequent_indent=" " * column,
                               break_on_hyphens=False)
    lines.append("config groups (GROUP=NAME merges configs/GROUP/NAME.yaml under GROUP):")
    launchers = sorted(p.stem for p in (config_dir / "hydra" / "launcher").glob("*.yaml"))
    rows = [(f"{group}=", " | ".join(sorted(p.stem for p in (config_dir / group).glob("*.yaml")))) for group in GROUPS]
    rows.append(("hydra/launcher=", " | ".join(["basic", "submitit_local", "submitit_slurm", *launchers]) +
                 " (with -m; basic runs the points one after another)"))
    rows += [("top-level keys:", "")] + [(f"{key}=", text) for key, text in TOP_LEVEL_KEYS]
    for name, text in rows:
        if not text:
            lines.append(name)
            continue
        lines += textwrap.wrap(text, width, initial_indent=f"  {name:<{column - 2}}",
                               subsequent_indent=" " * column, break_on_hyphens=False)
    return "\n".join(lines)
