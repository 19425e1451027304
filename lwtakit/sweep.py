"""``train.py -m``: a sweep of runs through Hydra's multirun, one complete run folder per point (issue 19).

Every point of the sweep (the product of the ``key=a,b`` overrides, Hydra's basic sweeper) is composed and checked
before any training, so a bad value in any point is one error line and nothing is written. Hydra's launcher then
runs the points: ``basic`` (one after another, in this process), ``submitit_local`` or ``submitit_slurm`` / the
shipped ``hydra/launcher=slurm`` (one job per point). Each point trains in ``SWEEP/POINT``, named by the swept keys
(``model.U=2,seed=3``), with the project's run-folder ownership (lwtakit/run_folder.py): a point whose folder holds
``results.json`` is complete and skipped untouched; one holding a checkpoint resumes from it (``ckpt_path=last``).
A failed point does not stop the others; the sweep ends with a table of every point and lists the failed ones.
Hydra writes nothing of its own into a point's folder (no ``.hydra/``, no log file, no change of directory); the
sweep folder gets Hydra's ``multirun.yaml`` (the sweep's composed config) and, with submitit, ``.submitit/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from omegaconf import DictConfig

from lwtakit.compose import PRIMARY_NAME, compose_config, finish, parse_overrides, register, task_overrides
from lwtakit.config import CONFIG_DIR
from lwtakit.errors import UserError

# Keys that place or restart the run: the sweep sets them per point.
PER_POINT = ("run_name", "run_dir", "ckpt_path")
COMPLETE_MARK = "results.json"  # written last by a run that trained and tested (train.py's _fit)


@dataclass
class SweepPlan:
    """What every point of a sweep shares; picklable, so that submitit can send it with the task to a job."""

    config: str | None  # the experiment (name or YAML path)
    overrides: list[str]  # the command line's overrides, sweeps included
    sweep_dir: Path
    swept: list[str]  # keys that take several values: they name the point folders
    repo: str  # the folder of train.py, importable in a launcher's fresh process
    points: list[list[str]] = field(default_factory=list)


def plan_sweep(config: str | None, overrides: list[str], repo: str) -> SweepPlan:
    """Parse the sweep, compose and validate every point (one error line before anything runs) and place the sweep
    folder: ``run_dir/run_name``, or ``run_dir/<experiment>-sweep-<digest of the overrides>`` so that re-running the
    same command finds the same folder (and resumes it)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(overrides, multirun=True)
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    for key in swept:
        if key in PER_POINT or key.startswith("hydra"):
            raise UserError(f"'{key}' cannot be swept: {', '.join(PER_POINT)} are set per point by the sweep")
    for o in parsed:
        if o.get_key_element() == "ckpt_path":
            raise UserError("ckpt_path is set per point by a sweep; run the same -m command again to resume it")
    tasks = [o for o in parsed if not o.get_key_element().lstrip("+~").startswith("hydra")]
    # The fixed overrides as Hydra applies them (in order, repeats included), then every point of the sweeps.
    compose_config(config, [o.input_line for o in tasks if not o.is_sweep_override()])
    for o in tasks:
        if o.is_sweep_override() and not o.is_discrete_sweep():  # interval(a,b): a range, not points to run
            raise UserError(f"'{o.input_line}' is not a list of points; give the values to train: a,b,c, "
                            "range(start,stop[,step]) or choice(a,b)")
    points = BasicSweeper.split_arguments(tasks, None)[0]
    first = None
    for point in points:
        try:
            cfg = compose_config(config, point)
        except UserError as exc:
            name = ",".join(p for p in point if p.partition("=")[0] in swept)
            raise UserError(f"sweep point {name}: {exc}") from None
        first = first or cfg
    if first.run_name:
        name = first.run_name
    else:
        digest = hashlib.sha256(json.dumps([config, [o for o in task_overrides(overrides) if not
                                                     o.startswith("overwrite=")]]).encode()).hexdigest()[:8]
        name = f"{first.experiment}-sweep-{digest}"
    return SweepPlan(config, list(overrides), Path(first.run_dir).absolute() / name, swept, repo, points)


def hydra_settings(plan: SweepPlan) -> list[str]:
    """Hydra's own settings for a sweep: the project's folders, no change of directory, no files of Hydra's in a
    point folder, logging left to the project."""
    others = sorted({o.partition("=")[0].lstrip("+~") for o in task_overrides(plan.overrides)} - set(plan.swept))
    quoted = str(plan.sweep_dir).replace("\\", "\\\\").replace("'", "\\'")
    return ["hydra.job.chdir=False", "hydra.output_subdir=null", "hydra/job_logging=none",
            "hydra/hydra_logging=none", f"hydra.sweep.dir='{quoted}'",
            "hydra.sweep.subdir=" + ("${hydra.job.override_dirname}" if plan.swept else "run"),
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(others)}]"]


def run_sweep(plan: SweepPlan) -> list[dict]:
    """Run every point with the launcher the overrides pick (``hydra/launcher=...``; basic by default)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    register(plan.config)
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="train", config_search_path=create_config_search_path(str(CONFIG_DIR)))
    try:
        batches = hydra.multirun(config_name=PRIMARY_NAME, task_function=partial(run_point, plan),
                                 overrides=[*plan.overrides, *hydra_settings(plan)])
    except HydraException as exc:  # a launcher that cannot start (e.g. hydra/launcher=nope): one line
        raise UserError(f"the sweep could not be launched: {str(exc).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()
    return [job.return_value for batch in batches for job in batch]


def point_state(folder: Path) -> str:
    """``complete`` (trained and tested), ``interrupted`` (a checkpoint to resume from) or ``new``."""
    if (folder / COMPLETE_MARK).is_file():
        return "complete"
    if any((folder / "checkpoints").glob("*.ckpt")):
        return "interrupted"
    return "new"


def run_point(plan: SweepPlan, composed: DictConfig) -> dict:
    """Hydra's task for one point: skip it when complete, resume it when interrupted, else train it; returns its
    record for the sweep's table. Any failure is caught and recorded, so the other points still run."""
    from hydra.core.hydra_config import HydraConfig

    from lwtakit.run_folder import launched_as_rank_zero

    folder = Path(HydraConfig.get().runtime.output_dir)
    point = os.path.relpath(folder, plan.sweep_dir)
    record = {"point": point, "folder": str(folder), "status": "failed", "metrics": {}, "message": ""}
    try:
        cfg = finish(composed)
        cfg.run_dir, cfg.run_name = str(folder.parent), folder.name
        slurm_devices(cfg, os.environ)
        state = "new" if cfg.overwrite else point_state(folder)
        if state == "complete":
            print(f"sweep: {point} is complete, skipped ({folder})", file=sys.stderr)
            record.update(status="skipped (complete)", metrics=json.loads((folder / COMPLETE_MARK).read_text()))
            return record
        if state == "interrupted":
            print(f"sweep: {point} was interrupted; resuming it from its last checkpoint", file=sys.stderr)
            cfg.ckpt_path = "last"
        if launched_as_rank_zero() and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # made by Hydra for the job; train.py owns (and cleans up) a folder it makes itself
        result = _train_module(plan.repo).train(cfg)
        record.update(status="resumed" if state == "interrupted" else "trained", metrics=result.metrics)
    except UserError as exc:
        record["message"] = str(exc)
        print(f"error: sweep point {point}: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - one point's crash must not end the sweep; its traceback is shown
        record["message"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc()
    return record


def _train_module(repo: str):
    """train.py as a module, also in a launcher's fresh process (whose path may not hold the repository)."""
    if repo not in sys.path:
        sys.path.insert(0, repo)
    import train

    return train


def slurm_devices(cfg: DictConfig, env: os._Environ | dict) -> None:
    """On a SLURM job (submitit_slurm) with the config's default placement, one process per task: Lightning's DDP
    needs ``trainer.devices`` = tasks per node and ``trainer.num_nodes`` = nodes, which SLURM's environment gives."""
    if "SLURM_JOB_ID" not in env or "SLURM_NTASKS_PER_NODE" not in env:
        return
    if cfg.trainer.devices == "auto":
        cfg.trainer.devices = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
    if cfg.trainer.num_nodes == 1 and env.get("SLURM_JOB_NUM_NODES"):
        cfg.trainer.num_nodes = int(env["SLURM_JOB_NUM_NODES"])


def _heldout_f1(folder: Path) -> float | None:
    """The mean held-out F1 of the labels of the run's last training-time dissection (labels.csv), if any."""
    from lwtakit.io import read_csv

    path = folder / "labels.csv"
    rows = read_csv(path) if path.is_file() else []
    if not rows:
        return None
    last = max(int(r["epoch"]) for r in rows)
    f1 = [float(r["heldout_f1"]) for r in rows if int(r["epoch"]) == last and r.get("heldout_f1") not in (None, "")]
    return sum(f1) / len(f1) if f1 else None


def _row(record: dict) -> list[str]:
    from lwtakit.run_summary import final_accuracy

    metrics = record["metrics"] or {}
    accuracy = " ".join(f"{m} {v:.1%}" for m, v in final_accuracy(metrics).items()) or "-"
    active = [v for k, v in metrics.items() if k.startswith("sparsity/") and k.endswith("/active_fraction")]
    f1 = _heldout_f1(Path(record["folder"])) if record["status"] != "failed" else None
    return [record["point"], record["status"], accuracy, f"{sum(active) / len(active):.3f}" if active else "-",
            f"{f1:.3f}" if f1 is not None else "-", record["folder"]]


def sweep_table(plan: SweepPlan, records: list[dict]) -> list[str]:
    """The sweep's closing lines: one row per point (test accuracy per mode, mean active fraction of the activation
    layers, mean held-out F1 of the last dissection, run folder), the failed points, the compare command."""
    head = ["point", "status", "test accuracy", "active", "held-out F1", "run folder"]
    rows = [head] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = [f"sweep: {plan.sweep_dir} ({len(records)} points)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines.append(f"failed points ({len(failed)}): run the same command again to retry them")
        lines += [f"  {r['point']}: {r['message']}" for r in failed]
    lines.append(f"next: analyze.py compare {plan.sweep_dir}/*/ --out reports/{plan.sweep_dir.name}")
    return lines
