"""Issue 23, the training side: a run writes and removes only inside its own folder below run_dir; a finished run
resumed changes nothing; a run killed during its final test resumes to the uninterrupted run's results; a resume
that changes the config says so or refuses; Ctrl-C, a full disk and a folder given as a checkpoint are one line."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import train as train_script
from lwtakit import run_folder
from lwtakit.checkpoint_io import disk_full
from lwtakit.errors import UserError
from lwtakit.resume import config_changes
from lwtakit.run_summary import summary_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 steps an epoch, no progress bar; seconds per run.
TINY = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16", "model.width=0.125",
        "trainer.enable_progress_bar=false", "optim.schedule=none", "logger=csv"]
# A training-time dissection (labels.csv) and the mc mode, so the files a resume must leave alone all exist.
FULL = [*TINY, "dissection.probe_size=32", "dissection.top_images=4", "dissection.passes=1",
        "eval.modes=[sample,argmax,mc]", "eval.mc_samples=2"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(argv, capsys):
    code = train_script.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip().splitlines()


def one_error(err, fragment):
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], err
    return errors[0]


def outside_folder(tmp_path):
    """A folder with a file and a sub-folder that is no run: what the issue's trial lost."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "important.txt").write_text("keep me")
    (folder / "sub" / "notes.txt").write_text("and me")
    return folder


# --- the run folder stays below run_dir ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", "/ABS", "../escape", "a/b", "."])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused_before_anything_is_written(tmp_path, capsys, name):
    mine = outside_folder(tmp_path)
    runs = tmp_path / "runs"
    name = name.replace("/ABS", str(mine))
    before = snapshot(tmp_path)
    code, _, err = run_main([f"run_dir={runs}", f"run_name={name}", *TINY, "overwrite=true"], capsys)
    assert code == 2
    line = one_error(err, "is not a plain folder name")
    assert "overwrite" not in line
    assert snapshot(tmp_path) == before and not runs.exists()  # nothing created, nothing removed


def test_run_name_dotdot_never_reaches_the_parent_of_run_dir_or_another_run_in_it(tmp_path, capsys):
    """The issue's case: run_dir=R run_name=.. overwrite=true removed R's parent's files and a run beside R."""
    parent = tmp_path / "project"
    (parent / "other_run").mkdir(parents=True)
    (parent / "other_run" / run_folder.RUN_ID_NAME).write_text("zzzz0000\n")
    (parent / "README").write_text("project")
    runs = parent / "R"
    runs.mkdir()
    before = snapshot(tmp_path)
    code, _, err = run_main([f"run_dir={runs}", "run_name=..", *TINY, "overwrite=true"], capsys)
    assert code == 2 and snapshot(tmp_path) == before
    one_error(err, "run_name='..' is not a plain folder name")


@pytest.mark.parametrize("extra", [[], ["overwrite=true"]])
def test_a_folder_that_holds_no_run_is_never_cleared(tmp_path, capsys, extra):
    mine = outside_folder(tmp_path)
    before = snapshot(mine)
    code, _, err = run_main([f"run_dir={tmp_path}", "run_name=mine", *TINY, *extra], capsys)
    assert code == 2
    line = one_error(err, f"{mine} holds files but no run of train.py (no run-id file); nothing there is touched")
    assert "overwrite" not in line  # overwrite is no remedy for a folder that is not a run
    assert snapshot(mine) == before and not (mine / run_folder.LOCK_NAME).exists()


def test_a_run_folder_that_links_outside_run_dir_is_refused(tmp_path, capsys):
    """A link named like a run, pointing to a folder outside run_dir (even one marked as a run): not followed."""
    elsewhere = outside_folder(tmp_path)
    (elsewhere / run_folder.RUN_ID_NAME).write_text("abcd1234\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "r").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    code, _, err = run_main([f"run_dir={runs}", "run_name=r", *TINY, "overwrite=true"], capsys)
    assert code == 2
    one_error(err, f"run folder {runs / 'r'} is a link to {elsewhere}, outside run_dir {runs}")
    assert snapshot(elsewhere) == before


def test_run_folder_accepts_plain_names_and_links_inside_run_dir(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert run_folder.run_folder(tmp_path, "my run-1") == tmp_path / "my run-1"
    assert run_folder.run_folder(tmp_path, "alias") == tmp_path / "alias"


# --- resuming a finished run, a run killed during its final test, a changed config ---------------------------------
KILL_IN_TEST = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import train
    from lightning_modules.classifier import LitClassifier

    def test_step(self, batch, batch_idx):  # the final test: killed (no clean-up) at its first batch
        os.kill(os.getpid(), signal.SIGKILL)
    LitClassifier.test_step = test_step
    sys.exit(train.main(sys.argv[1:], fast_matmul=True))  # as train.py's command line runs it
""")


def _train(root, *args, driver=None, expect=0):
    cmd = [sys.executable, str(driver)] if driver else [sys.executable, os.path.join(REPO, "train.py")]
    done = subprocess.run([*cmd, f"run_dir={root}", *FULL, *args], cwd=root, env=ENV, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def _timeless(results):
    return {k: v for k, v in results.items() if "seconds" not in k}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 1-epoch run, and the same run killed during its final test."""
    root = tmp_path_factory.mktemp("resume")
    straight = _train(root, "run_name=straight", "trainer.max_epochs=1")
    driver = root / "kill_in_test.py"
    driver.write_text(KILL_IN_TEST.format(repo=REPO))
    _train(root, "run_name=killed", "trainer.max_epochs=1", driver=driver, expect=-signal.SIGKILL)
    return root, straight.stdout


@pytest.mark.slow  # trains: tens of seconds
def test_the_summary_reports_mc_accuracy_when_it_was_evaluated(runs):
    root, stdout = runs
    results = json.loads((root / "straight" / "results.json").read_text())
    assert f"mc {results['test/acc_mc']:.1%}" in stdout and "fit-metrics.json" not in os.listdir(root / "straight")


@pytest.mark.slow  # trains: tens of seconds
def test_a_finished_run_resumed_writes_nothing_and_says_so_in_one_line(runs, capsys):
    root, _ = runs
    run = root / "straight"
    before = snapshot(run)
    assert (run / "labels.csv").is_file()
    code, out, err = run_main([f"run_dir={root}", "run_name=straight", *FULL, "trainer.max_epochs=1",
                               "ckpt_path=last"], capsys)
    assert code == 0, err
    assert out == [f"run {run} already finished at epoch 1; nothing to do (its results.json stands): to train more, "
                   "resume with run_name=straight ckpt_path=last trainer.max_epochs=N (N > 1)"]
    assert snapshot(run) == before  # results.json, config.yaml, labels.csv, metrics.csv: byte for byte


@pytest.mark.slow  # trains: tens of seconds
def test_a_run_killed_during_its_final_test_resumes_to_the_uninterrupted_runs_results(runs, capsys):
    root, _ = runs
    killed = root / "killed"
    assert not (killed / "results.json").exists() and (killed / "fit-metrics.json").is_file()
    # A resume that changes what is trained is refused, the folder untouched (but the killed run's stale lock).
    (killed / run_folder.LOCK_NAME).unlink()
    before = snapshot(killed)
    code, _, err = run_main([f"run_dir={root}", "run_name=killed", *FULL, "trainer.max_epochs=1", "ckpt_path=last",
                             "optim.lr=0.01", "seed=5"], capsys)
    assert code == 2 and snapshot(killed) == before
    one_error(err, "with a changed config (optim.lr: 0.003 -> 0.01, seed: 0 -> 5)")
    _train(root, "run_name=killed", "trainer.max_epochs=1", "ckpt_path=last")
    straight = json.loads((root / "straight" / "results.json").read_text())
    resumed = json.loads((killed / "results.json").read_text())
    assert len(straight) > 20 and _timeless(resumed) == _timeless(straight)  # whole, and the same test draws
    assert not (killed / "fit-metrics.json").exists()


@pytest.mark.slow  # trains: tens of seconds
def test_a_finished_run_trains_more_when_asked_and_says_what_changed(runs, tmp_path):
    root = tmp_path  # a copy (times kept): the other tests keep the finished run
    run = root / "straight"
    shutil.copytree(runs[0] / "straight", run, symlinks=True)
    # More epochs, and where the run logs: allowed, and said in one note; the run trains its second epoch.
    err = _train(root, "run_name=straight", "trainer.max_epochs=2", "ckpt_path=last", "logger=none").stderr
    notes = [line for line in err.splitlines() if line.startswith("note: resuming with a changed config")]
    # the copy's run_dir differs too: a moved run folder is said, not refused
    assert notes == [f"note: resuming with a changed config: logger: csv -> none, run_dir: {runs[0]} -> {root}, "
                     "trainer.max_epochs: 1 -> 2"], err
    assert os.readlink(run / "checkpoints" / "last.ckpt").endswith("epoch=1-step=8.ckpt")


def test_which_config_changes_a_resume_refuses_and_which_it_notes():
    stored = {"seed": 0, "trainer": {"max_epochs": 10, "devices": 1}, "optim": {"lr": 0.1}, "ckpt_path": None,
              "dissection": {"every_n_epochs": 1}}
    assert config_changes(stored, {**stored, "ckpt_path": "last"}, "c") is None
    note = config_changes(stored, {**stored, "trainer": {"max_epochs": 12, "devices": 2},
                                   "dissection": {"every_n_epochs": 2}}, "c")
    assert note == ("note: resuming with a changed config: dissection.every_n_epochs: 1 -> 2, trainer.devices: 1 -> 2, "
                    "trainer.max_epochs: 10 -> 12")
    with pytest.raises(UserError, match=r"resuming c with a changed config \(trainer.max_epochs: 10 -> 5\)"):
        config_changes(stored, {**stored, "trainer": {"max_epochs": 5, "devices": 1}}, "c")
    with pytest.raises(UserError, match=r"\(optim.lr: 0.1 -> 0.2\)"):
        config_changes(stored, {**stored, "optim": {"lr": 0.2}}, "c")


# --- one line, not a traceback -------------------------------------------------------------------------------------
@pytest.mark.slow  # trains: tens of seconds
def test_ctrl_c_during_training_is_one_line_exit_130_and_releases_the_folder(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "train.py"), f"run_dir={tmp_path}", "run_name=r", *TINY,
           "dissection.enabled=false", "trainer.max_epochs=50"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ckpts = tmp_path / "r" / "checkpoints"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (ckpts / "last.ckpt").exists():
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "error: interrupted (Ctrl-C); a run with a checkpoint resumes with ckpt_path=last", err
    assert not (tmp_path / "r" / run_folder.LOCK_NAME).exists()
    assert not list(ckpts.glob(".*"))  # no staged file left behind


def test_model_u_that_does_not_divide_the_widths_is_one_line(tmp_path, capsys):
    code, _, err = run_main([f"run_dir={tmp_path}", "run_name=r", *TINY, "model.U=3", "model.width=1.0"], capsys)
    assert code == 2 and not (tmp_path / "r").exists()
    one_error(err, "model.U=3 does not divide the layer widths 64, 128, 256, 512 (model.width=1.0); "
                   "U in {2, 4, 8, 16, 32, 64} divides them all")


def test_a_folder_given_as_ckpt_path_says_it_is_a_folder_and_what_to_pass(tmp_path, capsys):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    code, _, err = run_main([f"run_dir={tmp_path}", "run_name=r", *TINY, f"ckpt_path={run}"], capsys)
    assert code == 2
    one_error(err, f"ckpt_path={run} is a folder, not a checkpoint file; give ckpt_path={run}/checkpoints/last.ckpt")


def test_disk_full_names_the_previous_checkpoint_only_when_there_is_one(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    first = str(disk_full(ckpts / "epoch=0-step=4.ckpt"))
    assert "no checkpoint yet" in first and "intact" not in first and "start the run again" in first
    (ckpts / "epoch=0-step=4.ckpt").write_bytes(b"x")
    second = str(disk_full(ckpts / "epoch=1-step=8.ckpt"))
    assert "the previous checkpoint is intact" in second and "ckpt_path=last" in second
    assert "intact" in str(disk_full(tmp_path / "run" / "logs" / "metrics.csv"))


def test_the_next_commands_paste_into_a_shell_for_a_folder_with_a_space(tmp_path):
    run = tmp_path / "my run"
    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    lines = summary_lines({"test/acc_dense": 0.5}, run)
    dissect, compare = lines[-1].removeprefix("next: ").split("   |   ")
    assert shlex.split(dissect) == ["analyze.py", "dissect", "--ckpt", str(run), "--out", "reports/my run"]
    assert shlex.split(compare)[:3] == ["analyze.py", "compare", str(run)]
    sync = lines[-2].split("upload with  ")[1]
    assert shlex.split(sync) == ["wandb", "sync", f"{run}/wandb/offline-run-*"]
