"""Whether runs can be compared at all, decided from their stored configs before any measurement (issue 23).

``analyze.py compare`` measures every run on its own data and labels its units with that data's concepts: two runs
trained on different data (an MNIST run and a synthetic one) or on differently generated synthetic images give
figures that cannot be set side by side, and a run given twice is compared with itself. :func:`check_runs` reads
each run's config from its checkpoint (no model built, no image made), refuses such inputs with one line, or with
``force`` returns the difference for the report's first line; and names the runs by what they are, for the title.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lwtakit.errors import UserError

# What fixes a run's data, its probe (the validation split) and its concept set; for synthetic data the generator
# settings, for stored data sets where the files are.
_SHARED = ("name", "img_size")
_SYNTHETIC = ("target", "second_object")


@dataclass
class RunCheck:
    """What :func:`check_runs` found: each run's ``name`` (its folder, else its checkpoint's stem), its ``kind``
    ("LWTA U=2", "dense"), and ``difference``: the settings the runs' data differ in ("" when they agree)."""

    names: list[str]
    kinds: list[str]
    difference: str = ""

    def title(self) -> str:
        """The report's title: what the runs are, then their names ("LWTA U=2 vs dense: a vs b"); with several runs
        of a kind (arms of seeds), each kind once and the number of runs."""
        kinds = list(dict.fromkeys(self.kinds))
        if len(kinds) == len(self.kinds):
            return " vs ".join(self.kinds) + ": " + " vs ".join(self.names)
        return " vs ".join(f"{k} ({self.kinds.count(k)} runs)" for k in kinds)


def run_kind(cfg) -> str:
    """A run's network in two words: "LWTA U=<U>" for LWTA activations, else "dense" (with the activation named
    when it is not ReLU)."""
    act = str(cfg.model.act)
    if act == "lwta":
        return f"LWTA U={cfg.model.U}"
    return "dense" if act == "relu" else f"dense ({act})"


def data_settings(cfg) -> dict[str, str]:
    """The settings of a run's data that decide its probe images and concept set, as ``data.<key>: value``."""
    d = cfg.data
    keys = _SHARED + (_SYNTHETIC if d.name == "synthetic" else ("root",))
    out = {f"data.{k}": str(d.get(k)) for k in keys}
    if d.name != "synthetic" and d.get("root"):
        out["data.root"] = str(Path(str(d.root)).expanduser().resolve())  # one place named two ways is one place
    return out


def check_runs(specs: list[str], force: bool = False, names: list[str] | None = None) -> RunCheck:
    """Read every run's config (:func:`lwtakit.checkpoint.resolve_run`, then the checkpoint's stored config) and
    check, before any work: no run is given twice, the runs' names differ (the report and CSV tell them apart by
    name; ``names``: the ones the caller gives them, default their folders'), and their data agree
    (:func:`data_settings`). A disagreement is a :class:`UserError` naming it, or with ``force`` the
    :attr:`RunCheck.difference` the report starts with."""
    from lwtakit import config as config_lib
    from lwtakit.checkpoint import CONFIG_KEY, read_checkpoint, resolve_run

    seen: dict[Path, str] = {}
    folders, cfgs = [], []
    for spec in specs:
        run_dir, ckpt = resolve_run(spec, say=False)
        if ckpt.resolve() in seen:
            raise UserError(f"{spec} is the run {seen[ckpt.resolve()]} again (checkpoint {ckpt}); a run compared "
                            "with itself shows nothing: give distinct runs")
        seen[ckpt.resolve()] = spec
        in_run = ckpt.resolve().parent.name == "checkpoints"
        folders.append(run_dir.resolve().name if run_dir else ckpt.resolve().parent.parent.name if in_run else
                       ckpt.stem)
        cfgs.append(config_lib.from_dict(read_checkpoint(ckpt)[CONFIG_KEY]))
    names = names or folders
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two runs are named {twice[0]!r}; the report tells runs apart by their folder names, so "
                        "give runs in folders of different names (or rename a folder)")
    return RunCheck(names, [run_kind(c) for c in cfgs], _difference(names, cfgs, force))


def _difference(names: list[str], cfgs: list, force: bool) -> str:
    """The first run's data settings against each other run's, in words ("" when all agree); a UserError
    unless ``force``."""
    first = data_settings(cfgs[0])
    parts = []
    for name, cfg in zip(names[1:], cfgs[1:], strict=True):
        other = data_settings(cfg)
        parts += [f"{key} {first.get(key, '–')} in {names[0]}, {other.get(key, '–')} in {name}"
                  for key in dict.fromkeys([*first, *other]) if first.get(key) != other.get(key)]
    if not parts:
        return ""
    text = ("the runs' data differ (" + "; ".join(parts) + "), so do their probe images and concepts: "
            "their figures are not comparable")
    if not force:
        raise UserError(f"{text}; compare runs trained on the same data, or give --force to compare anyway")
    return f"warning: {text} (compared anyway: --force)"
