"""Detection metrics: COCO mAP (pycocotools), Pascal VOC AP, a Keras callback and reports.

Inputs, the same for both evaluators, one call per image (`ImageAccumulator.update`):

    evaluator.update(image_id, gt_boxes, gt_classes, det_boxes, det_scores, det_classes,
                     gt_iscrowd=None, gt_difficult=None)

with boxes `xyxy` in absolute pixels of the original image (continuous: width = x2 - x1), classes
0-based, numpy arrays / lists / eager tensors. Image ids are any str / bytes / int, unique. Bad
input raises a ValueError naming the image.

Results:

- `COCOEvaluator(class_names=None, category_ids=None).result()`:
  `{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
  "per_class": {name: {same 12 keys, "num_gt", "num_detections"}}}`, computed by pycocotools;
  -1 where pycocotools gives -1 (no ground truth there). `gt_difficult` is ignored; crowds count
  the COCO way.
- `VOCEvaluator(iou_threshold=0.5, method="all_points" | "11_points", class_names=None).result()`:
  `{"mAP", "per_class": {name: {"AP", "precision" [K], "recall" [K], "scores" [K], "num_gt",
  "tp", "fp"}}}`; difficult and crowd ground truths neither count nor penalise; classes without
  ground truth have AP NaN and are left out of mAP.
- `evaluate(model, dataset, class_names=None, ...)` -> `{"coco": ..., "voc": ...}`;
  `flatten_metrics(results, prefix)` -> scalar logs (`AP` ... `ARl`, `mAP_voc`).
- `EvaluationCallback(dataset, every_n_epochs=1, class_names=None, prefix="val_")` writes
  `val_AP`, `val_AP50`, ..., `val_mAP_voc` into `logs`; list it before ModelCheckpoint,
  EarlyStopping, TensorBoard and CSVLogger.
- `write_report(results, output_dir)` -> report.md, per_class.csv, metrics.json, pr_curves.png.
- `ErrorAnalyzer(class_names=None, score_threshold=None, max_worst=16).result()`: TIDE error
  breakdown (dAP per error type, 0-1 scale), confusion matrix, per-class best-F1 points, worst
  errors (see `retinanet.evaluation.analysis`); `write_analysis(result, output_dir)` ->
  analysis.md, analysis.json, confusion_matrix.csv / .png; `plot_error_gallery(...)`.

`name` is `class_names[c]`, or `str(c)` without names.
"""

from retinanet.evaluation.analysis import ErrorAnalyzer
from retinanet.evaluation.analysis_report import plot_error_gallery, write_analysis
from retinanet.evaluation.callback import EvaluationCallback
from retinanet.evaluation.coco import COCO_METRIC_NAMES, COCOEvaluator
from retinanet.evaluation.inputs import ImageAccumulator, ImageRecord, check_image
from retinanet.evaluation.report import format_table, per_class_rows, plot_pr_curves, write_report
from retinanet.evaluation.runner import evaluate, flatten_metrics, split_batch
from retinanet.evaluation.voc import VOCEvaluator, pairwise_iou, voc_ap

__all__ = [
    "COCO_METRIC_NAMES",
    "COCOEvaluator",
    "ErrorAnalyzer",
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
    "plot_error_gallery",
    "plot_pr_curves",
    "split_batch",
    "voc_ap",
    "write_analysis",
    "write_report",
]
