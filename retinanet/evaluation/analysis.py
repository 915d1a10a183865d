"""Error analysis: a TIDE breakdown, a confusion matrix, best-F1 operating points, worst errors.

`ErrorAnalyzer` takes the same per-image input as `COCOEvaluator` / `VOCEvaluator` (boxes `xyxy`
in absolute pixels, classes 0-based; see `ImageAccumulator.update`). Pure numpy.

The rules of each part are in `retinanet.evaluation.tide` and `retinanet.evaluation.confusion`;
`retinanet.evaluation.analysis_report` writes the results.
"""

from __future__ import annotations

import numpy as np

from retinanet.evaluation.confusion import best_f1, confusion_matrix
from retinanet.evaluation.inputs import ImageAccumulator
from retinanet.evaluation.tide import (ERROR_TYPES, FALSE_POSITIVE, TideMatches, match_tide,
                                      tide_errors)
from retinanet.evaluation.voc import evaluate_class, pairwise_iou


def _box(values) -> list:
    return [float(v) for v in values]


class ErrorAnalyzer(ImageAccumulator):
    """TIDE errors, a confusion matrix, best-F1 points and the worst errors (module docstring).

    Args:
        class_names: optional names, index = 0-based class; fixes the number of classes.
        score_threshold: the confusion matrix's score threshold: None (each class's best-F1
            threshold, `fallback_threshold` where it has none), one float for all classes, or a
            sequence of one float per class (in `class_names` order; needs `class_names`).
        max_worst: how many false positives and missed ground truths to list in `worst`.
        iou_threshold: foreground IoU (TIDE, confusion matrix, best F1).
        background_threshold: TIDE's background IoU.
        max_detections: detections kept per image for TIDE (by score).
        fallback_threshold: the confusion threshold of a class without a best-F1 threshold.

    `result()` returns (no NaN anywhere: None where undefined):

        {"tide": {"ap50": float, "main": {type: dAP for type in ERROR_TYPES},
                  "special": {"false_positives": dAP, "false_negatives": dAP},
                  "counts": {type: int for type in ERROR_TYPES}, "num_ignored": int,
                  "iou_threshold": 0.5, "background_threshold": 0.1},
         "confusion": {"labels": [name, ..., "background"], "matrix": [[int]] (rows gt,
                       columns predicted), "score_thresholds": [float per class],
                       "iou_threshold": 0.5},
         "per_class": {name: {"precision", "recall", "f1", "threshold", "tp", "fp", "num_gt"}},
         "worst": {"false_positives": [{"image_id", "box", "class", "class_name", "score",
                                        "error", "iou", "gt_box", "gt_class",
                                        "gt_class_name"}],
                   "missed": [{"image_id", "box", "class", "class_name"}]}}

    AP and dAP are on the 0-1 scale (TIDE prints 100 times these). `worst["false_positives"]`
    are the highest-scoring detections that count as false positives in TIDE's AP, with their
    error type, `iou` their highest IoU with any counted ground truth of the image, and `gt_box` /
    `gt_class` the ground truth their error refers to (the best-overlapping one for "both"; None
    for "background"). `worst["missed"]` are TIDE's missed ground truths, largest first.
    """

    def __init__(self, class_names=None, score_threshold=None, max_worst: int = 16,
                 iou_threshold: float = 0.5, background_threshold: float = 0.1,
                 max_detections: int = 100, fallback_threshold: float = 0.5):
        iou_threshold = float(iou_threshold)
        background_threshold = float(background_threshold)
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 <= background_threshold <= iou_threshold:
            raise ValueError("background_threshold must be in [0, iou_threshold], got "
                             f"{background_threshold}")
        if int(max_worst) < 0:
            raise ValueError(f"max_worst must be >= 0, got {max_worst}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        super().__init__(class_names=class_names)
        if score_threshold is not None and not np.isscalar(score_threshold):
            score_threshold = [float(t) for t in score_threshold]
            if class_names is None or len(score_threshold) != len(self.class_names):
                raise ValueError("a per-class score_threshold needs class_names of the same "
                                 f"length; got {len(score_threshold)} thresholds")
        elif score_threshold is not None:
            score_threshold = float(score_threshold)
        self.score_threshold = score_threshold
        self.max_worst = int(max_worst)
        self.iou_threshold = iou_threshold
        self.background_threshold = background_threshold
        self.max_detections = int(max_detections)
        self.fallback_threshold = float(fallback_threshold)

    def result(self) -> dict:
        """Everything added so far, analysed; layout in the class docstring."""
        classes = self._class_indices()
        matches = match_tide(self._records, self.iou_threshold, self.background_threshold,
                             self.max_detections)
        tide = tide_errors(matches)
        tide.update(iou_threshold=self.iou_threshold,
                    background_threshold=self.background_threshold)

        per_class = {}
        for c in classes:
            entry = evaluate_class(self._records, c, self.iou_threshold)
            per_class[c] = best_f1(entry["precision"], entry["recall"], entry["scores"],
                                   entry["num_gt"])

        if self.score_threshold is None:
            thresholds = [per_class[c]["threshold"] for c in classes]
            thresholds = [self.fallback_threshold if t is None else t for t in thresholds]
        elif isinstance(self.score_threshold, float):
            thresholds = [self.score_threshold] * len(classes)
        else:
            thresholds = list(self.score_threshold)
        matrix = confusion_matrix(self._records, classes, thresholds, self.iou_threshold)

        return {
            "tide": tide,
            "confusion": {
                "labels": [self._name(c) for c in classes] + ["background"],
                "matrix": matrix.tolist(),
                "score_thresholds": [float(t) for t in thresholds],
                "iou_threshold": self.iou_threshold,
            },
            "per_class": {self._name(c): per_class[c] for c in classes},
            "worst": self._worst(matches),
        }

    def _worst(self, m: TideMatches) -> dict:
        false_positives = []
        candidates = np.flatnonzero(m.det_state == FALSE_POSITIVE)
        for k in candidates[np.argsort(-m.det_score[candidates], kind="stable")][:self.max_worst]:
            record = self._records[m.det_record[k]]
            box = record.det_boxes[m.det_index[k]]
            counted = ~(record.gt_iscrowd | record.gt_difficult)
            overlaps = pairwise_iou(box[None], record.gt_boxes[counted])[0]
            error = ERROR_TYPES[m.det_error[k]]
            gt_box = gt_class = None
            if m.det_gt[k] >= 0:
                g = m.det_gt[k]
                gt_box = _box(self._records[m.gt_record[g]].gt_boxes[m.gt_index[g]])
                gt_class = int(m.gt_class[g])
            false_positives.append({
                "image_id": record.image_id,
                "box": _box(box),
                "class": int(m.det_class[k]),
                "class_name": self._name(int(m.det_class[k])),
                "score": float(m.det_score[k]),
                "error": error,
                "iou": float(np.max(overlaps)) if overlaps.size else 0.0,
                "gt_box": gt_box,
                "gt_class": gt_class,
                "gt_class_name": None if gt_class is None else self._name(gt_class),
            })
        missed = []
        lost = np.flatnonzero(m.gt_missed)
        boxes = np.array([self._records[m.gt_record[g]].gt_boxes[m.gt_index[g]] for g in lost])
        boxes = boxes.reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for i in np.argsort(-areas, kind="stable")[:self.max_worst]:
            g = lost[i]
            missed.append({
                "image_id": self._records[m.gt_record[g]].image_id,
                "box": _box(boxes[i]),
                "class": int(m.gt_class[g]),
                "class_name": self._name(int(m.gt_class[g])),
            })
        return {"false_positives": false_positives, "missed": missed}
