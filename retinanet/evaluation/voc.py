"""Pascal VOC average precision (the devkit's `voc_eval`, with continuous coordinates).

Per class, detections from all images are ranked by decreasing score (stable sort, so ties keep
the order they were added in). Each detection finds the ground truth of the same image and class
with the highest IoU (over *all* of them, matched or not). Then:

- IoU >= `iou_threshold` and that ground truth is difficult (or crowd): ignored, neither TP nor FP;
- IoU >= `iou_threshold` and it is not matched yet: TP, and it becomes matched;
- IoU >= `iou_threshold` but it is already matched (a duplicate): FP;
- otherwise (or no ground truth of that class in the image): FP.

Differences from the original devkit, on purpose: IoU uses continuous coordinates (no `+ 1`
pixel), the threshold is inclusive (`>=`, like COCO; the devkit uses `>`), ties in score are broken
by insertion order (the devkit's quicksort leaves them unspecified) and the 11 recall thresholds are
exactly k/10 (the usual `np.arange(0, 1.1, 0.1)` makes 0.3 into 0.30000000000000004, so a recall of
exactly 3/10 would miss it).
"""

from __future__ import annotations

import numpy as np

from retinanet.evaluation.inputs import ImageAccumulator

METHODS = ("all_points", "11_points")


def pairwise_iou(boxes_a, boxes_b) -> np.ndarray:
    """`retinanet.ops.box_iou` for numpy callers: float [N, 4] and [M, 4] xyxy -> float64 [N, M].

    Continuous coordinates (area = (x2 - x1) * (y2 - y1)); 0 where the union is empty.
    """
    from retinanet import ops

    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    if not (len(a) and len(b)):
        return np.zeros((len(a), len(b)))
    return ops.box_iou(a, b).numpy().astype(np.float64)


def voc_ap(recall: np.ndarray, precision: np.ndarray, method: str = "all_points") -> float:
    """Area under a precision/recall curve, the VOC way.

    Args:
        recall: float [K], non-decreasing, recall after each ranked detection.
        precision: float [K], precision after each ranked detection.
        method: "all_points" (VOC2010+: area under the monotone precision envelope) or
            "11_points" (VOC2007: mean over recall thresholds 0, 0.1, ..., 1 of the best
            precision at recall >= t, 0 where none).

    Returns:
        AP in [0, 1]; 0 for empty arrays.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if method == "11_points":
        total = 0.0
        for threshold in np.arange(11) / 10.0:
            reached = recall >= threshold
            total += float(np.max(precision[reached])) if np.any(reached) else 0.0
        return total / 11.0
    if method != "all_points":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


class VOCEvaluator(ImageAccumulator):
    """Pascal VOC AP per class and their mean (see the module docstring for the matching rule).

    Args:
        iou_threshold: a detection matches a ground truth at IoU >= this (0 < t <= 1).
        method: "all_points" (VOC2010+) or "11_points" (VOC2007).
        class_names: optional names, index = 0-based class; fixes the number of classes.

    `update(...)`: see `ImageAccumulator.update`. `gt_difficult` and `gt_iscrowd` both mark ground
    truths that neither count (not in `num_gt`) nor penalise (a detection whose best match is one
    of them is ignored).

    `result()` returns:

        {"mAP": float,
         "per_class": {name: {"AP": float,
                              "precision": float64 [K], "recall": float64 [K], "scores": [K],
                              "num_gt": int, "tp": int, "fp": int}}}

    `precision`/`recall` are cumulative, after each of the K ranked detections that count (TP or
    FP; ignored detections are left out, which does not change AP); `scores` are their scores;
    `tp`/`fp` are the final counts. A class with `num_gt == 0` has AP = NaN and recall NaN and is
    excluded from `mAP`; `mAP` is NaN when no class has a ground truth. Classes are all of
    `class_names`, or without names those seen in any ground truth or detection (`name = str(c)`).
    """

    def __init__(self, iou_threshold: float = 0.5, method: str = "all_points", class_names=None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        iou_threshold = float(iou_threshold)
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.method = method
        super().__init__(class_names=class_names)

    def result(self) -> dict:
        """AP of every class from everything added so far; layout in the class docstring."""
        per_class = {c: evaluate_class(self._records, c, self.iou_threshold, self.method)
                     for c in self._class_indices()}
        aps = [entry["AP"] for entry in per_class.values() if entry["num_gt"] > 0]
        return {
            "mAP": float(np.mean(aps)) if aps else float("nan"),
            "per_class": {self._name(c): entry for c, entry in per_class.items()},
        }


def evaluate_class(records, class_index: int, iou_threshold: float = 0.5,
                   method: str = "all_points") -> dict:
    """One class's precision-recall curve and AP over checked per-image records.

    Args:
        records: the evaluators' per-image records (`retinanet.evaluation.inputs`), with
            `gt_boxes`, `gt_classes`, `gt_difficult`, `gt_iscrowd`, `det_boxes`,
            `det_scores`, `det_classes`; boxes xyxy in pixels.
        class_index: the class to score.
        iou_threshold: a detection matches a ground truth at IoU >= this.
        method: one of `METHODS`.

    Returns:
        `AP`, `precision` and `recall` per counted detection (by falling score), their
        `scores`, `num_gt` (not difficult or crowd), `tp` and `fp`.
    """
    num_gt = 0
    # Per detection, in insertion order: image number, score, best IoU, index of that gt.
    det_image, det_score, det_best_iou, det_best_gt = [], [], [], []
    gt_ignored = []  # per image: bool [G] of this class's ground truths
    for image_number, record in enumerate(records):
        gt_mask = record.gt_classes == class_index
        gt_boxes = record.gt_boxes[gt_mask]
        ignored = (record.gt_difficult | record.gt_iscrowd)[gt_mask]
        gt_ignored.append(ignored)
        num_gt += int(np.count_nonzero(~ignored))

        det_mask = record.det_classes == class_index
        det_boxes = record.det_boxes[det_mask]
        count = det_boxes.shape[0]
        if count == 0:
            continue
        det_image.append(np.full(count, image_number))
        det_score.append(record.det_scores[det_mask])
        if gt_boxes.shape[0]:
            ious = pairwise_iou(det_boxes, gt_boxes)  # [D, G]
            det_best_gt.append(np.argmax(ious, axis=1))  # first of equal maxima
            det_best_iou.append(np.max(ious, axis=1))
        else:
            det_best_gt.append(np.full(count, -1))
            det_best_iou.append(np.full(count, -np.inf))

    if det_score:
        images = np.concatenate(det_image)
        scores = np.concatenate(det_score)
        best_iou = np.concatenate(det_best_iou)
        best_gt = np.concatenate(det_best_gt)
    else:
        images = best_gt = np.zeros((0,), np.int64)
        scores = best_iou = np.zeros((0,), np.float64)

    order = np.argsort(-scores, kind="stable")
    matched = [np.zeros_like(ignored) for ignored in gt_ignored]
    outcome = np.zeros(order.shape[0], np.int8)  # 1 TP, -1 FP, 0 ignored
    for rank, det in enumerate(order):
        if best_iou[det] >= iou_threshold:
            image, gt = images[det], best_gt[det]
            if gt_ignored[image][gt]:
                continue
            if not matched[image][gt]:
                matched[image][gt] = True
                outcome[rank] = 1
                continue
        outcome[rank] = -1

    counted = outcome != 0
    is_tp = outcome[counted] == 1
    cum_tp = np.cumsum(is_tp).astype(np.float64)
    cum_fp = np.cumsum(~is_tp).astype(np.float64)
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1.0)
    if num_gt > 0:
        recall = cum_tp / num_gt
        ap = voc_ap(recall, precision, method)
    else:
        recall = np.full(cum_tp.shape, np.nan)
        ap = float("nan")
    return {
        "AP": ap,
        "precision": precision,
        "recall": recall,
        "scores": scores[order][counted],
        "num_gt": num_gt,
        "tp": int(np.count_nonzero(is_tp)),
        "fp": int(np.count_nonzero(~is_tp)),
    }
