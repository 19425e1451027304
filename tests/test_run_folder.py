"""A run folder has one owner: no run mixes into another's folder, two runs never write one folder at once, and a
resume continues the folder's metrics history and W&B run."""

import csv
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

import train as train_script
from lwtakit import run_folder
from lwtakit.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 4 steps an epoch, a metrics row every 2 steps, no dissection: seconds per run.
TINY = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16", "model.width=0.125",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2", "dissection.enabled=false",
        "optim.schedule=none", "logger=csv"]


def args(tmp_path, *extra):
    return [f"run_dir={tmp_path}", "run_name=r", *TINY, *extra]


def snapshot(folder):
    """Every file below ``folder`` with its bytes: what a refused run must leave as it was."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(argv, capsys):
    code = train_script.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def one_error(err, fragment):
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], err


def read_metrics(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def held_run(tmp_path):
    """A folder as a finished run leaves it (without training one): a config, a checkpoint link, metrics."""
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / run_folder.RUN_ID_NAME).write_text("abcd1234\n")  # what marks the folder as a run's (issue 23)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints" / "epoch=7-step=32.ckpt").write_bytes(b"weights")
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text("epoch,step,train/loss\n0,1,2.0\n")
    return run


def test_a_new_run_in_a_folder_that_holds_a_run_is_refused_and_changes_nothing(tmp_path, capsys):
    run = held_run(tmp_path)
    before = snapshot(run)
    code, err = run_main(args(tmp_path, "trainer.max_epochs=1"), capsys)
    assert code == 2
    one_error(err, f"run folder {run} already holds a run; resume it with ckpt_path=last, pick another run_name, "
                   "or overwrite=true")
    assert snapshot(run) == before and not (run / run_folder.LOCK_NAME).exists()


def test_a_checkpoint_of_another_folder_does_not_resume_this_one(tmp_path, capsys):
    run = held_run(tmp_path)
    other = tmp_path / "elsewhere.ckpt"
    other.write_bytes(b"weights")
    before = snapshot(run)
    code, err = run_main(args(tmp_path, "trainer.max_epochs=1", f"ckpt_path={other}"), capsys)
    assert code == 2
    one_error(err, "already holds a run")
    assert snapshot(run) == before


def test_overwrite_starts_clean_and_removes_only_what_is_inside_the_folder(tmp_path):
    run = held_run(tmp_path)
    outside = tmp_path / "keep.txt"
    outside.write_text("not the run's")
    (run / "link").symlink_to(outside)
    (run / "plots").mkdir()
    (run / "plots" / "old.png").write_bytes(b"png")
    result = train_script.train(load_config("default", args(tmp_path, "trainer.max_epochs=1", "overwrite=true")))
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() or p.is_symlink()}
    assert not {"link", "plots/old.png", "checkpoints/epoch=7-step=32.ckpt"} & files
    assert {"config.yaml", "checkpoints/last.ckpt", "logs/metrics.csv"} <= files
    assert outside.read_text() == "not the run's"
    header, rows = read_metrics(run)
    assert "train/loss_step" in header and rows[0]["step"] != "1"
    assert result.run_dir == run and not (run / run_folder.LOCK_NAME).exists()


def test_overwrite_with_a_resume_of_the_same_folder_is_refused(tmp_path, capsys):
    run = held_run(tmp_path)
    before = snapshot(run)
    code, err = run_main(args(tmp_path, "ckpt_path=last", "overwrite=true"), capsys)
    assert code == 2
    one_error(err, "overwrite=true would delete the checkpoint that ckpt_path=last resumes from")
    assert snapshot(run) == before


@pytest.mark.parametrize("extra", [[], ["overwrite=true"], ["ckpt_path=last"]])
def test_a_folder_locked_by_a_running_run_is_refused_and_left_alone(tmp_path, capsys, extra):
    """A second run on the folder of a live one (here a sleeping process holds the lock) refuses, even with
    overwrite=true or as a resume, and neither the lock nor the first run's files change."""
    run = held_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / run_folder.LOCK_NAME).write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = snapshot(run)
        code, err = run_main(args(tmp_path, "trainer.max_epochs=1", *extra), capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    one_error(err, f"run folder {run} is in use by another run (pid {holder.pid} on {socket.gethostname()})")
    assert snapshot(run) == before


def test_a_second_train_py_on_the_folder_of_a_running_one_refuses_and_the_first_finishes(tmp_path, capsys):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args(tmp_path, "trainer.max_epochs=3")],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "r" / run_folder.LOCK_NAME
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not lock.exists():
            time.sleep(0.1)
        assert first.poll() is None and lock.exists(), "the first run ended before it held the folder"
        code, err = run_main(args(tmp_path, "trainer.max_epochs=1"), capsys)
        _, first_err = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert code == 2
    one_error(err, f"is in use by another run (pid {first.pid} on {socket.gethostname()})")
    assert first.returncode == 0, first_err[-2000:]
    # The folder holds the first run alone: its 3 epochs, one checkpoint link, and no lock left behind.
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["epoch=2-step=12.ckpt", "last.ckpt"]
    assert {r["epoch"] for r in read_metrics(tmp_path / "r")[1]} == {"0", "1", "2", "3", ""}
    assert not lock.exists()


def test_a_stale_lock_is_taken_over_with_a_note_and_released_at_exit(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid no longer runs
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / run_folder.LOCK_NAME).write_text(f"{gone.pid} {socket.gethostname()}\n")
    code, err = run_main(args(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=1"), capsys)
    assert code == 0, err
    notes = [line for line in err if line.startswith("note: ")]
    assert len(notes) == 1 and f"locked by pid {gone.pid}, which no longer runs" in notes[0], err
    assert not (tmp_path / "r" / run_folder.LOCK_NAME).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path, capsys):
    code, err = run_main(args(tmp_path, "ckpt_path=last"), capsys)  # nothing to resume: a one-line error
    assert code == 2 and err[-1].startswith("error: ckpt_path=last but")
    assert not (tmp_path / "r" / run_folder.LOCK_NAME).exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    code, err = run_main(args(tmp_path, "data=mnist", f"data.root={tmp_path / 'absent.npz'}"), capsys)
    assert code == 2 and err[-1].startswith("error: ") and "absent.npz" in err[-1]
    assert not (tmp_path / "r").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is theirs: left in place, even empty
    code, err = run_main([*args(tmp_path, "data=mnist", f"data.root={tmp_path / 'absent.npz'}"), "run_name=kept"],
                         capsys)
    assert code == 2 and (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("env, owner", [({}, True), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
                                        ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1"}, False),
                                        ({"RANK": "3"}, False), ({"SLURM_PROCID": "2"}, False)])
def test_only_the_process_launched_as_rank_zero_owns_the_folder(monkeypatch, env, owner):
    for name in run_folder.RANK_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_folder.launched_as_rank_zero() is owner


# --- a resume continues the folder's history --------------------------------------------------------
@pytest.fixture(scope="module")
def straight_and_resumed(tmp_path_factory):
    """An uninterrupted 2-epoch run, and a 1-epoch run resumed to 2 epochs; both log to CSV and offline W&B."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        # with a dissection every epoch: its metrics rows belong to the checkpoint of their epoch
        common = [f"run_dir={root}", *TINY, "logger=wandb", "dissection.enabled=true", "dissection.probe_size=32",
                  "dissection.top_images=4", "dissection.passes=1"]
        straight = train_script.train(load_config("default", [*common, "run_name=straight", "trainer.max_epochs=2"]))
        train_script.train(load_config("default", [*common, "run_name=resumed", "trainer.max_epochs=1"]))
        # A row the interrupted run would have logged after its checkpoint: the resume drops it.
        with open(root / "resumed" / "logs" / "metrics.csv", "a", newline="") as fh:
            csv.DictWriter(fh, read_metrics(root / "resumed")[0]).writerow({"epoch": 1, "step": 99})
        resumed = train_script.train(load_config("default", [*common, "run_name=resumed", "trainer.max_epochs=2",
                                                             "ckpt_path=last"]))
    return straight.run_dir, resumed.run_dir


def test_resume_keeps_the_metrics_history_row_for_row(straight_and_resumed):
    straight, resumed = (read_metrics(run) for run in straight_and_resumed)
    assert straight[0] == resumed[0]  # the same header
    assert {int(r["epoch"]) for r in straight[1] if r["epoch"]} == {0, 1, 2}  # 2 epochs, then the test
    assert any(k.startswith("dissection/") for k in straight[0])
    # The project's resume is exact (weights, RNG states): the same rows, values included, except wall time.
    def timeless(rows):
        return [{k: v for k, v in r.items() if not k.endswith("seconds_total")} for r in rows]

    assert timeless(straight[1]) == timeless(resumed[1])


def test_resume_continues_the_folders_wandb_run(straight_and_resumed):
    resumed = straight_and_resumed[1]
    offline = sorted((resumed / "wandb").glob("offline-run-*"))
    assert len(offline) == 2, offline
    stored = (resumed / run_folder.RUN_ID_NAME).read_text().strip()
    assert {path.name.rsplit("-", 1)[1] for path in offline} == {stored}
    straight = straight_and_resumed[0]
    assert (straight / run_folder.RUN_ID_NAME).read_text().strip() != stored  # one id per folder


def test_every_file_of_a_folder_carries_its_run_id(straight_and_resumed):
    from omegaconf import OmegaConf

    run = straight_and_resumed[1]
    run_id = (run / run_folder.RUN_ID_NAME).read_text().strip()
    assert OmegaConf.load(run / "config.yaml").run_id == run_id
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        assert torch.load(ckpt, weights_only=True)["lwtakit_config"]["run_id"] == run_id


def test_a_folder_holding_another_runs_checkpoint_is_refused_by_dissect_compare_explain_and_resume(
        straight_and_resumed, tmp_path, capsys):
    """The checkpoint of one run copied into another's folder: every command that reads the folder says so in
    one line, before any work."""
    from lwtakit.checkpoint import load_run
    from lwtakit.errors import UserError

    straight, resumed = straight_and_resumed
    mixed = tmp_path / "mixed"
    shutil.copytree(resumed, mixed, symlinks=True)
    last = mixed / "checkpoints" / "last.ckpt"
    target = last.resolve()
    target.write_bytes((straight / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(UserError, match="mixes files of different runs"):
        load_run(str(mixed))
    code, err = run_main([f"run_dir={tmp_path}", "run_name=mixed", *TINY, "trainer.max_epochs=3", "ckpt_path=last"],
                         capsys)
    one_error(err, "mixes files of different runs")
    assert code == 2
