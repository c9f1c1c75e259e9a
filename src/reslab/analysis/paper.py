"""The paper's published numbers that the reproductions are compared with.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016, arXiv 1512.03385).
Errors are in %, as printed in the paper; see /work/shared/PAPER.md for the sources.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "He et al., Deep Residual Learning for Image Recognition (CVPR 2016, arXiv:1512.03385)"


@dataclass(frozen=True)
class CifarRow:
    depth: int
    n: int  # blocks per stage (depth = 6n + 2)
    params: str  # as printed in Table 6
    params_exact: int  # option-A shortcuts, 10-way classifier
    error: float  # test error %, Table 6
    note: str = ""


# Table 6: CIFAR-10 test error of the residual nets (option A, 64k iterations, 45k/5k split).
TABLE6 = {
    20: CifarRow(20, 3, "0.27M", 269_722, 8.75),
    32: CifarRow(32, 5, "0.46M", 464_154, 7.51),
    44: CifarRow(44, 7, "0.66M", 658_586, 7.17),
    56: CifarRow(56, 9, "0.85M", 853_018, 6.97),
    110: CifarRow(110, 18, "1.7M", 1_727_962, 6.43, "best of 5 runs; mean 6.61 +- 0.16"),
    1202: CifarRow(1202, 200, "19.4M", 19_421_274, 7.93, "overfits (paper sec. 4.2)"),
}
TABLE6_DEFAULT_DEPTHS = (20, 32, 44, 56, 110)


@dataclass(frozen=True)
class ImageNetRow:
    label: str  # as in the paper
    top1: float  # 10-crop top-1 error %, ImageNet val
    top5: float | None  # 10-crop top-5 error % (None: not printed)
    table: str


# Tables 2 and 3: single model, 10-crop testing on the ImageNet validation set.
# Keyed by (depth, residual, shortcut option). Table 2's ResNet-18/34 use option A; Table 3 compares
# A/B/C for ResNet-34; ResNet-50/101/152 use B. None: one number whatever the option.
IMAGENET = {
    (18, False, None): ImageNetRow("plain-18", 27.94, None, "Table 2"),
    (34, False, None): ImageNetRow("plain-34", 28.54, None, "Table 2"),
    (18, True, None): ImageNetRow("ResNet-18", 27.88, None, "Table 2"),
    (34, True, "A"): ImageNetRow("ResNet-34 A", 25.03, 7.76, "Table 3"),
    (34, True, "B"): ImageNetRow("ResNet-34 B", 24.52, 7.46, "Table 3"),
    (34, True, "C"): ImageNetRow("ResNet-34 C", 24.19, 7.40, "Table 3"),
    (50, True, None): ImageNetRow("ResNet-50", 22.85, 6.71, "Table 3"),
    (101, True, None): ImageNetRow("ResNet-101", 21.75, 6.05, "Table 3"),
    (152, True, None): ImageNetRow("ResNet-152", 21.43, 5.71, "Table 3"),
}


def imagenet_row(depth: int, residual: bool, shortcut: str | None) -> ImageNetRow | None:
    """The paper's row for a network, or None when the paper has no such number."""
    if (depth, residual, shortcut or "B") in IMAGENET:
        return IMAGENET[(depth, residual, shortcut or "B")]
    return IMAGENET.get((depth, residual, None))


# Fig. 6 / Fig. 1 claims (paper sec. 4.1-4.2) checked by the degradation report.
CLAIM_PLAIN = "deeper plain nets have higher training error than shallower ones (degradation)"
CLAIM_RESNET = "deeper ResNets have lower training error than shallower ones"
CLAIM_RESNET_TEST = "deeper ResNets (up to 110 layers) have lower test error than shallower ones (Table 6)"
CLAIM_RESIDUAL_WINS = "at the largest depth the ResNet has lower training and test error than its plain twin"
# Fig. 7 claims (sec. 4.2, "Analysis of Layer Responses").
CLAIM_SMALLER = "ResNets' layer responses are smaller than those of their plain counterparts"
CLAIM_SHRINK = "deeper ResNets have smaller responses"

PAPER_CIFAR_ITERATIONS = 64_000
