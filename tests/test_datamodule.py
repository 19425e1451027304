"""VisionDataModule: setup, loaders, info, probe set and the (seed, epoch)-determined shuffle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.datamodules import EpochSeededSampler, VisionDataModule
from lwtakit.config import DataConfig
from lwtakit.data import dataset_info
from lwtakit.errors import UserError


def _dm(seed=3, **kw):
    args = dict(name="synthetic", batch_size=8, train_size=40, val_size=24, test_size=16)
    args.update(kw)
    return VisionDataModule(DataConfig(**args), seed=seed)


def test_setup_and_one_batch():
    dm = _dm(target="colour")
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)
    assert int(y.max()) < dm.info.num_classes
    assert dm.info == dataset_info("synthetic", target="colour")
    assert dm.info.class_names[0] == "red"
    assert len(dm.datasets["train"]) == 40 and len(dm.val_dataloader().dataset) == 24
    assert dm.hparams.batch_size == 8 and dm.hparams.target == "colour" and dm.hparams.seed == 3
    # Val is in index order and the same on every call.
    xs = torch.cat([b[0] for b in dm.val_dataloader()])
    assert torch.equal(xs, torch.stack([dm.datasets["val"][i][0] for i in range(24)]))
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 16


def test_train_order_depends_only_on_seed_and_epoch():
    dm_a, dm_b = _dm(), _dm()
    dm_a.setup("fit")
    dm_b.setup("fit")

    def order(dm, epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist(), list(loader.sampler)

    torch.manual_seed(0)
    a1 = order(dm_a, 1)
    torch.manual_seed(123)  # the global RNG does not matter
    assert order(dm_b, 1) == a1
    assert order(dm_a, 2)[1] != a1[1]
    assert sorted(a1[1]) == list(range(40))  # a permutation
    labels = [dm_a.datasets["train"][i][1] for i in a1[1]]
    assert labels == a1[0]  # the loader follows the sampler
    assert isinstance(dm_a.train_dataloader().sampler, EpochSeededSampler)
    assert list(_dm(seed=4).train_dataloader().sampler) != list(dm_a.train_dataloader().sampler)


def test_workers_persistent_and_same_batches():
    dm0, dm2 = _dm(), _dm(num_workers=2)
    dm0.setup("fit")
    dm2.setup("fit")
    l2 = dm2.val_dataloader()
    assert l2.persistent_workers and not dm0.val_dataloader().persistent_workers
    x0 = torch.cat([b[0] for b in dm0.val_dataloader()])
    x2 = torch.cat([b[0] for b in l2])
    assert torch.equal(x0, x2)


def test_probe_dataset_from_val_with_concepts():
    dm = _dm(val_size=100)
    p = dm.probe_dataset(size=30, seed=1)
    val = dm.datasets["val"]
    assert len(p) == 30 and p.concept_names == val.concept_names
    assert np.array_equal(p.concept_matrix(), val.concept_matrix()[p.indices])
    assert np.array_equal(dm.probe_dataset(size=30, seed=1).indices, p.indices)


def test_mnist_datamodule_augments_train_only(mnist_path):
    dm = VisionDataModule(DataConfig(name="mnist", root=mnist_path, img_size=28, batch_size=4, augment=True))
    dm.setup("fit")
    assert dm.info.in_chans == 1 and dm.info.num_classes == 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28)
    v = dm.datasets["val"]
    assert torch.equal(v[0][0], v[0][0])  # no random transform on val
    assert dm.skipped_images() == 0


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="batch_size"):
        _dm(batch_size=0)
    with pytest.raises(UserError, match="unknown dataset"):
        _dm(name="nope").setup("fit")
    with pytest.raises(UserError, match=str(tmp_path)):
        VisionDataModule(DataConfig(name="mnist", root=str(tmp_path / "mnist.npz"))).setup("fit")


def test_trainer_sets_epoch_and_replays_batches(tmp_path):
    """Two fits with the same datamodule settings see the same batches; each epoch another order."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 6)
            self.seen = []

        def training_step(self, batch, _):
            x, y = batch
            self.seen.append((self.current_epoch, y.tolist()))
            return torch.nn.functional.cross_entropy(self.lin(x.mean((2, 3))), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit():
        model = Recorder()
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=str(tmp_path), num_sanity_val_steps=0, limit_val_batches=0)
        dm = _dm()
        trainer.fit(model, datamodule=dm)
        return model.seen

    torch.manual_seed(0)
    first = fit()
    torch.manual_seed(99)
    assert fit() == first
    e0 = [y for e, ys in first if e == 0 for y in ys]
    e1 = [y for e, ys in first if e == 1 for y in ys]
    assert len(e0) == len(e1) == 40 and e0 != e1
