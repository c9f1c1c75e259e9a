"""The words reslab's settings and files use, each list defined once.

Config validation (`reslab.config`), the data and model code and the command lines import these
tuples; none of them spells a list of its own.
"""

from __future__ import annotations

# Datasets `data.dataset` names; "imagefolder" is any root/train/<class>/* tree.
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder", "csv", "synthetic")
# The two parts of a dataset on disk: "test" is CIFAR's test batch, MNIST's t10k files, an
# ImageFolder tree's val/ folder.
SPLITS = ("train", "test")
# What a run's images are used for (reslab.data.sources): trained on, validated on (checkpoint and
# settings chosen), tested on (reported once).
PARTS = ("train", "val", "test")
# data.split: "paper" holds out data.val_size training images at random for validation (CIFAR's
# 45k / 5k); "full" trains on all of them; "auto" validates on the dataset's own val part (an
# ImageFolder val/ folder, CSV rows marked val) or else on a stratified, seeded data.val_fraction
# of the training images.
SPLIT_MODES = ("paper", "full", "auto")
# data.sampler: each epoch a permutation of the training images, or a class-balanced draw.
SAMPLERS = ("random", "balanced")
# optim.class_weights: plain cross-entropy, or classes weighted by inverse frequency.
CLASS_WEIGHTS = ("none", "auto")
# train.keep: which weights a run ends with: the last step's, or the best on validation.
KEEP = ("last", "best")
# train.eval_parts: what an evaluation during training covers: every part (val and test), or the
# watched one only, the others then evaluated once, on the kept weights, at the end.
EVAL_PARTS = ("all", "watched")
# data.normalize: per-pixel mean (paper sec. 4.2), per-channel mean/std, or only /255.
NORMALIZE_KINDS = ("pixel-mean", "channel", "none")
# data.augment on the in-memory path (batched tensor ops) and on the streaming path (PIL in workers).
AUGMENT_KINDS = ("none", "flip", "crop", "crop-flip")
FOLDER_AUGMENT_KINDS = ("scale", "rrc", "none")
# data.policy: an augmentation policy of torchvision.transforms.v2 on each training image (uint8), on
# either path: TrivialAugmentWide, RandAugment, AutoAugment (ImageNet policy), or none.
POLICIES = ("none", "trivialaugment", "randaugment", "autoaugment")
# How an image of another size is brought to the network's input size (`reslab.data.preprocess`).
RESIZE_MODES = ("shorter-center-crop", "shorter-N-center-crop", "stretch", "none")
# Evaluation of full-size images: one centre crop, the paper's 10 crops, or whole images at scales.
EVAL_MODES = ("center", "ten-crop", "multi-scale")

# model.shortcut: A zero-pad identity, B project where the shape changes, C project always.
SHORTCUTS = ("A", "B", "C")
# Where a bottleneck downsamples: the first 1x1 (paper, "v1") or the 3x3 (torchvision, "v1.5").
STRIDE_ON = ("1x1", "3x3")

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine", "linear", "onecycle", "plateau")
# Every precision word, in one list. train.precision and an evaluation's precision take them all:
# "auto" picks per machine at run time (reslab.device.resolve_precision, the one resolver); fp16
# autocasts with a gradient scaler (GPUs without bf16).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# `reslab predict` / `serve --precision`, the CPU fast path (reslab.infer.fast): all but fp16, which
# CPUs only emulate.
INFER_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp16")
# reslab.precision of an ONNX file `reslab export` wrote: the float32 graph, or its int8 QDQ copy (--int8).
ONNX_PRECISIONS = ("fp32", "int8")
ON_NONFINITE = ("stop", "skip")
# `reslab predict` / `serve --backend`: "auto" runs PyTorch weights through their cached, verified
# ONNX export under onnxruntime when it is installed (reslab.infer.onnx_cache), else PyTorch.
INFER_BACKENDS = ("auto", "torch", "onnxruntime")

DEFAULT_MAX_PIXELS = 40_000_000  # images above this are refused (decompression bombs); 40 MP is above any camera photo
