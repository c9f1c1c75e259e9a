"""`DataSource`: which images a run reads and how, one record for training and every evaluation.

Training builds its training batches and its evaluation batches from the run's `DataSource`;
`reslab eval` builds the same `DataSource` from the run's config.yaml (or the weights' metadata)
and calls the same `eval_batches`, with the weights' `Preprocess`. So the images, their order, the
pixels and the normalised tensors are the same in both, bit for bit.

Parts: "train" (the images trained on: under split "paper" all but `val_size` of the training
split), "val" (those `val_size` held-out images, seeded by `seed`) and "test" (the dataset's test
split; an ImageFolder tree's val/ folder).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from reslab.data.array_dataset import ArrayDataset, train_val_split
from reslab.data.batches import InMemoryBatches
from reslab.data.cache import load_cached
from reslab.data.preprocess import Preprocess
from reslab.errors import ConfigError

Part = Literal["train", "val", "test"]
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class DataSource:
    dataset: str  # a reslab.vocab.DATASETS name
    data_dir: str | None = None  # None: the dataset's default search path
    split: str = "full"  # "paper": hold out val_size training images as "val"; "full": train on all
    val_size: int = 5000
    seed: int = 0  # seeds the paper split (the run's train.seed)
    image_size: int | None = None  # decode / resize to this size (None: the native size)
    in_chans: int | None = None  # 1 or 3 (None: the dataset's own; ImageFolder: 3)
    in_memory: bool = True  # False: an ImageFolder tree streamed by DataLoader workers
    workers: int = 2  # DataLoader workers when streaming
    cache_dir: str | None = None
    synthetic_size: int = 512
    download: bool = False

    @classmethod
    def from_config(cls, data: Any, seed: int) -> DataSource:
        """From a run's `DataConfig` (or anything with its fields) and train.seed."""
        return cls(
            dataset=data.dataset,
            data_dir=data.data_dir,
            split=data.split,
            val_size=data.val_size,
            seed=seed,
            image_size=data.image_size,
            in_memory=data.in_memory,
            workers=data.workers,
            cache_dir=data.cache_dir,
            synthetic_size=data.synthetic_size,
            download=data.download,
        )

    def with_overrides(self, **changes: Any) -> DataSource:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts evaluated during training: val and test under the paper split, else test."""
        return ("val", "test") if self.split == "paper" else ("test",)

    def arrays(self, part: Part, *, image_size: int | None = None, resize: str = "shorter-center-crop"):
        """One part decoded into memory (through the uint8 cache)."""
        if part not in PARTS:
            raise ConfigError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
        if part == "val" and self.split != "paper":
            raise ConfigError("there is no val part: it is carved from the training images under data.split=paper")
        size = image_size if image_size is not None else self.image_size
        ds = load_cached(
            self.dataset,
            "test" if part == "test" else "train",
            self.data_dir,
            cache_dir=self.cache_dir,
            download=self.download,
            image_size=size,
            in_chans=self.in_chans,
            synthetic_size=self.synthetic_size,
            resize=resize,
        )
        if part == "test" or self.split != "paper":
            return ds
        if self.val_size >= len(ds):
            raise ConfigError(f"data.val_size={self.val_size} leaves no training images ({len(ds)} in all)")
        train, val = train_val_split(ds, self.val_size, seed=self.seed)
        return train if part == "train" else val

    def eval_batches(
        self,
        part: Part,
        preprocess: Preprocess,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
        channels_last: bool = False,
        eval_mode: str = "center",
        scales: tuple[int, ...] | None = None,
    ):
        """Batches of one part prepared as `preprocess` says: `InMemoryBatches` or `FolderBatches`."""
        if not self.in_memory or eval_mode != "center":
            return self._folder_batches(part, preprocess, device, batch_size, channels_last, eval_mode, scales)
        fit = self.dataset == "imagefolder"  # files are decoded straight to the input size
        ds = self.arrays(part, image_size=preprocess.input_size if fit else None, resize=preprocess.resize)
        ds = fit_arrays(ds, preprocess)
        return InMemoryBatches(
            ds, batch_size, train=False, stats=preprocess.stats, device=device, channels_last=channels_last
        )

    def _folder_batches(self, part, preprocess, device, batch_size, channels_last, eval_mode, scales):
        from reslab.data.datasets import resolve_data_dir
        from reslab.data.folder_batches import FolderBatches

        if self.dataset != "imagefolder":
            raise ConfigError(
                f"streamed and multi-crop evaluation read image files: they need an imagefolder dataset, "
                f"not {self.dataset}"
            )
        if part == "val":
            raise ConfigError("a streamed ImageFolder run evaluates on its val/ folder (part 'test'), not 'val'")
        split = "train" if part == "train" else "test"
        return FolderBatches(
            resolve_data_dir(self.data_dir),
            split,
            batch_size=batch_size,
            train=False,
            stats=preprocess.stats,
            image_size=preprocess.input_size,
            resize=preprocess.resize,
            eval_mode=eval_mode,
            scales=scales,
            in_chans=preprocess.in_chans,
            workers=self.workers,
            seed=self.seed,
            device=device,
            channels_last=channels_last,
        )


def fit_arrays(ds: ArrayDataset, preprocess: Preprocess) -> ArrayDataset:
    """Dataset images -> the channels and size `preprocess` expects (no copy when they match)."""
    images = preprocess.fit_array(ds.images)
    if images is ds.images:
        return ds
    return ArrayDataset(images, ds.labels, ds.classes, ds.name, ds.synthetic)
