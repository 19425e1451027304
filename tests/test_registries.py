"""A model and a dataset registered from outside the package (here, in the test file) are trained by train.py's
``train(cfg)``, chosen by name in the config, and loaded back from the checkpoint by the loader analyze.py uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import train as train_script
from lwtakit.checkpoint import CONFIG_KEY, load_checkpoint
from lwtakit.config import load_config
from lwtakit.data import DatasetInfo, DatasetSource, build_dataset, dataset_info, dataset_names, register_dataset
from lwtakit.errors import UserError
from lwtakit.lwta import LWTA
from lwtakit.models import ModelRequest, build_model, model_names, register_model
from lwtakit.models.resnet import Normalize


class TinyNet(nn.Module):
    """One convolution, its activation (LWTA with U competitors per block) and a linear head."""

    def __init__(self, request: ModelRequest) -> None:
        super().__init__()
        width = 4 * request.channel_multiple
        self.normalize = Normalize(*request.arch.normalization())
        self.conv = nn.Conv2d(request.arch.in_chans, width, 3, padding=1)
        self.act = request.act_layer(width)
        self.fc = nn.Linear(width, request.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(self.normalize(x))).mean((2, 3)))


@register_model("outside_tiny", dense="relu")
def outside_tiny(request: ModelRequest) -> nn.Module:
    return TinyNet(request)


class StripeImages(Dataset):
    """Grey images of horizontal (class 0) or vertical (class 1) stripes plus noise, item i drawn from
    (seed, split, i)."""

    SPLITS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, size: int, seed: int, split: str, img_size: int) -> None:
        self.size, self.seed, self.split, self.img_size = size, seed, split, img_size
        self.class_names = ["horizontal", "vertical"]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.SPLITS[self.split], i])
        label = int(rng.integers(2))
        stripes = (np.arange(self.img_size) % 2).astype(np.float32)
        img = np.broadcast_to(stripes[:, None] if label == 0 else stripes[None, :], (self.img_size,) * 2)
        img = img * 0.8 + rng.random((self.img_size,) * 2) * 0.2
        return torch.from_numpy(img.astype(np.float32))[None], label


@register_dataset
class OutsideStripes(DatasetSource):
    name = "outside_stripes"
    img_size = 8

    def build(self, request):
        return StripeImages(request.size or 12, request.seed, request.split, request.img_size)

    def info(self, request):
        return DatasetInfo(2, ["horizontal", "vertical"], 1, (0.5,), (0.3,), request.img_size, self.name)


TINY = ["model.name=outside_tiny", "data.name=outside_stripes", "data.img_size=8", "data.train_size=16",
        "data.val_size=8", "data.test_size=8", "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "logger=csv", "dissection.enabled=false", "sparsity.every_n_steps=1"]


def test_a_model_and_a_dataset_registered_outside_train_and_load_back(tmp_path):
    assert "outside_tiny" in model_names() and "outside_stripes" in dataset_names(trainable=True)
    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=outside", *TINY])  # the config accepts both
    result = train_script.train(cfg)
    # the run trained the registered network on the registered data: one input channel, from the dataset's info
    trained = result.module.model
    assert isinstance(trained, TinyNet) and trained.conv.in_channels == 1 and isinstance(trained.act, LWTA)
    assert "sparsity/act/active_fraction" in result.metrics  # the monitor found the activation of the outside model
    loaded = load_checkpoint(result.last_ckpt)
    assert isinstance(loaded.model, TinyNet) and loaded.class_names == ["horizontal", "vertical"]
    on_disk = torch.load(result.last_ckpt, weights_only=True)["state_dict"]
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, on_disk[f"model.{key}"]), key
    # the loader rebuilds the run's own split through the dataset registry, as the training data module made it
    val = loaded.dataset("val")
    expected = StripeImages(8, cfg.seed, "val", 8)
    assert len(val) == 8 and all(torch.equal(val[i][0], expected[i][0]) for i in range(8))
    x = torch.stack([val[i][0] for i in range(8)])
    with torch.no_grad():
        outputs = [(torch.manual_seed(0), net.eval()(x))[1] for net in (loaded.model, trained)]  # the same draws
    assert torch.equal(*outputs)


def test_registered_names_are_the_choices_and_an_unregistered_checkpoint_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="model.name.*outside_tiny"):  # the message lists the registered names
        load_config("default", ["model.name=not_registered"])
    with pytest.raises(UserError, match="data.name.*outside_stripes"):
        load_config("default", ["data.name=not_registered"])
    with pytest.raises(UserError, match="data.name"):  # registered, but unlabelled: not a training choice
        load_config("default", ["data.name=probe_folder"])
    result = train_script.train(load_config("default", [f"run_dir={tmp_path}", "run_name=gone", *TINY]))
    ckpt = torch.load(result.last_ckpt, weights_only=True)
    ckpt[CONFIG_KEY]["model"]["name"] = "gone_model"
    torch.save(ckpt, tmp_path / "gone.ckpt")
    with pytest.raises(UserError, match="'gone_model' network, a model not registered here.*@register_model"):
        load_checkpoint(tmp_path / "gone.ckpt")


def test_registration_refuses_a_second_meaning_of_a_name_and_checks_options():
    with pytest.raises(ValueError, match="already registered"):
        register_model("outside_tiny")(lambda request: TinyNet(request))
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(type("Other", (OutsideStripes,), {}))
    with pytest.raises(UserError, match="outside_stripes.*does not take option"):
        build_dataset("outside_stripes", "val", colour="red")
    assert dataset_info("outside_stripes").in_chans == 1
    net = build_model("outside_tiny", 3, act="lwta", in_chans=1)
    assert net.conv.out_channels == 8  # widths are multiples of the default U = 2 (channel_multiple)
