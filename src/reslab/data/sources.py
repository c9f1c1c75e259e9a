"""`DataSource`: which images a run reads and how, one record for training and every evaluation.

Training builds its training batches and its evaluation batches from the run's `DataSource`;
`reslab eval` builds the same `DataSource` from the run's config.yaml (`reslab.evaluation.data_source`;
or from the weights' metadata) and calls the same `eval_batches`, with an `EvalBatchSpec` of the
weights' `Preprocess`. So the images, their order, the pixels and the normalised tensors are the
same in both, bit for bit. This module reads no config: how batches are drawn arrives as a spec.

Parts are named for what they are: "train" (trained on), "val" (watched while training: the
schedule, the checkpoint kept, early stopping) and "test" (reported, never used to choose).

  array datasets (cifar10/100, mnist, fashion-mnist, synthetic)
      test  the dataset's test files
      val   under split=paper val_size training images at random (seeded: the paper's 45k / 5k);
            under split=auto a stratified val_fraction of them; none under split=full
  image files (an ImageFolder tree, a CSV listing)
      test  the tree's test/ folder, the CSV's test rows; none without them
      val   the tree's val/ folder, the CSV's val rows; without them, carved from train as
            above (split=auto: stratified val_fraction; split=paper: val_size at random)
  train     the training split less what val took from it

Carving is a pure function of (labels, settings, seed) (`reslab.data.array_dataset`): the same
images in memory and streamed, in training and in `reslab eval`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import torch

from reslab.data.array_dataset import (
    ArrayDataset,
    random_split_indices,
    stratified_fold_indices,
    stratified_split_indices,
)
from reslab.data.batches import InMemoryEvalBatches
from reslab.data.cache import load_cached
from reslab.data.datasets import FILE_DATASETS, Split, resolve_data_dir, source_files, stored_splits
from reslab.data.preprocess import Preprocess
from reslab.data.spec import EvalBatches, EvalBatchSpec, TrainBatchSpec
from reslab.errors import ConfigError
from reslab.vocab import PARTS

if TYPE_CHECKING:
    from reslab.data.folder import ImageFiles
    from reslab.data.folder_batches import FolderEvalBatches, FolderTrainBatches

Part = Literal["train", "val", "test"]
ValOrigin = Literal["stored", "stratified", "random", "fold"]


@dataclass(frozen=True)
class DataSource:
    dataset: str  # a reslab.vocab.DATASETS name
    data_dir: str | None = None  # None: the dataset's default search path (csv: the CSV file)
    split: str = "full"  # "paper" | "full" | "auto": how the val part is made (module docstring)
    val_size: int = 5000  # images held out at random under split=paper
    val_fraction: float = 0.1  # share of each class held out under split=auto
    seed: int = 0  # seeds the carving of val (the run's train.seed)
    image_size: int | None = None  # decode / resize to this size (None: the native size)
    in_chans: int | None = None  # 1 or 3 (None: array datasets their own; image files 1 if all grey, else 3)
    in_memory: bool = True  # False: image files streamed by DataLoader workers
    workers: int = 2  # DataLoader workers when streaming
    cache_dir: str | None = None
    synthetic_size: int = 512
    download: bool = False
    auto_image_size: bool = False  # image_size was chosen by `resolved` (data.image_size null, mixed sizes)
    folds: int = 0  # K-fold cross-validation (reslab train --folds K): val is fold `fold` of train; 0 = off
    fold: int = 0  # 1..folds
    # The splits this source has loaded (train and a carved val read the same one): listed, keyed and
    # mapped once per source, not once per part.
    _loaded: dict[tuple[object, ...], ArrayDataset] = field(default_factory=dict, compare=False, repr=False)

    def with_overrides(self, **changes: Any) -> DataSource:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ---- which parts there are -------------------------------------------------------------------

    @property
    def reads_files(self) -> bool:
        """Image files listed on disk (an ImageFolder tree, a CSV listing), not arrays."""
        return self.dataset in FILE_DATASETS

    @cached_property
    def stored(self) -> tuple[str, ...]:
        """The dataset's splits on disk (`reslab.data.datasets.stored_splits`)."""
        return stored_splits(self.dataset, self.data_dir)

    @property
    def val_origin(self) -> ValOrigin | None:
        """Where the val part comes from: the dataset's own ("stored"), carved from the training
        split ("stratified" under split=auto, "random" under split=paper, one of K folds under
        data.folds), or nowhere (None)."""
        if self.folds:
            return "fold"
        if "val" in self.stored:
            return "stored"
        if self.split == "auto":
            return "stratified"
        return "random" if self.split == "paper" else None

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts evaluated during training: "val" if there is one, then "test" if there is one."""
        return (("val",) if self.val_origin else ()) + (("test",) if "test" in self.stored else ())

    @property
    def default_eval_part(self) -> str | None:
        """What `reslab eval RUN` reports without --part: "test" if there is one, else "val"."""
        return "test" if "test" in self.parts else "val" if "val" in self.parts else None

    @property
    def watch_part(self) -> str | None:
        """What the schedule, the kept checkpoint and early stopping watch: "val", else "test"."""
        return "val" if "val" in self.parts else "test" if "test" in self.parts else None

    def describe_val(self) -> str | None:
        """How the val part was made, in words (None: there is none)."""
        origin = self.val_origin
        if origin == "stored":
            return "the CSV's val rows" if self.dataset == "csv" else "the tree's val/ folder"
        if origin == "stratified":
            return f"{self.val_fraction * 100:g}% of train, stratified, seed {self.seed}"
        if origin == "random":
            return f"{self.val_size} images of train at random, seed {self.seed}"
        if origin == "fold":
            return f"fold {self.fold} of {self.folds} of train, stratified, seed {self.seed}"
        return None

    # ---- channels --------------------------------------------------------------------------------

    @cached_property
    def input_channels(self) -> int | None:
        """data.in_chans when set; for image files 1 when every split's images are grey (from the
        headers of up to a few hundred files per split, `reslab.data.folder.images_are_grey`),
        else 3; None for array datasets, which keep their own channels."""
        if self.in_chans is not None or not self.reads_files:
            return self.in_chans
        from reslab.data.folder import images_are_grey, list_samples

        root = resolve_data_dir(self.data_dir)
        listings = [list_samples(self.dataset, root, split)[0] for split in self.stored]
        return 1 if all(images_are_grey([path for path, _ in samples]) for samples in listings) else 3

    def resolved(self) -> DataSource:
        """This source with data.image_size chosen when it is null and image files differ in size
        (`reslab.data.folder.typical_image_size` of train: the median shorter side, up to 128)."""
        if self.image_size is not None or not self.reads_files or not self.in_memory:
            return self
        from reslab.data.folder import list_samples, typical_image_size

        train = list_samples(self.dataset, resolve_data_dir(self.data_dir), "train")[0]
        size = typical_image_size([path for path, _ in train])
        return self if size is None else replace(self, image_size=size, auto_image_size=True)

    # ---- the images of a part --------------------------------------------------------------------

    def _check_part(self, part: str | None) -> None:
        if part is None:  # e.g. `default_eval_part` of a source without val or test
            raise ConfigError(
                f"nothing to evaluate: {self._where()} has no val or test part of its own and data.split="
                f"{self.split} holds out nothing (a run's carved val part: evaluate the run directory)"
            )
        if part not in PARTS:
            raise ConfigError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
        if part == "train" or part in self.parts:
            return
        if part == "val":
            raise ConfigError(
                f"there is no val part: {self._where()} has none of its own and data.split=full holds out "
                "nothing (data.split=auto holds out a stratified data.val_fraction of train)"
            )
        raise ConfigError(
            f"there is no test part: {self._where()} has "
            + ("no test/ folder" if self.dataset == "imagefolder" else "no test rows")
            + (f"; evaluate on {', '.join(self.parts)}" if self.parts else "")
        )

    def _where(self) -> str:
        return f"{self.dataset} {self.data_dir}" if self.data_dir else self.dataset

    def _stored_split(self, part: Part) -> Split:
        """The split on disk a part's images are read from."""
        return "train" if part == "train" or (part == "val" and self.val_origin != "stored") else part

    def _carve(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices into the training split, when val is carved from it."""
        n = len(labels)
        if self.val_origin == "fold":
            if self.folds > n:
                raise ConfigError(f"data.folds={self.folds} is more folds than the {n} training images")
            return stratified_fold_indices(labels, self.folds, self.fold, self.seed)
        if self.val_origin == "random":
            if self.val_size >= n:
                raise ConfigError(
                    f"data.val_size={self.val_size} leaves no training images ({n} in all); lower "
                    "data.val_size, or use data.split=auto (a stratified data.val_fraction of each class)"
                )
            return random_split_indices(n, self.val_size, self.seed)
        train_idx, val_idx = stratified_split_indices(labels, self.val_fraction, self.seed)
        if len(val_idx) == 0:
            raise ConfigError(
                f"data.val_fraction={self.val_fraction} holds out no image: every class of the {n} training "
                "images has a single one; add images, or use data.split=full"
            )
        return train_idx, val_idx

    def arrays(
        self,
        part: Part,
        *,
        image_size: int | None = None,
        in_chans: int | None = None,
        resize: str = "shorter-center-crop",
    ) -> ArrayDataset:
        """One part decoded into memory (through the uint8 cache)."""
        self._check_part(part)
        size = image_size if image_size is not None else self.image_size
        split = self._stored_split(part)
        if self.download:  # fetch missing files first; the cache reads what is on disk
            source_files(self.dataset, split, self.data_dir, download=True)
        chans = in_chans if in_chans is not None else self.input_channels
        key = (split, size, chans, resize)
        if key not in self._loaded:
            self._loaded[key] = load_cached(
                self.dataset,
                split,
                self.data_dir,
                cache_dir=self.cache_dir,
                image_size=size,
                in_chans=chans,
                synthetic_size=self.synthetic_size,
                resize=resize,
            )
        ds = self._loaded[key]
        if part == "test" or self.val_origin in (None, "stored"):
            return ds
        # Under split=paper this is `train_val_split(ds, val_size, seed)`: the paper split as it always was.
        train_idx, val_idx = self._carve(ds.labels)
        return ds.subset(train_idx if part == "train" else val_idx, f"{ds.name}[{part}-split]")

    def files(self, part: Part) -> ImageFiles:
        """The image files of a part, for the streamed loaders: a carved part is its subset of the
        training split's listing."""
        from reslab.data.folder import ImageFiles, list_samples

        if not self.reads_files:
            raise ConfigError(
                f"streamed and multi-crop evaluation read image files: they need an imagefolder or csv dataset, "
                f"not {self.dataset}"
            )
        self._check_part(part)
        root = resolve_data_dir(self.data_dir)
        split = self._stored_split(part)
        if part == "test" or self.val_origin not in ("stratified", "random", "fold"):
            return ImageFiles(root, split, self.dataset)
        samples, _ = list_samples(self.dataset, root, split)
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        train_idx, val_idx = self._carve(labels)
        return ImageFiles(root, split, self.dataset, train_idx if part == "train" else val_idx)

    def folder_train_batches(self, spec: TrainBatchSpec) -> FolderTrainBatches:
        """The train part of an image-file dataset, streamed by DataLoader workers."""
        from reslab.data.folder_batches import FolderTrainBatches

        return FolderTrainBatches(self.files("train"), spec)

    def folder_eval_batches(self, part: Part, spec: EvalBatchSpec) -> FolderEvalBatches:
        """One part of an image-file dataset, streamed by DataLoader workers for evaluation."""
        from reslab.data.folder_batches import FolderEvalBatches

        return FolderEvalBatches(self.files(part), spec)

    def eval_batches(self, part: Part, spec: EvalBatchSpec) -> EvalBatches:
        """Batches of one part prepared as `spec` says: in memory (`InMemoryEvalBatches`, the arrays
        fitted to the spec's input), or streamed (`FolderEvalBatches`: data.in_memory=false, 10-crop
        and multi-scale testing)."""
        if not self.in_memory or spec.eval_mode != "center":
            return self.folder_eval_batches(part, spec)
        if self.reads_files:  # files are decoded straight to the input's size and channels
            ds = self.arrays(part, image_size=spec.image_size, in_chans=spec.in_chans, resize=spec.resize)
        else:
            ds = self.arrays(part)
        ds = fit_arrays(ds, Preprocess(spec.in_chans, spec.image_size, spec.resize, spec.required_stats()))
        return InMemoryEvalBatches(ds, spec)


def fit_arrays(ds: ArrayDataset, preprocess: Preprocess) -> ArrayDataset:
    """Dataset images -> the channels and size `preprocess` expects (no copy when they match)."""
    images = preprocess.fit_array(ds.images)
    if images is ds.images:
        return ds
    return ArrayDataset(images, ds.labels, ds.classes, ds.name, ds.synthetic)
