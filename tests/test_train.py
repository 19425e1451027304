"""train(cfg) end to end with the real Trainer on tiny synthetic data (CPU)."""

import json
import os

import pytest
import torch

import train as train_script
from lwtakit.checkpoint import load_checkpoint
from lwtakit.config import load_config
from lwtakit.lwta import lwta_layers
from lwtakit.models import activation_layers

TINY = [
    "data.train_size=96", "data.val_size=32", "data.test_size=32", "data.batch_size=32",
    "model.width=0.125", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "dissection.probe_size=32", "dissection.top_images=4", "sparsity.every_n_steps=1",
]


def tiny_cfg(tmp_path, *overrides, experiment="default"):
    return load_config(experiment, [f"run_dir={tmp_path}", "run_name=run", *TINY, *overrides])


def weights(run_dir):
    state = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fast_dev_run_touches_every_part(tmp_path):
    result = train_script.train(tiny_cfg(tmp_path, "trainer.fast_dev_run=true", "logger=none"))
    assert (result.run_dir / "config.yaml").exists()
    assert "train/loss" in result.metrics and "val/acc_argmax" in result.metrics


def loaded_hparams(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]


def test_run_folder_holds_config_checkpoint_metrics_labels_and_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = train_script.train(tiny_cfg(tmp_path))
    run = result.run_dir
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "logs" / "metrics.csv").read_text().count("\n") > 1
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run"
    # The loggers get no hyper-parameters from Lightning (W&B has the resolved config once, from train.py; the
    # module's and datamodule's hyper-parameters logged too made it appear twice): CSVLogger writes no hparams.yaml
    assert not (run / "logs" / "hparams.yaml").exists()
    assert loaded_hparams(run)["num_classes"] == result.module.hparams["num_classes"] > 1  # kept in the checkpoint
    labels = (run / "labels.csv").read_text().splitlines()
    assert labels[0].startswith("epoch,step,layer,unit,method,mode,label,score,firing_rate")
    assert len(labels) > 1
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test/acc_argmax"] <= 1
    # Measured sparsity: every LWTA layer emits 1/U non-zero outputs.
    fractions = {k: v for k, v in results.items() if k.endswith("active_fraction")}
    assert len(fractions) == len(lwta_layers(result.module.model))
    for key, value in fractions.items():
        assert abs(value - 1 / 2) < 0.01, key
    # The checkpoint alone rebuilds the network, loaded with weights_only=True.
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    x = torch.rand(2, 3, 32, 32)
    result.module.model.eval()
    for m in (loaded.model, result.module.model):
        for layer in lwta_layers(m).values():
            layer.inference = "argmax"
    assert torch.allclose(loaded.model(x), result.module.model(x))


def test_resume_from_last_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    common = ("optim.schedule=none", "dissection.enabled=false", "logger=none")
    straight = train_script.train(tiny_cfg(tmp_path / "a", "trainer.max_epochs=2", *common))
    train_script.train(tiny_cfg(tmp_path / "b", "trainer.max_epochs=1", *common))
    resumed = train_script.train(tiny_cfg(tmp_path / "b", "trainer.max_epochs=2", "ckpt_path=last", *common))
    assert_same_weights(weights(straight.run_dir), weights(resumed.run_dir))


def test_dissection_callback_does_not_change_the_training_trajectory(tmp_path):
    with_cb = train_script.train(tiny_cfg(tmp_path / "a", "trainer.max_epochs=2", "logger=none"))
    without = train_script.train(tiny_cfg(tmp_path / "b", "trainer.max_epochs=2", "logger=none",
                                          "dissection.enabled=false"))
    assert (with_cb.run_dir / "labels.csv").exists()
    assert_same_weights(weights(with_cb.run_dir), weights(without.run_dir))


def test_dense_twin_trains_with_relu_logs_acc_dense_and_its_relu_sparsity(tmp_path):
    result = train_script.train(tiny_cfg(tmp_path, "logger=none", "dissection.enabled=false",
                                         experiment="default_dense"))
    assert not lwta_layers(result.module.model)
    # a dense net has one function: its accuracy is acc_dense, never an LWTA mode's name
    assert "val/acc_dense" in result.metrics and "test/acc_dense" in result.metrics
    assert not any(k.endswith(("acc_argmax", "acc_sample", "acc_mc")) for k in result.metrics)
    # the SparsityMonitor measures every ReLU of the dense twin, as it does the LWTA layers of the LWTA net
    relus = activation_layers(result.module.model)
    fractions = {k for k in result.metrics if k.endswith("/active_fraction")}
    assert fractions == {f"sparsity/{n}/active_fraction" for n in relus}
    assert all(0 < result.metrics[k] < 1 for k in fractions)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model.bogus=1"], "unknown config key 'model.bogus'"),
        (["trainer.max_epochs=many"], "'trainer.max_epochs' has the wrong type"),
        (["data.name=mnist", "data.root=/no/such/mnist.npz"], "/no/such/mnist.npz"),
        (["model.U=0"], "model.U"),
        (["ckpt_path=/no/such.ckpt"], "/no/such.ckpt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = train_script.main([f"run_dir={tmp_path}", "run_name=bad", "logger=none", *TINY, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_temperature_schedule_reaches_the_lwta_layers_during_training(tmp_path, monkeypatch):
    """The reference's annealing never fired: here every training forward of epoch e runs at the scheduled
    T(e) = t0 * gamma ** (e // step_size), and the logged value is the same."""
    from lightning_modules.classifier import LitClassifier

    seen: dict[int, set[float]] = {}
    on_start = LitClassifier.on_train_epoch_start

    def watch(self):
        on_start(self)
        if not seen:  # one hook for the whole run, reading the epoch when it fires
            layer = next(iter(lwta_layers(self.model).values()))
            layer.register_forward_pre_hook(lambda m, args: seen.setdefault(self.current_epoch, set())
                                            .add(m.temperature) if m.training else None)
            seen[-1] = set()

    monkeypatch.setattr(LitClassifier, "on_train_epoch_start", watch)
    result = train_script.train(tiny_cfg(tmp_path, "trainer.max_epochs=3", "model.temperature.schedule=step",
                                         "model.temperature.step_size=1", "model.temperature.gamma=0.5",
                                         "model.temperature.t0=2.0", "dissection.enabled=false", "logger=csv"))
    assert {e: sorted(ts) for e, ts in seen.items() if e >= 0} == {0: [2.0], 1: [1.0], 2: [0.5]}
    rows = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("lwta/temperature")
    logged = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert logged == [2.0, 1.0, 0.5]
