"""Checkpoint files without crash windows: written beside their final name and renamed, linked by rename.

Lightning stages a checkpoint in the system's temporary folder and moves it into place; across filesystems the move
is a copy, so a kill or a full disk during it leaves a truncated file under the final name. Here a checkpoint is
written to a hidden file in its own folder, flushed to disk and renamed onto its name (one atomic step on POSIX),
and ``last.ckpt`` is replaced by renaming a new link onto it, so that it always names a complete checkpoint.
A full disk is one :class:`DiskFull` error naming the file, with the previous checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lwtakit.errors import UserError
from lwtakit.io import atomic_write

# errno values that mean "no room left": a full filesystem or an exhausted quota.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(UserError):
    exit_code = 1


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def disk_full(path: str | os.PathLike) -> DiskFull:
    """The one-line error for a write to ``path`` that ran out of space: resume from the previous checkpoint, or,
    where the run has none yet (its folder holds no other complete ``.ckpt``), start it again."""
    path = Path(path)
    # The run's checkpoints/: the file's own folder, or beside it (a log, results.json), or one level up (logs/).
    folders = [d for d in (path.parent, path.parent / "checkpoints", path.parent.parent / "checkpoints")
               if d.name == "checkpoints" and d.is_dir()]
    earlier = [p for d in folders[:1] for p in d.glob("*.ckpt") if p.is_file() and p.resolve() != path.resolve()]
    if earlier:
        return DiskFull(f"disk full while writing {path}; nothing was left half-written and the previous checkpoint "
                        "is intact: free space (or set run_dir to a larger disk) and resume with ckpt_path=last")
    return DiskFull(f"disk full while writing {path}; nothing was left half-written, and the run has no checkpoint "
                    "yet: free space (or set run_dir to a larger disk) and start the run again")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear under their name complete or not at all."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()  # serialised first: torch.save into a file turns a full disk into a RuntimeError
        torch.save(checkpoint, buffer)
        try:
            with atomic_write(path, "wb") as fh:
                fh.write(buffer.getbuffer())
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(path) from None
            raise


def replace_link(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Point the symbolic link ``link`` at ``target`` (relative to the link's folder) in one rename: at every moment
    ``link`` names either the old target or the new one. Where links cannot be made, ``target`` is copied."""
    link = Path(link)
    relative = os.path.relpath(target, link.parent)
    staged = link.with_name(f".{link.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    try:
        os.symlink(relative, staged)
    except OSError:  # no symbolic links here (some Windows accounts, some network filesystems)
        with open(target, "rb") as src, atomic_write(link, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        return
    os.replace(staged, link)
