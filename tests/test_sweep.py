"""train.py -m (issue 19): a Hydra multirun of complete run folders that records every run's arm and seed, skips
complete points untouched on a re-run, resumes an interrupted one, and answers bad input with one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import train as train_script
from lwtakit.arm import arm_id
from lwtakit.sweep import slurm_devices

REPO = Path(__file__).resolve().parent.parent
TINY = ["data.train_size=16", "data.val_size=16", "data.test_size=16", "data.batch_size=16", "model.width=0.0625",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "dissection.enabled=false", "optim.schedule=none", "logger=csv", "sparsity.every_n_steps=1"]
POINTS = {f"model.U={u},seed={s}": (u, s) for u in (1, 2) for s in (0, 1)}  # the grid
FEW = {f"model.U={u}": (u, 0) for u in (1, 2)}  # the default suite's: two points, seed 0


def _sweep_dir(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_points(sweep: Path, points: dict = POINTS) -> None:
    """A complete run folder per point, named by it, each config.yaml holding its U, seed and arm."""
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(points)
    arms = {}
    for name, (u, seed) in points.items():
        folder = sweep / name
        for part in ("config.yaml", "results.json", "run-id", "checkpoints/last.ckpt", "logs/metrics.csv"):
            assert (folder / part).is_file(), folder / part
        assert not (folder / ".hydra").exists() and not list(folder.glob("*.log"))  # nothing of Hydra's own
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        assert (cfg["model"]["U"], cfg["seed"], cfg["run_name"]) == (u, seed, name)
        assert cfg["arm_id"] == arm_id(cfg)
        arms[(u, seed)] = cfg["arm_id"]
    # seeds share their arm; another U is another arm
    assert arms[(1, 0)] == arms.get((1, 1), arms[(1, 0)]) != arms[(2, 0)] == arms.get((2, 1), arms[(2, 0)])


@pytest.mark.parametrize(("sweeps", "points"), [
    (["model.U=1,2"], FEW),  # about 20 s of CPU
    pytest.param(["model.U=1,2", "seed=0,1"], POINTS, marks=pytest.mark.slow),  # about 40 s of CPU
], ids=["U", "U-x-seed"])
def test_basic_sweep_runs_every_point_skips_complete_ones_and_resumes_an_interrupted_one(tmp_path, capsys, sweeps,
                                                                                         points):
    argv = ["-m", *sweeps, "run_name=s", f"run_dir={tmp_path}", *TINY]
    sweep = tmp_path / "s"
    # A point whose folder holds something of the user's (no checkpoint, not complete): the run-folder ownership
    # refuses it; the sweep goes on with the other points and lists the failure at the end.
    first = sorted(points)[0]
    planted = sweep / first / "notes.txt"
    planted.parent.mkdir(parents=True)
    planted.write_text("mine")
    cwd = os.getcwd()
    assert train_script.main(argv) == 1
    assert os.getcwd() == cwd  # hydra.job.chdir=False: data.root and other relative paths mean what they say
    lines = capsys.readouterr().out.splitlines()
    failed = lines.index("failed points (1): run the same command again to retry them")
    assert lines[failed + 1].startswith(f"  {first}: ") and "holds files but no run of train.py" in lines[failed + 1]
    assert [p.name for p in planted.parent.iterdir()] == ["notes.txt"] and planted.read_text() == "mine"
    assert sum(" trained " in line for line in lines) == len(points) - 1

    planted.unlink()  # the user moves the file away and runs the same command: only that point trains
    assert train_script.main(argv) == 0
    out = capsys.readouterr().out
    _check_points(sweep, points)
    assert out.count(" trained ") == 1 and out.count("skipped (complete)") == len(points) - 1
    assert f"analyze.py compare {sweep}/*/" in out

    before = _snapshot(sweep)
    assert train_script.main(argv) == 0  # the same command again: nothing to do
    assert capsys.readouterr().out.count("skipped (complete)") == len(points)
    after = _snapshot(sweep)
    # Hydra rewrites its multirun.yaml of the sweep (same content); nothing else may change
    assert after.pop("multirun.yaml")[0] == before.pop("multirun.yaml")[0]
    assert after == before

    # An interrupted point: its checkpoint is there, its run did not finish (no results.json)
    interrupted = sweep / sorted(points)[-1]
    (interrupted / "results.json").unlink()
    run_id = (interrupted / "run-id").read_text()
    others = {name: _snapshot(sweep / name) for name in points if name != interrupted.name}
    assert train_script.main(argv) == 0
    captured = capsys.readouterr()
    assert "was interrupted; resuming" in captured.err
    assert captured.out.count("skipped (complete)") == len(points) - 1 and captured.out.count(" resumed ") == 1
    assert (interrupted / "results.json").is_file() and (interrupted / "run-id").read_text() == run_id
    assert {name: _snapshot(sweep / name) for name in others} == others


@pytest.mark.slow
def test_submitit_local_sweep_gives_the_same_run_folders(tmp_path):
    argv = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=20", "model.U=1,2", "seed=0,1", f"run_dir={tmp_path}", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    _check_points(sweep)
    assert done.stdout.count(" trained ") == 4
    points = {name: _snapshot(sweep / name) for name in POINTS}
    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0 and again.stdout.count("skipped (complete)") == 4, again.stderr[-3000:]
    assert {name: _snapshot(sweep / name) for name in POINTS} == points


BAD = [
    (["trainer.max_epoch=2"],
     "unknown config key 'trainer.max_epoch' (command line); did you mean trainer.max_epochs?"),
    (["trainer.max_epochs=abc"], "config key 'trainer.max_epochs' has the wrong type"),
    (["model=nope"], "no config 'nope' in group 'model'; choose one of: resnet18_dense"),
    (["--config", "nope"], "no config 'nope' in group 'experiment'; choose one of:"),
    (["model.U=1,,2"], "override 'model.U=1,,2' is malformed"),
    (["eval.modes=mc"], "config key 'eval.modes' takes a list (command line); write eval.modes=[a,b]"),
]


@pytest.mark.parametrize("multirun", [False, True], ids=["single", "multirun"])
@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[b[1][:28] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, expected, multirun):
    sweep = ["-m", "seed=0,1"] if multirun else []
    assert train_script.main([*sweep, *argv, f"run_dir={tmp_path}", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("argv", "expected"), [
    (["model.U=1,2"], "override 'model.U=1,2' is a sweep; add -m (--multirun)"),
    (["-m", "run_name=a,b"], "'run_name' cannot be swept"),
    (["-m", "seed=0,1", "ckpt_path=last"], "ckpt_path is set per point by a sweep"),
    (["-m", "seed=0,1", "model.U=2,0"], "sweep point seed=0,model.U=0: config key 'model.U' must be >= 1"),
    (["arm_id=abc"], "arm_id is set by train.py"),
    (["-m", "optim.lr=interval(0.1,0.2)"], "'optim.lr=interval(0.1,0.2)' is not a list of points"),
    (["-m", "seed=range(0,3)", "model.U=1,,2"], "override 'model.U=1,,2' is malformed"),
])
def test_sweep_misuse_is_one_line(tmp_path, capsys, argv, expected):
    assert train_script.main([*argv, f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not list(tmp_path.iterdir())


def test_config_that_is_a_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "exp.yaml"
    folder.mkdir()
    assert train_script.main(["--config", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --config {folder} is a folder; give an experiment YAML file or an experiment name"]


def test_cfg_job_prints_the_resolved_config_without_training(tmp_path, capsys):
    argv = ["--cfg", "job", "model=resnet18_dense", "trainer.max_epochs=7", f"run_dir={tmp_path}"]
    assert train_script.main(argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    # the dense group file's act, the override's epochs, the default experiment's data group, its arm recorded
    assert (cfg["model"]["act"], cfg["trainer"]["max_epochs"], cfg["data"]["name"]) == ("relu", 7, "synthetic")
    assert cfg["arm_id"] == arm_id(cfg) and not list(tmp_path.iterdir())
    assert train_script.main(["--cfg", "job", "-m", "model.U=2,4", f"run_dir={tmp_path}"]) == 0
    docs = capsys.readouterr().out.split("# point: ")[1:]
    assert [yaml.safe_load(d.partition("\n")[2])["model"]["U"] for d in docs] == [2, 4]


def test_slurm_environment_sets_lightnings_devices_and_nodes():
    from lwtakit.config import load_config

    cfg = load_config("default")
    slurm_devices(cfg, {})  # not a SLURM job: unchanged
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == ("auto", 1)
    slurm_devices(cfg, {"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_JOB_NUM_NODES": "2"})
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    given = load_config("default", ["trainer.devices=2"])  # the user's setting wins
    slurm_devices(given, {"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NUM_NODES": "1"})
    assert given.trainer.devices == 2


def test_slurm_launcher_config_composes():
    """The shipped hydra/launcher=slurm is a submitit_slurm config with the cluster's keys (not run: no SLURM)."""
    from hydra import compose, initialize_config_dir

    from lwtakit.compose import PRIMARY_NAME, register
    from lwtakit.config import CONFIG_DIR

    register("default")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(PRIMARY_NAME, overrides=["hydra/launcher=slurm", "hydra.launcher.partition=a100"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.tasks_per_node, launcher.gpus_per_node) == ("a100", 1, 1)

