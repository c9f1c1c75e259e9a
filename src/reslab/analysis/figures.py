"""The reports' figures, drawn with matplotlib's Agg backend into PNG files.

Error curves follow the paper's Fig. 1 / Fig. 6 (x: iterations, y: error %, thin dashed line =
training error, bold line = test error); layer responses follow Fig. 7 (std of each 3x3 layer's
response, in layer order and sorted by magnitude).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

from reslab.atomic import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

TRAIN_STYLE = {"linewidth": 1.0, "linestyle": "--"}  # thin: training error
TEST_STYLE = {"linewidth": 2.4, "linestyle": "-"}  # bold: test error
DPI = 110


@dataclass
class Series:
    label: str
    steps: list[int]
    values: list[float]  # fractions; plotted in %
    color: str
    kind: str = "test"  # "train" (thin dashed) | "test" (bold) | "plain" (a normal line)
    faded: bool = False  # drawn light: the other schedule in a figure that compares two


@dataclass
class Panel:
    title: str
    series: list[Series]
    xlabel: str = "iterations"
    ylabel: str = "error (%)"


def palette(keys: list) -> dict:
    """A fixed colour per key (e.g. per depth), the same in every panel."""
    colors = plt.get_cmap("tab10").colors
    return {k: matplotlib.colors.to_hex(colors[i % len(colors)]) for i, k in enumerate(keys)}


LR_DROP_STYLE = {"color": "0.55", "linewidth": 0.9, "linestyle": ":"}
FADED_ALPHA = 0.35


@dataclass
class Schedules:
    """Two training schedules in one figure: `label` names the full-strength series and `lr_drops`,
    `faded_label` the faded ones and `faded_lr_drops` (their lr drops, drawn faded)."""

    label: str
    faded_label: str
    faded_lr_drops: list[int]


def curves_figure(
    panels: list[Panel],
    path: Path,
    title: str | None = None,
    note: str | None = None,
    lr_drops: list[int] | tuple[int, ...] = (),
    schedules: Schedules | None = None,
) -> Path:
    """Side-by-side panels of error curves sharing the y-axis range; `lr_drops` (iterations where
    the learning rate falls) are marked with a dotted vertical line in every panel. With
    `schedules`, series marked `faded` belong to a second schedule and are drawn light."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    top = max([max(s.values) for p in panels for s in p.series if s.values] or [0.01])
    for ax, panel in zip(axes[0], panels):
        labels_seen, kinds = _draw_series(ax, panel.series)
        for step in lr_drops:
            ax.axvline(step, **LR_DROP_STYLE)
        for step in schedules.faded_lr_drops if schedules else ():
            ax.axvline(step, alpha=FADED_ALPHA, **LR_DROP_STYLE)
        handles = _legend_handles(labels_seen, kinds, bool(lr_drops), schedules)
        if handles:
            ax.legend(handles=handles, fontsize=8, loc="upper right")
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_ylim(0, min(100.0, 100 * top * 1.08 + 1))  # %, the same in every panel
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, color="0.3")
    return _save(fig, path, rect=(0, 0.04 if note else 0, 1, 1))


def _draw_series(ax: plt.Axes, series: list[Series]) -> tuple[dict[str, str], set[str]]:
    """Plot each series in % (markers when few points); returns {label: colour} and the kinds drawn."""
    labels_seen: dict[str, str] = {}
    kinds = set()
    for s in series:
        if not s.steps:
            continue
        style = TRAIN_STYLE if s.kind == "train" else TEST_STYLE if s.kind == "test" else {"linewidth": 1.6}
        marker = "o" if len(s.steps) <= 12 else None
        alpha = FADED_ALPHA if s.faded else 1.0
        ax.plot(s.steps, [100 * v for v in s.values], color=s.color, marker=marker, markersize=3, alpha=alpha, **style)
        labels_seen.setdefault(s.label, s.color)
        kinds.add(s.kind)
    return labels_seen, kinds


def _legend_handles(
    labels_seen: dict[str, str], kinds: set[str], lr_drops: bool, schedules: Schedules | None
) -> list[Line2D]:
    """One entry per label, then the line styles: training vs test error, lr drops, the two schedules."""
    handles = [Line2D([], [], color=c, linewidth=2.4, label=lbl) for lbl, c in labels_seen.items()]
    if {"train", "test"} <= kinds:
        handles += [
            Line2D([], [], color="0.3", label="training error", **TRAIN_STYLE),
            Line2D([], [], color="0.3", label="test error", **TEST_STYLE),
        ]
    if lr_drops and handles:
        handles.append(Line2D([], [], label="lr / 10", **LR_DROP_STYLE))
    if schedules and handles:
        handles += [
            Line2D([], [], color="0.3", linewidth=2.4, label=schedules.label),
            Line2D([], [], color="0.3", linewidth=2.4, alpha=FADED_ALPHA, label=schedules.faded_label),
        ]
    return handles


def layer_responses_figure(
    responses: dict[str, list[float]], colors: dict[str, str], dashed: set[str], path: Path, title: str | None = None
) -> Path:
    """Fig. 7: std of each 3x3 layer's response; top in layer order, bottom sorted (descending)."""
    fig, (ax_order, ax_sorted) = plt.subplots(2, 1, figsize=(9, 7.5))
    for label, stds in responses.items():
        style = {
            "color": colors[label],
            "linestyle": "--" if label in dashed else "-",
            "linewidth": 1.6,
            "marker": "o",
            "markersize": 2.5,
            "label": label,
        }
        ax_order.plot(range(1, len(stds) + 1), stds, **style)
        ax_sorted.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
    ax_order.set_title("layer index (original order)")
    ax_sorted.set_title("layer index (sorted by magnitude)")
    for ax in (ax_order, ax_sorted):
        ax.set_xlabel("3x3 layer index")
        ax.set_ylabel("std of response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def error_vs_depth_figure(
    ours: dict[int, tuple[float, float | None]],
    paper: dict[int, float],
    path: Path,
    ylabel: str = "test error (%)",
    title: str | None = None,
) -> Path:
    """Our mean (+- std over seeds) against the paper's numbers, per depth."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if paper:
        depths = sorted(paper)
        ax.plot(depths, [paper[d] for d in depths], "s--", color="0.45", label="paper (Table 6)")
    if ours:
        depths = sorted(ours)
        ax.errorbar(
            depths,
            [100 * ours[d][0] for d in depths],
            yerr=[100 * (ours[d][1] or 0) for d in depths],
            fmt="o-",
            color="#1f77b4",
            capsize=3,
            linewidth=2,
            label="ours (mean \u00b1 std over seeds)",
        )
    ax.set_xscale("log")
    all_depths = sorted(set(ours) | set(paper))
    ax.set_xticks(all_depths, [str(d) for d in all_depths])
    ax.minorticks_off()
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _save(fig: Figure, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay out, write the PNG and free the figure."""
    fig.tight_layout(rect=rect)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    plt.close(fig)
    return path
