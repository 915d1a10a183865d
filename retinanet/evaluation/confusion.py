"""Operating points per class: the confusion matrix and the best-F1 score thresholds.

Confusion matrix (at IoU `iou_threshold`; per-class score thresholds): per image, detections with
score >= their class's threshold, by decreasing score (stable), in two greedy passes: first each
takes the unmatched same-class ground truth of highest IoU >= 0.5; then each still unmatched one
takes the unmatched ground truth of *any* class of highest IoU >= 0.5. Cell [gt class, predicted
class] counts those pairs; a detection left over is a false positive in the background row (so a
duplicate is one), unless it lies in a crowd/difficult ground truth of its class (as above: then it
is not counted); a non-ignored ground truth left over is missed, in the background column.

Per class: precision, recall and F1 at the score threshold of best F1, from `VOCEvaluator`'s
matching at IoU 0.5 (difficult and crowd ground truths neither count nor penalise). Only thresholds
between distinct scores are candidates; on equal F1 the highest threshold wins.
"""

from __future__ import annotations

import numpy as np

from retinanet.evaluation.tide import inside_fraction
from retinanet.evaluation.voc import pairwise_iou


def best_f1(precision, recall, scores, num_gt: int) -> dict:
    """The operating point of best F1 on a ranked precision/recall curve.

    Args:
        precision: float [K], cumulative precision after each ranked detection.
        recall: float [K], cumulative recall.
        scores: float [K], non-increasing scores of the ranked detections.
        num_gt: number of ground truths.

    Returns:
        {"precision", "recall", "f1", "threshold", "tp", "fp", "num_gt"} at the threshold (a score:
        keep detections with score >= it) of highest F1, cutting only between distinct scores, the
        highest threshold on ties. Without ground truth every value but `num_gt` is None; with no
        true positive at all: threshold None, precision 0 (None without detections), recall and
        F1 0, tp 0, fp 0.
    """
    precision = np.asarray(precision, np.float64).reshape(-1)
    recall = np.asarray(recall, np.float64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    empty = {"precision": None, "recall": None, "f1": None, "threshold": None, "tp": None,
             "fp": None, "num_gt": int(num_gt)}
    if num_gt <= 0:
        return empty
    tp = np.rint(recall * num_gt)
    if scores.size == 0 or tp[-1] == 0:
        return dict(empty, precision=0.0 if scores.size else None, recall=0.0, f1=0.0, tp=0, fp=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / np.where(precision + recall > 0,
                                                        precision + recall, 1.0), 0.0)
    cuts = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    k = int(cuts[np.argmax(f1[cuts])])
    return {
        "precision": float(precision[k]),
        "recall": float(recall[k]),
        "f1": float(f1[k]),
        "threshold": float(scores[k]),
        "tp": int(tp[k]),
        "fp": int(k + 1 - tp[k]),
        "num_gt": int(num_gt),
    }


def confusion_matrix(records, class_indices, score_thresholds, iou_threshold: float = 0.5):
    """Class confusion counts with a background row and column (matching in the module docstring).

    Args:
        records: list of `ImageRecord` (boxes xyxy absolute pixels).
        class_indices: the C classes (0-based ints) of the rows/columns, in order.
        score_thresholds: float [C], a detection of `class_indices[i]` counts when its score is >=
            `score_thresholds[i]`.
        iou_threshold: a detection and a ground truth pair up at IoU >= this.

    Returns:
        int64 [C + 1, C + 1]: rows ground-truth class (last: background = false positives on
        nothing), columns predicted class (last: background = missed ground truths).
    """
    class_indices = [int(c) for c in class_indices]
    position = {c: i for i, c in enumerate(class_indices)}
    background = len(class_indices)
    thresholds = np.asarray(score_thresholds, np.float64).reshape(-1)
    matrix = np.zeros((background + 1, background + 1), np.int64)

    def slot(c):
        if c not in position:
            raise ValueError(f"class {c} is not in class_indices {class_indices}")
        return position[c]

    for record in records:
        counted = ~(record.gt_iscrowd | record.gt_difficult)
        gt_boxes, gt_classes = record.gt_boxes[counted], record.gt_classes[counted]
        det_slots = np.array([slot(c) for c in record.det_classes.tolist()], np.int64)
        keep = record.det_scores >= thresholds[det_slots] if det_slots.size else \
            np.zeros((0,), bool)
        order = np.flatnonzero(keep)[np.argsort(-record.det_scores[keep], kind="stable")]
        boxes, classes = record.det_boxes[order], record.det_classes[order]
        iou = pairwise_iou(boxes, gt_boxes)
        same = classes[:, None] == gt_classes[None, :]
        taken = np.zeros(gt_boxes.shape[0], bool)
        partner = np.full(order.size, -1, np.int64)
        for same_class_only in (True, False):
            for d in range(order.size):
                if partner[d] >= 0 or not gt_boxes.shape[0]:
                    continue
                allowed = ~taken & (iou[d] >= iou_threshold)
                if same_class_only:
                    allowed &= same[d]
                candidates = np.where(allowed, iou[d], -1.0)
                j = int(np.argmax(candidates))
                if candidates[j] >= 0:
                    partner[d], taken[j] = j, True
        unmatched = partner < 0
        if np.any(unmatched) and np.any(~counted):
            regions = ~counted
            inside = inside_fraction(boxes, record.gt_boxes[regions])
            same_region = classes[:, None] == record.gt_classes[regions][None, :]
            unmatched &= ~np.any((inside > iou_threshold) & same_region, axis=1)
        for d in np.flatnonzero(partner >= 0):
            matrix[slot(int(gt_classes[partner[d]])), slot(int(classes[d]))] += 1
        for d in np.flatnonzero(unmatched):
            matrix[background, slot(int(classes[d]))] += 1
        for j in np.flatnonzero(~taken):
            matrix[slot(int(gt_classes[j])), background] += 1
    return matrix
