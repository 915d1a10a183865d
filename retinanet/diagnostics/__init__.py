"""Diagnostics of a dataset against a detector's settings: data health, anchor coverage
(best-possible recall), anchor fitting, histograms and the `retinanet doctor` report.

Library functions for the `doctor` and `debug-anchors` commands; they take plain objects (a
`DetectionDataset`, an `AnchorGenerator`, a `LabelEncoder`, the pipeline's `image_size` and
`max_boxes`), not a config.
"""

from retinanet.diagnostics.coverage import Coverage, anchor_coverage
from retinanet.diagnostics.doctor import run_doctor, summary_text
from retinanet.diagnostics.fitting import analytic_best_iou, fit_anchors, override_flags
from retinanet.diagnostics.health import data_health
from retinanet.diagnostics.plots import plot_aspect_ratios, plot_box_sizes
from retinanet.diagnostics.scaling import ScaledBoxes, scaled_boxes

__all__ = [
    "Coverage", "ScaledBoxes", "analytic_best_iou", "anchor_coverage", "data_health",
    "fit_anchors", "override_flags", "plot_aspect_ratios", "plot_box_sizes", "run_doctor",
    "scaled_boxes", "summary_text",
]
