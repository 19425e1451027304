"""LightningDataModule wiring :mod:`lwtakit.data` into training (thin: no dataset logic here)."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lwtakit.config import DataConfig
from lwtakit.data import DatasetInfo, build_dataset, config_dataset, config_options, dataset_info, probe_subset
from lwtakit.data.registry import dataset_source
from lwtakit.errors import UserError


class EpochSeededSampler(RandomSampler):
    """A random permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every training epoch, so a run resumed at epoch e sees the
    same order as an uninterrupted one, independent of how much of the global RNG was consumed before.
    It subclasses ``RandomSampler`` so that under DDP Lightning swaps it for its ``DistributedSampler``
    (shuffle=True, seeded by ``PL_GLOBAL_SEED``), which has the same (seed, epoch) property.
    """

    def __init__(self, data_source: Dataset, seed: int = 0):
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0
        # Also the DataLoader's generator: creating an iterator then draws the worker base seed from it,
        # not from the global RNG, and that seed too follows (seed, epoch). Otherwise a resumed run, whose
        # loader iterator is created before the saved RNG state is restored, would draw different noise.
        self.loader_generator = torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.loader_generator.manual_seed(self.seed * 1_000_003 + self.epoch + 1)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


class VisionDataModule(L.LightningDataModule):
    """Train / val / test splits of the dataset the ``data`` config group describes
    (:func:`lwtakit.data.config_dataset`).

    Args:
        data: the ``data`` config group (:class:`lwtakit.config.DataConfig` or its OmegaConf node): dataset, root,
            download, image side, batch size (train, val and test), DataLoader workers (persistent when > 0),
            training augmentation (train split only), split sizes and the dataset's own options. Its defaults are
            the schema's, in one place.
        seed: the generated data's seed and the training shuffle seed.
    """

    def __init__(self, data: Any, seed: int = 0):
        super().__init__()
        data = OmegaConf.to_object(data) if OmegaConf.is_config(data) else data
        if not isinstance(data, DataConfig):
            raise TypeError(f"VisionDataModule takes the data config group (DataConfig), got {type(data).__name__}")
        if int(data.batch_size) < 1:
            raise UserError(f"data.batch_size must be >= 1, got {data.batch_size}")
        if int(data.num_workers) < 0:
            raise UserError(f"data.num_workers must be >= 0, got {data.num_workers}")
        # plain values (checkpoints are read with weights_only=True); not logged: train.py logs the run config once
        self.save_hyperparameters({**dataclasses.asdict(data), "seed": int(seed)}, logger=False)
        self.data = data
        self.seed = int(seed)
        self._info: DatasetInfo | None = None
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ datasets
    def _build(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = config_dataset(self.data, split, self.seed, training=True)
        return self.datasets[split]

    def prepare_data(self) -> None:
        # Runs on one process per node: let torchvision download once before setup() on every rank.
        d = self.data
        if d.download and dataset_source(d.name).downloads:
            for split in ("test", "train"):
                build_dataset(d.name, split, root=d.root, download=True, **config_options(d))

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            self._build(split)

    @property
    def info(self) -> DatasetInfo:
        """Classes, channels, normalisation and image size (no disk access for synthetic)."""
        if self._info is None:
            d = self.data
            self._info = dataset_info(d.name, root=d.root, img_size=d.img_size, **config_options(d))
        return self._info

    def probe_dataset(self, size: int = 512, seed: int = 0) -> Dataset:
        """A fixed subset of the (unaugmented) val split for dissection, with its concept metadata."""
        return probe_subset(self._build("val"), size, seed)

    def skipped_images(self) -> int:
        """Unreadable images skipped so far over all splits (image folders; 0 otherwise)."""
        return sum(getattr(ds, "num_skipped", 0) for ds in self.datasets.values())

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, batch_size: int, sampler=None) -> DataLoader:
        generator = sampler.loader_generator if sampler is not None else torch.Generator().manual_seed(self.seed)
        workers = int(self.data.num_workers)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, generator=generator,
                          num_workers=workers, persistent_workers=workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        ds = self._build("train")
        return self._loader(ds, self.data.batch_size, EpochSeededSampler(ds, self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._build("val"), self.data.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._build("test"), self.data.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
