"""No crash window in checkpointing: a run killed (SIGKILL) at any point, or stopped by a full disk, resumes with
``ckpt_path=last`` to the very weights, labels.csv and metrics.csv of a run that was never interrupted.

The kills are injected at exact points by a driver that patches one function of the real code path in a subprocess
and then runs ``train.main``: mid-epoch (a training step), mid-checkpoint write (half the bytes written), between
the checkpoint and its link, and between creating the new link and putting it in place.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from lwtakit.checkpoint import last_checkpoint, leftovers
from lwtakit.checkpoint_io import replace_link
from lwtakit.errors import UserError
from lwtakit.io import read_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 steps an epoch, INVERT dissection after each; small enough for 9 subprocess runs.
ARGS = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16", "model.width=0.125",
        "trainer.enable_progress_bar=false", "dissection.probe_size=32", "dissection.top_images=4", "logger=csv",
        "trainer.max_epochs=2"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}

# Patches one step of the real code path so that the process kills itself (SIGKILL, no clean-up) at the
# `at`-th call: argv = point, at, then train.py's arguments.
DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import torch
    import train
    from callbacks import run_checkpoint
    from lightning_modules.classifier import LitClassifier
    from lwtakit import checkpoint_io

    point, at, calls = sys.argv[1], int(sys.argv[2]), [0]

    def due():
        calls[0] += 1
        return calls[0] == at

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-epoch":
        step = LitClassifier.training_step
        def training_step(self, batch, batch_idx):
            if self.global_step == at:
                die()
            return step(self, batch, batch_idx)
        LitClassifier.training_step = training_step
    elif point in ("mid-write", "no-space"):
        import contextlib, errno
        real_atomic_write = checkpoint_io.atomic_write

        class Failing:  # the checkpoint file: half the bytes go to disk, then SIGKILL or a full disk
            def __init__(self, fh):
                self.fh = fh
            def write(self, data):
                self.fh.write(bytes(data)[: len(data) // 2])
                self.fh.flush()
                if point == "mid-write":
                    die()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        @contextlib.contextmanager
        def atomic_write(path, *args, **kwargs):
            with real_atomic_write(path, *args, **kwargs) as fh:
                yield Failing(fh) if due() else fh
        checkpoint_io.atomic_write = atomic_write
    elif point == "before-link":
        link = run_checkpoint.replace_link
        def replace_link(target, linkpath):
            if due():
                die()
            link(target, linkpath)
        run_checkpoint.replace_link = replace_link
    elif point == "mid-link":
        symlink = os.symlink
        def staged_symlink(src, dst, *a, **k):
            symlink(src, dst, *a, **k)
            if due():
                die()
        os.symlink = staged_symlink
    sys.exit(train.main(sys.argv[3:]))
""")


def _train(tmp_path, *args, point=None, at=0, expect=0):
    if point is None:
        cmd = [sys.executable, os.path.join(REPO, "train.py")]
    else:
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER.format(repo=REPO))
        cmd = [sys.executable, str(driver), point, str(at)]
    done = subprocess.run([*cmd, f"run_dir={tmp_path}", *ARGS, *args], cwd=tmp_path, env=ENV, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def _outcome(run_dir):
    """Final weights, labels.csv rows, metrics.csv rows (without wall-time columns and empty cells)."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    metrics = [{k: v for k, v in row.items() if v != "" and "seconds" not in k}
               for row in read_csv(run_dir / "logs" / "metrics.csv")]
    return state, read_csv(run_dir / "labels.csv"), metrics


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    _train(tmp, "run_name=straight")
    return _outcome(tmp / "straight")


def _assert_same(run_dir, straight):
    state, labels, metrics = _outcome(run_dir)
    ref_state, ref_labels, ref_metrics = straight
    assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state)
    assert labels == ref_labels
    assert metrics == ref_metrics
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=1-step=8.ckpt", "last.ckpt"]  # nothing left over


# The second (last) epoch's checkpoint is the 2nd write; its link the 2nd link, made when training ends (the 1st,
# when epoch 1 starts, links epoch 0's checkpoint).
POINTS = [("mid-epoch", 6), ("mid-write", 2), ("before-link", 2), ("mid-link", 2)]


@pytest.mark.parametrize("point, at", [
    pytest.param(p, at, marks=[] if p in ("mid-epoch", "before-link") else [pytest.mark.slow]) for p, at in POINTS])
def test_sigkill_at_each_point_then_resume_equals_an_uninterrupted_run(point, at, tmp_path, straight):
    killed = _train(tmp_path, "run_name=run", point=point, at=at, expect=-9)
    assert "error" not in killed.stderr
    ckpts = tmp_path / "run" / "checkpoints"
    # last.ckpt names a complete checkpoint at every kill point: the one of the first epoch.
    assert zipfile.is_zipfile(ckpts / "last.ckpt")
    assert os.path.realpath(ckpts / "last.ckpt").endswith("epoch=0-step=4.ckpt")
    _train(tmp_path, "run_name=run", "ckpt_path=last")
    _assert_same(tmp_path / "run", straight)


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_disk_full_is_one_line_and_a_resume_after_freeing_space_completes(tmp_path, straight):
    """A run folder on a 3 MB tmpfs: the first checkpoint (about 2 MB) fits, the second does not. The run ends with
    one ``error:`` line, the first checkpoint intact and last.ckpt naming it; after the filesystem is grown, the
    resume ends where an uninterrupted run does."""
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "3m")
    if not mounted:  # not root: the second checkpoint's write raises ENOSPC half-way instead
        disk.mkdir(exist_ok=True)
    try:
        failed = _train(disk, "run_name=run", expect=1, **({} if mounted else {"point": "no-space", "at": 2}))
        lines = failed.stderr.strip().splitlines()
        assert lines[-1].startswith("error: disk full while writing") and "Traceback" not in failed.stderr
        ckpts = disk / "run" / "checkpoints"
        assert os.path.realpath(ckpts / "last.ckpt").endswith("epoch=0-step=4.ckpt")
        assert all(zipfile.is_zipfile(p) for p in ckpts.glob("*.ckpt"))
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        _train(disk, "run_name=run", "ckpt_path=last")
        _assert_same(disk / "run", straight)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True)


# --- the pieces, in-process --------------------------------------------------------------------------------------
def test_replace_link_moves_the_link_and_never_leaves_a_staged_file(tmp_path):
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / name).write_bytes(name.encode())
    link = tmp_path / "last.ckpt"
    replace_link(tmp_path / "a.ckpt", link)
    replace_link(tmp_path / "b.ckpt", link)
    assert link.is_symlink() and os.readlink(link) == "b.ckpt" and link.read_bytes() == b"b.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "last.ckpt"]


def _ckpt(path, value=0):
    torch.save({"x": torch.tensor(value)}, path)
    return path


def test_last_checkpoint_falls_back_to_the_newest_complete_checkpoint_with_a_note(tmp_path):
    _ckpt(tmp_path / "epoch=0-step=4.ckpt")
    _ckpt(tmp_path / "epoch=1-step=8.ckpt")
    full = (tmp_path / "epoch=1-step=8.ckpt").read_bytes()
    (tmp_path / "epoch=2-step=12.ckpt").write_bytes(full[: len(full) // 2])  # truncated: never chosen
    os.symlink("epoch=9-step=99.ckpt", tmp_path / "last.ckpt")  # dangling
    path, note = last_checkpoint(tmp_path)
    assert path.name == "epoch=1-step=8.ckpt"
    assert note.startswith("note: ") and "dangling" in note and "epoch=1-step=8.ckpt" in note
    (tmp_path / "last.ckpt").unlink()
    os.symlink("epoch=0-step=4.ckpt", tmp_path / "last.ckpt")
    assert last_checkpoint(tmp_path) == (tmp_path / "last.ckpt", None)
    for p in tmp_path.iterdir():
        p.unlink()
    with pytest.raises(UserError, match="no complete checkpoint"):
        last_checkpoint(tmp_path)


def test_leftovers_are_staged_files_and_later_checkpoints_only(tmp_path):
    for name in ("epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", ".epoch=2-step=12.ckpt.x.tmp",
                 ".last.ckpt.7.link", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink("epoch=1-step=8.ckpt", tmp_path / "last.ckpt")
    assert [p.name for p in leftovers(tmp_path, 8)] == [".epoch=2-step=12.ckpt.x.tmp", ".last.ckpt.7.link",
                                                        "epoch=2-step=12.ckpt"]
