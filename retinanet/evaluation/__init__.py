"""Detection metrics: COCO mAP (pycocotools), Pascal VOC AP, a Keras callback and reports.

Inputs everywhere are per image: ground truth and detections with boxes `xyxy` in absolute pixels
of the original image (continuous coordinates) and 0-based classes; see `ImageAccumulator.update`.
"""

from retinanet.evaluation.callback import EvaluationCallback
from retinanet.evaluation.coco import COCO_METRIC_NAMES, COCOEvaluator
from retinanet.evaluation.inputs import ImageAccumulator, ImageRecord, check_image
from retinanet.evaluation.report import format_table, per_class_rows, plot_pr_curves, write_report
from retinanet.evaluation.runner import evaluate, flatten_metrics, split_batch
from retinanet.evaluation.voc import VOCEvaluator, pairwise_iou, voc_ap

__all__ = [
    "COCO_METRIC_NAMES",
    "COCOEvaluator",
    "EvaluationCallback",
    "ImageAccumulator",
    "ImageRecord",
    "VOCEvaluator",
    "check_image",
    "evaluate",
    "flatten_metrics",
    "format_table",
    "pairwise_iou",
    "per_class_rows",
    "plot_pr_curves",
    "split_batch",
    "voc_ap",
    "write_report",
]
