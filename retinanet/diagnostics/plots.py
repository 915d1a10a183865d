"""Histograms of box sizes and aspect ratios at the training size, with the anchors over them.

Drawn on a bare `matplotlib.figure.Figure` (no pyplot), so that notebooks keep their backend.
"""

from __future__ import annotations

import os

import numpy as np


def anchor_sides(anchor_generator) -> np.ndarray:
    """The sqrt-of-area of every anchor shape, `anchor_size * 2**level * scale`, sorted."""
    return np.sort([anchor_generator.anchor_size * 2**level * scale
                    for level in anchor_generator.levels for scale in anchor_generator.scales])


def _log_bins(values, count=40):
    values = values[values > 0]
    low, high = (values.min(), values.max()) if values.size else (1.0, 2.0)
    if high <= low:
        low, high = low / 1.5, high * 1.5
    return np.geomspace(low, high, count + 1)


def _save(figure, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_box_sizes(widths, heights, anchor_generator, path: str, covered=None) -> str:
    """Histogram of box sides (sqrt of area, log scale) with the anchor sides as lines.

    Args:
        widths, heights: float `[N]`, box sizes in px at the training size.
        anchor_generator: the `AnchorGenerator` whose sides are drawn (one line per level and
            scale).
        path: the PNG to write.
        covered: optional bool `[N]`; then boxes without an anchor at the positive IoU are
            stacked in red.

    Returns:
        `path`.
    """
    from matplotlib.figure import Figure

    sides = np.sqrt(np.asarray(widths, np.float64) * np.asarray(heights, np.float64))
    figure = Figure(figsize=(8, 4))
    axis = figure.subplots()
    bins = _log_bins(np.concatenate([sides, anchor_sides(anchor_generator)]))
    if covered is None:
        axis.hist(sides, bins=bins, color="tab:blue", label="boxes")
    else:
        covered = np.asarray(covered, bool)
        axis.hist([sides[covered], sides[~covered]], bins=bins, stacked=True,
                  color=["tab:blue", "tab:red"], label=["covered", "not covered"])
    for index, side in enumerate(anchor_sides(anchor_generator)):
        axis.axvline(side, color="black", linewidth=0.8, linestyle="--",
                     label="anchor sides" if index == 0 else None)
    axis.set_xscale("log")
    axis.set_xlabel("box side, sqrt(width * height), px at the training size")
    axis.set_ylabel("boxes")
    axis.set_title(f"Box sizes ({sides.size} boxes)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_aspect_ratios(widths, heights, anchor_generator, path: str) -> str:
    """Histogram of box aspect ratios (height / width, log scale) with the anchor ratios.

    Args:
        widths, heights: float `[N]`, box sizes in px.
        anchor_generator: the `AnchorGenerator` whose aspect ratios are drawn.
        path: the PNG to write.

    Returns:
        `path`.
    """
    from matplotlib.figure import Figure

    widths, heights = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    valid = (widths > 0) & (heights > 0)
    ratios = heights[valid] / widths[valid]
    figure = Figure(figsize=(8, 4))
    axis = figure.subplots()
    bins = _log_bins(np.concatenate([ratios, anchor_generator.aspect_ratios]))
    axis.hist(ratios, bins=bins, color="tab:blue", label="boxes")
    for index, ratio in enumerate(anchor_generator.aspect_ratios):
        axis.axvline(ratio, color="black", linewidth=0.8, linestyle="--",
                     label="anchor ratios" if index == 0 else None)
    axis.set_xscale("log")
    axis.set_xlabel("aspect ratio, height / width")
    axis.set_ylabel("boxes")
    axis.set_title(f"Box aspect ratios ({ratios.size} boxes)")
    axis.legend(fontsize=8)
    return _save(figure, path)
