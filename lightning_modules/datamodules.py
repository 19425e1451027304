"""LightningDataModule wiring :mod:`lwtakit.data` into training (thin: no dataset logic here)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lwtakit.data import DatasetInfo, build_dataset, dataset_info, probe_subset
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
    """Train / val / test splits of one dataset of :func:`lwtakit.data.build_dataset`.

    Args:
        name: dataset name (synthetic, mnist, cifar10, cifar100, imagefolder).
        root, download, img_size: as in ``build_dataset``.
        batch_size: training batch size; ``eval_batch_size`` (default: batch_size) for val / test.
        num_workers: DataLoader workers (persistent when > 0).
        augment: training augmentation of the dataset (train split only; none for synthetic).
        seed: synthetic dataset seed and the training shuffle seed.
        train_size, val_size, test_size: synthetic split sizes.
        dataset_kwargs: further dataset options (synthetic: target, second_object, attributes;
            mnist: channels).
    """

    def __init__(self, name: str = "synthetic", root: str | None = None, download: bool = False,
                 batch_size: int = 128, num_workers: int = 0, img_size: int | None = None,
                 augment: bool = True, seed: int = 0, train_size: int = 10000, val_size: int = 2000,
                 test_size: int = 2000, eval_batch_size: int | None = None, pin_memory: bool = False,
                 **dataset_kwargs):
        super().__init__()
        if int(batch_size) < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise UserError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(logger=False)  # in the run config already: logged once, by train.py
        self.name = name
        self.root = root
        self.download = bool(download)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.img_size = img_size
        self.augment = bool(augment)
        self.seed = int(seed)
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        self.pin_memory = bool(pin_memory)
        self.dataset_kwargs = dict(dataset_kwargs)
        self._info: DatasetInfo | None = None
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ datasets
    def _build(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = build_dataset(
                self.name, split, root=self.root, download=self.download, img_size=self.img_size,
                augment=self.augment and split == "train", seed=self.seed, size=self.sizes[split],
                **self.dataset_kwargs)
        return self.datasets[split]

    def prepare_data(self) -> None:
        # Runs on one process per node: let torchvision download once before setup() on every rank.
        if self.download and self.name in ("mnist", "cifar10", "cifar100"):
            build_dataset(self.name, "test", root=self.root, download=True, **self.dataset_kwargs)
            build_dataset(self.name, "train", root=self.root, download=True, **self.dataset_kwargs)

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            self._build(split)

    @property
    def info(self) -> DatasetInfo:
        """Classes, channels, normalisation and image size (no disk access for synthetic)."""
        if self._info is None:
            kw = dict(self.dataset_kwargs)
            self._info = dataset_info(self.name, root=self.root, img_size=self.img_size, **kw)
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
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, generator=generator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        ds = self._build("train")
        return self._loader(ds, self.batch_size, EpochSeededSampler(ds, self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._build("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._build("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
