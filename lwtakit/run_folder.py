"""A run folder has one owner: one run writes it at a time, and a new run never mixes into an earlier one.

A run claims its folder by creating ``.lock`` (exclusively, holding its pid and host); the lock is removed when
the run ends. A lock left by a process that no longer runs on this host (a killed run) is taken over with a note.
A run folder is a direct child of ``run_dir`` named by a plain ``run_name`` (:func:`run_folder`): no separator, no
``..``, not absolute, and (followed through links) still inside ``run_dir``, so that no run writes or removes
anything elsewhere (issue 23). A folder that already holds a run is refused unless the run resumes it
(``ckpt_path=last`` or a checkpoint inside it) or ``overwrite=true`` asks for a clean start, which first removes the
folder's contents; ``overwrite`` removes only a folder recognisably a run (its ``run-id`` file), and a folder that
holds other files is never cleared. The folder's run has an
id (file ``run-id``), also stored in config.yaml and every checkpoint and used as the W&B run id, so that a resume
continues the same W&B run and dissect/compare can tell a folder that mixes two runs (:func:`check_same_run`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import string
import sys
from pathlib import Path

from lwtakit.errors import UserError
from lwtakit.io import atomic_write

LOCK_NAME = ".lock"
RUN_ID_NAME = "run-id"  # the run's id: in config.yaml and every checkpoint too, and its W&B run id
LEGACY_WANDB_ID_NAME = "wandb-id"  # where earlier versions kept the W&B id
# Environment variables that carry a process's rank in a multi-process launch (Lightning's subprocess launcher,
# torchrun, SLURM); the process whose ranks are all 0 (or unset) owns the run folder.
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def launched_as_rank_zero() -> bool:
    """Whether this process was started as global rank 0 (or alone), judged from the launchers' variables."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_ENV)


def resumes(ckpt_path: str | None, run_dir: Path) -> bool:
    """Whether ``ckpt_path`` continues the run of ``run_dir``: ``last``, or a checkpoint inside that folder."""
    if ckpt_path == "last":
        return True
    return bool(ckpt_path) and Path(run_dir).resolve() in Path(ckpt_path).resolve().parents


def run_folder(root: Path, run_name: str) -> Path:
    """``root/run_name``, checked before anything is created: ``run_name`` must be one plain folder name, and the
    folder (followed through symbolic links) a direct child of ``root``."""
    name = str(run_name)
    seps = {os.sep, os.altsep or os.sep, "/"}
    if name in ("", ".", "..") or any(sep in name for sep in seps) or "\0" in name or Path(name).is_absolute():
        raise UserError(f"run_name={name!r} is not a plain folder name (no '/', no '..', not absolute, not empty); "
                        f"a run folder is a direct child of run_dir ({root}): give run_name=NAME and set run_dir "
                        "for the folder above it")
    path = Path(root) / name
    real_root = Path(os.path.realpath(root))
    if (path.is_symlink() or path.exists()) and Path(os.path.realpath(path)).parent != real_root:
        raise UserError(f"run folder {path} is a link to {os.path.realpath(path)}, outside run_dir {root}; "
                        "pick another run_name, or set run_dir to the folder that holds that run")
    return path


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is recognisably a folder of a train.py run: it holds the run's ``run-id`` file (or the
    ``wandb-id`` of earlier versions)."""
    return any((run_dir / name).is_file() and not (run_dir / name).is_symlink()
               for name in (RUN_ID_NAME, LEGACY_WANDB_ID_NAME))


def claim(run_dir: Path, ckpt_path: str | None, overwrite: bool) -> Path:
    """Lock ``run_dir`` for this run and check that the run may write there; returns the lock to :func:`release`.

    With ``overwrite`` the contents of a folder that holds a run (:func:`is_run`) are removed (after the lock is
    held, so a running owner is never touched); a folder with other files is refused, with or without it."""
    if overwrite and resumes(ckpt_path, run_dir):
        raise UserError(f"overwrite=true would delete the checkpoint that ckpt_path={ckpt_path} resumes from; "
                        "drop overwrite=true to resume, or ckpt_path to start clean")
    if not resumes(ckpt_path, run_dir) and holds_files(run_dir) and not is_run(run_dir):
        # Not a run (a folder the user made, a project folder): never cleared, and overwrite is no remedy.
        raise UserError(f"{run_dir} holds files but no run of train.py (no {RUN_ID_NAME} file); nothing there is "
                        "touched: pick another run_name or run_dir")
    lock = acquire_lock(run_dir)
    try:
        if overwrite:
            _clear(run_dir)
        elif not resumes(ckpt_path, run_dir) and holds_files(run_dir):
            raise UserError(f"run folder {run_dir} already holds a run; resume it with ckpt_path=last, pick another "
                            "run_name, or overwrite=true")
    except BaseException:
        release(lock)
        raise
    return lock


def holds_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything besides a lock."""
    return run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())


def _clear(run_dir: Path) -> None:
    """Remove everything inside ``run_dir`` but the lock (links are removed, never followed)."""
    for child in run_dir.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _stamp() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


def acquire_lock(run_dir: Path) -> Path:
    """Create ``run_dir/.lock`` exclusively, holding this process's pid and host; a stale lock is taken over."""
    path = run_dir / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(path, run_dir)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(_stamp())
        return path
    raise UserError(f"run folder {run_dir} is being claimed by other runs at this moment; pick another run_name")


def _take_over_if_stale(path: Path, run_dir: Path) -> None:
    """Remove the lock at ``path`` if its process is gone; otherwise refuse, naming the holder."""
    with contextlib.suppress(FileNotFoundError):  # released in the meantime: try again
        stamp = path.read_text(encoding="utf-8")
        pid, host = _parse(stamp)
        if pid is None or host != socket.gethostname() or _alive(pid):
            holder = f"pid {pid} on {host}" if pid is not None else f"unreadable lock {path}"
            raise UserError(f"run folder {run_dir} is in use by another run ({holder}); wait for it to end or pick "
                            f"another run_name (remove {path} only if no run uses the folder)")
        print(f"note: run folder {run_dir} was locked by pid {pid}, which no longer runs; taking it over",
              file=sys.stderr)
        # Removed only if still the stale stamp just read: a run that took it over meanwhile keeps its lock.
        if path.read_text(encoding="utf-8") == stamp:
            path.unlink()


def _parse(stamp: str) -> tuple[int | None, str]:
    parts = stamp.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return None, ""
    return int(parts[0]), parts[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def release(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    with contextlib.suppress(FileNotFoundError):
        if lock.read_text(encoding="utf-8") == _stamp():
            lock.unlink()


def folder_run_id(run_dir: Path, create: bool = False) -> str | None:
    """The id of the run ``run_dir`` holds (its ``run-id`` file; ``wandb-id`` in folders of earlier versions), or
    with ``create`` a new one (8 characters of [a-z0-9], as W&B makes them) stored there; else None."""
    for name in (RUN_ID_NAME, LEGACY_WANDB_ID_NAME):
        path = run_dir / name
        if path.is_file() and (stored := path.read_text(encoding="utf-8").strip()):
            return stored
    if not create:
        return None
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    with atomic_write(run_dir / RUN_ID_NAME, encoding="utf-8") as fh:
        fh.write(new_id + "\n")
    return new_id


def check_same_run(run_dir: Path, checkpoint: Path, checkpoint_run_id: str | None) -> None:
    """Check that the checkpoint, ``config.yaml`` and the ``run-id`` file of ``run_dir`` belong to one run (files
    of an earlier version carry no id and are not checked); a mix is a :class:`UserError` naming the ids."""
    ids = {"run-id": folder_run_id(run_dir), checkpoint.name: checkpoint_run_id, "config.yaml": _config_run_id(run_dir)}
    known = {where: rid for where, rid in ids.items() if rid}
    if len(set(known.values())) > 1:
        found = ", ".join(f"{where} says {rid}" for where, rid in known.items())
        raise UserError(f"run folder {run_dir} mixes files of different runs ({found}); use the run's own folder, or "
                        "train again with overwrite=true")


def _config_run_id(run_dir: Path) -> str | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path).get("run_id")
    except Exception:  # noqa: BLE001 - an unreadable config.yaml says nothing about the run
        return None
