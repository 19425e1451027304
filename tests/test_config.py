"""The structured config: layering, group selection, and one-line errors naming the key."""

import glob
import os

import pytest
from omegaconf import OmegaConf

from lwtakit.config import CONFIG_DIR, from_dict, load_config, to_dict
from lwtakit.errors import UserError


def test_overrides_win_over_experiment_and_groups():
    cfg = load_config("default", ["trainer.max_epochs=2", "model.U=4"])
    assert cfg.trainer.max_epochs == 2 and cfg.model.U == 4
    assert cfg.model.width == 0.25  # from configs/model/resnet18_lwta.yaml
    assert cfg.experiment == "default"


def test_group_override_swaps_a_whole_group():
    cfg = load_config("default", ["model=resnet18_dense"])
    assert cfg.model.act == "relu" and cfg.model.U == 1


def test_a_group_override_keeps_the_experiments_own_keys():
    # Hydra replaces the experiment's choice of the group; the experiment's own keys (mnist_lwta: model.width 0.125)
    # still come last, so swapping the model of mnist_lwta gives the ready dense twin, mnist_dense.
    swapped = to_dict(load_config("mnist_lwta", ["model=resnet18_dense", "eval.modes=[sample,argmax]"]))
    twin = to_dict(load_config("mnist_dense"))
    for cfg in (swapped, twin):
        cfg.pop("experiment"), cfg.pop("eval"), cfg.pop("arm_id")
    assert swapped == twin and twin["model"]["width"] == 0.125


@pytest.mark.parametrize("path", sorted(glob.glob(str(CONFIG_DIR / "experiment" / "*.yaml"))))
def test_every_ready_config_resolves(path):
    cfg = load_config(os.path.splitext(os.path.basename(path))[0])
    assert cfg.experiment == os.path.splitext(os.path.basename(path))[0]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.foo=1"], "unknown config key 'model.foo'"),
        (["modle.U=2"], "did you mean model"),
        (["max_epochs=3"], "unknown config key 'max_epochs' (command line); did you mean trainer.max_epochs?"),
        (["passes=2"], "did you mean dissection.passes?"),
        (["trainer.max_epochs=abc"], "'trainer.max_epochs' has the wrong type"),
        (["model.act=tanh"], "'model.act' is 'tanh'; choose one of"),
        (["model.temperature.on=winners"], "'model.temperature.on' is 'winners'; choose one of: logits, relaxation"),
        (["model=nope"], "no config 'nope' in group 'model'; choose one of: resnet18_dense"),
        (["optim.lr=-1"], "'optim.lr' must be a finite number >= 0"),
        (["optim.lr=nan"], "'optim.lr' must be a finite number >= 0, got nan"),
        (["optim.lr=0"], "'optim.lr' must be > 0"),
        (["trainer.precision=bogus"], "'trainer.precision' is 'bogus'; choose one of: 32-true, 16-mixed"),
        (["trainer.devices=0"], "'trainer.devices' is 0"),
        (["trainer.devices=[]"], "'trainer.devices'"),
        (["seed=-1"], "'seed' must be in [0, 2**32)"),
        (["data.train_size=0"], "'data.train_size' must be >= 1, got 0"),
        (["data.val_size=0"], "'data.val_size' must be >= 1"),
        (["max_epochs"], "must look like key=value"),
        (["eval.modes=[sample,bogus]"], "eval.modes"),
        (["dissection.probe_size=4", "dissection.top_images=8"], "dissection.top_images"),
        (["dissection.invert.alternative=less"], "'dissection.invert.alternative' is 'less'; choose one of"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, expected):
    with pytest.raises(UserError) as info:
        load_config("default", overrides)
    message = str(info.value)
    assert "\n" not in message
    if expected:
        assert expected in message


def test_unknown_experiment_lists_choices():
    with pytest.raises(UserError, match="choose one of: .*default"):
        load_config("no_such_experiment")


def test_round_trip_through_plain_dict():
    cfg = load_config("default")
    again = from_dict(to_dict(cfg))
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert OmegaConf.is_struct(again)


def test_temperature_on_reaches_every_lwta_layer():
    from lwtakit.checkpoint import build_network
    from lwtakit.lwta import lwta_layers

    for on in ("logits", "relaxation"):
        cfg = load_config("default", [f"model.temperature.on={on}", "model.width=0.125"])
        layers = lwta_layers(build_network(cfg, 6, 3, (0.5,) * 3, (0.25,) * 3)).values()
        assert layers and {m.temperature_on for m in layers} == {on}


@pytest.mark.parametrize("devices", ["auto", "1", "2", "-1", "[0,1]", "'0,1'"])
def test_lightning_device_forms_are_accepted(devices):
    assert load_config("default", [f"trainer.devices={devices}"]).trainer.devices is not None


def test_precision_choices_are_lightnings():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT

    from lwtakit.config import CHOICES

    accepted = {str(v) for part in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(part)}
    assert set(CHOICES["trainer.precision"]) == accepted


def test_gpu_accelerator_without_a_visible_gpu_is_a_user_error(monkeypatch):
    import torch

    from lwtakit.config import check_machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config("default", ["trainer=gpu"])  # a valid config: it names a GPU ...
    with pytest.raises(UserError, match="'trainer.accelerator' is 'gpu' but no GPU is visible"):
        check_machine(cfg)  # ... that this machine lacks
    check_machine(load_config("default", ["trainer.accelerator=cpu"]))


def test_invert_reference_settings_reach_the_labeler():
    """dissection.invert.* sets the INVERT labeler of training-time dissections: the two-sided p-value and the
    reference beam search (parsimony off: min_gain 0, no term test)."""
    from lwtakit.labelers.base import create_labelers

    cfg = load_config("default", ["dissection.invert.alternative=two-sided", "dissection.invert.min_gain=0",
                                  "dissection.invert.term_alpha=null"])
    config = create_labelers(["invert"], cfg.dissection)[0].config
    assert config.alternative == "two-sided" and not config.parsimony
    assert load_config("default").dissection.invert.alternative == "greater"


@pytest.mark.parametrize("method, fragment", [("captions", "training runs no captioning model"),
                                              ("foo", "unknown dissection method 'foo'")])
def test_a_dissection_method_training_cannot_run_fails_before_any_run_folder(tmp_path, capsys, method, fragment):
    """Checked with the config, before a run folder exists (captions used to fail at the first epoch's end, an
    unknown method after the run folder was made)."""
    import train as train_script

    code = train_script.main([f"dissection.methods=[{method}]", f"run_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "runs").exists()
