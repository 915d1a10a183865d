"""Error analysis: a TIDE breakdown, a confusion matrix, best-F1 operating points, worst errors.

`ErrorAnalyzer` takes the same per-image input as `COCOEvaluator` / `VOCEvaluator` (boxes `xyxy`
in absolute pixels, classes 0-based; see `ImageAccumulator.update`). Pure numpy.

TIDE (Bolya et al. 2020, "TIDE: A General Toolbox for Identifying Object Detection Errors"),
reproducing `tidecv-light==1.0.2` at foreground IoU `iou_threshold` (0.5) and background IoU
`background_threshold` (0.1):

- Matching, per image: detections sorted by score (stable), at most `max_detections`; each takes
  the unmatched ground truth *of its class* with the highest IoU when that IoU >= 0.5 (a TP).
- Every other detection gets exactly one error, tested in this order (IoUs are against all
  non-ignored ground truths of the image, matched or not):
  1. no ground truth in the image -> background;
  2. best same-class IoU in [0.1, 0.5] -> localization (against that ground truth);
  3. best other-class IoU >= 0.5 -> classification (against that ground truth);
  4. best IoU with an already *matched* same-class ground truth >= 0.5 -> duplicate;
  5. best IoU with any ground truth <= 0.1 -> background;
  6. otherwise -> both (wrong class and poorly localised).
  A ground truth that no detection matched and that no classification/localization error points
  at (while it is unmatched) is missed.
- Fixing (dAP of a type = AP with only that type fixed minus the base AP, clipped at 0):
  classification / localization: among the errors of both types that point at the same unmatched
  ground truth, the highest-scoring one becomes a TP (classification: in the ground truth's class)
  and the others are removed; errors pointing at matched ground truths are removed. Duplicate,
  background and both: the detections are removed. Missed: those ground truths leave the count.
  Special errors (not clipped): false positives = every TP scored 1 and every FP 0; false negatives
  = every unmatched ground truth leaves the count.
- AP per class: TIDE's 101-point interpolation (precision envelope sampled at the first detection
  reaching recall k/100, k = 0..100, 0 past the last). mAP averages the classes with a ground truth
  *or a detection*: a class with detections and no ground truth counts as AP 0 (unlike pycocotools,
  so `ap50` can be below COCO's AP50).
- Crowd and difficult ground truths are TIDE's ignore regions (its COCO loader's treatment of
  crowds): they are not counted; an unmatched detection of their class whose intersection with one
  of them exceeds `iou_threshold` of the detection's own area is ignored for AP. As in TIDE it still
  gets an error type (included in `counts`, never in `worst`), and a localization/classification
  error of it can still be "fixed" into a TP.
- dAP is on the 0-1 scale (TIDE prints 100 times these numbers).

Known differences from tidecv-light 1.0.2: it cannot evaluate boxed ignore regions (its code raises
NameError), and on images without any ground truth it keeps all detections instead of the top
`max_detections`. Ties in score across images are broken by the order the images were added
(tidecv-light uses the order of a Python set of image ids).

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

import csv
import dataclasses
import json
import math
import os

import numpy as np

from retinanet.evaluation.inputs import ImageAccumulator, class_name
from retinanet.evaluation.voc import VOCEvaluator, pairwise_iou

#: The six TIDE error types, in TIDE's order (its short names: Cls, Loc, Both, Dupe, Bkg, Miss).
ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")
#: TIDE's special errors (FalsePos, FalseNeg).
SPECIAL_ERROR_TYPES = ("false_positives", "false_negatives")

_CLS, _LOC, _BOTH, _DUPE, _BKG, _MISS = range(6)
_TP, _FP, _IGNORED = 1, 0, -1


def tide_ap(scores, is_tp, num_gt: int) -> float:
    """One class's AP with TIDE's 101-point interpolation.

    Args:
        scores: float [K] detection scores.
        is_tp: bool [K].
        num_gt: number of ground truths of the class.

    Returns:
        AP in [0, 1]: the mean over recall points k/100 (k = 0..100) of the precision
        envelope at the first ranked detection (by decreasing score, stable) whose recall
        reaches the point, 0 where none does; 0 when `num_gt` is 0.
    """
    if num_gt <= 0:
        return 0.0
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, bool).reshape(-1)
    if scores.size == 0:
        return 0.0
    ranked = is_tp[np.argsort(-scores, kind="stable")]
    cum_tp = np.cumsum(ranked).astype(np.float64)
    cum_fp = np.cumsum(~ranked).astype(np.float64)
    precision = cum_tp / (cum_tp + cum_fp)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    recall = cum_tp / float(num_gt)
    points = np.arange(101) / 100.0
    first = np.searchsorted(recall, points, side="left")
    sampled = np.where(first < precision.size, precision[np.minimum(first, precision.size - 1)], 0)
    return float(np.sum(sampled) / 101.0)


def _tide_map(classes, scores, is_tp, gt_counts: dict) -> float:
    """Mean `tide_ap` over classes with a detection or a positive ground-truth count."""
    classes = np.asarray(classes, np.int64)
    present = set(classes.tolist()) | {c for c, n in gt_counts.items() if n > 0}
    if not present:
        return 0.0
    aps = []
    for c in sorted(present):
        mask = classes == c
        aps.append(tide_ap(scores[mask], is_tp[mask], gt_counts.get(c, 0)))
    return float(np.mean(aps))


def _inside_fraction(boxes, regions) -> np.ndarray:
    """Intersection of each box with each region over the box's own area: float [N, M]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[:, None, :]
    regions = np.asarray(regions, np.float64).reshape(-1, 4)[None, :, :]
    width = np.clip(np.minimum(boxes[..., 2], regions[..., 2])
                    - np.maximum(boxes[..., 0], regions[..., 0]), 0, None)
    height = np.clip(np.minimum(boxes[..., 3], regions[..., 3])
                     - np.maximum(boxes[..., 1], regions[..., 1]), 0, None)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, width * height / np.where(area > 0, area, 1.0), 0.0)


@dataclasses.dataclass
class TideMatches:
    """TIDE's matching and error assignment over all images, flat arrays.

    Detections (the top `max_detections` of each image, K in all), in image order then decreasing
    score: `det_record` / `det_index` (the image's position and the detection's index in its
    `update` arrays), `det_class`, `det_score`, `det_state` (1 TP, 0 FP, -1 ignored), `det_error`
    (index into `ERROR_TYPES`, -1 for a TP), `det_gt` (global ground-truth index: the matched one
    for a TP, the one the error refers to for classification / localization / duplicate, else -1),
    `det_fixable` (a classification / localization error that becomes a TP when fixed).

    Ground truths (all, G in all): `gt_record`, `gt_index`, `gt_class`, `gt_counted` (not crowd
    or difficult), `gt_used` (matched), `gt_missed` (TIDE's missed error).
    """

    det_record: np.ndarray
    det_index: np.ndarray
    det_class: np.ndarray
    det_score: np.ndarray
    det_state: np.ndarray
    det_error: np.ndarray
    det_gt: np.ndarray
    det_fixable: np.ndarray
    gt_record: np.ndarray
    gt_index: np.ndarray
    gt_class: np.ndarray
    gt_counted: np.ndarray
    gt_used: np.ndarray
    gt_missed: np.ndarray


def _classify_error(d, iou, same, gt_used, pos: float, bg: float) -> tuple[int, int]:
    """TIDE's error of an unmatched detection `d` and the local ground truth it refers to."""
    same_iou = iou[d] * same[d]
    j = int(np.argmax(same_iou))
    if bg <= same_iou[j] <= pos:
        return _LOC, j
    other_iou = iou[d] * ~same[d]
    j = int(np.argmax(other_iou))
    if other_iou[j] >= pos:
        return _CLS, j
    used_iou = same_iou * gt_used
    j = int(np.argmax(used_iou))
    if used_iou[j] >= pos:
        return _DUPE, j
    if np.max(iou[d]) <= bg:
        return _BKG, -1
    return _BOTH, int(np.argmax(iou[d]))


def match_tide(records, iou_threshold: float = 0.5, background_threshold: float = 0.1,
               max_detections: int = 100) -> TideMatches:
    """Runs TIDE's per-image matching and error assignment (module docstring) over `ImageRecord`s.

    Args:
        records: list of `ImageRecord` (boxes xyxy absolute pixels).
        iou_threshold: foreground IoU (TIDE's `pos_threshold`).
        background_threshold: background IoU (TIDE's `background_threshold`).
        max_detections: detections kept per image, by score.

    Returns:
        A `TideMatches`.
    """
    pos, bg = float(iou_threshold), float(background_threshold)
    det_columns = {name: [] for name in ("record", "index", "class", "score", "state", "error",
                                         "gt", "fixable")}
    gt_columns = {name: [] for name in ("record", "index", "class", "counted", "used", "missed")}
    gt_offset = 0
    for number, record in enumerate(records):
        counted = ~(record.gt_iscrowd | record.gt_difficult)
        local_gt = np.flatnonzero(counted)  # local position -> index in the record
        ignored = np.flatnonzero(~counted)
        gt_boxes, gt_classes = record.gt_boxes[local_gt], record.gt_classes[local_gt]
        num_gt = local_gt.size

        order = np.argsort(-record.det_scores, kind="stable")[:max_detections]
        boxes, classes = record.det_boxes[order], record.det_classes[order]
        scores = record.det_scores[order]
        num_det = order.size
        state = np.full(num_det, _FP, np.int8)
        error = np.full(num_det, -1, np.int8)
        refers = np.full(num_det, -1, np.int64)  # local gt position
        fixable = np.zeros(num_det, bool)
        gt_used = np.zeros(num_gt, bool)
        gt_usable = np.zeros(num_gt, bool)
        best_det = np.full(num_gt, -1, np.int64)

        iou = pairwise_iou(boxes, gt_boxes)  # [D, G]
        same = classes[:, None] == gt_classes[None, :]
        same_iou = iou * same
        for d in range(num_det):
            if num_gt == 0:
                break
            available = np.where(gt_used, 0.0, same_iou[d])
            j = int(np.argmax(available))
            if available[j] >= pos:
                state[d], refers[d], gt_used[j] = _TP, j, True

        if ignored.size and num_det:
            inside = _inside_fraction(boxes, record.gt_boxes[ignored])
            same_region = classes[:, None] == record.gt_classes[ignored][None, :]
            in_region = np.any((inside > pos) & same_region, axis=1)
            state[(state == _FP) & in_region] = _IGNORED

        for d in range(num_det):
            if state[d] == _TP:
                continue
            if num_gt == 0:
                error[d] = _BKG
                continue
            error[d], refers[d] = _classify_error(d, iou, same, gt_used, pos, bg)
            if error[d] in (_LOC, _CLS) and not gt_used[refers[d]]:
                j = refers[d]
                gt_usable[j] = True
                # Scores are in decreasing order, so the first error to claim a ground truth is its
                # highest-scoring one, the one TIDE fixes.
                if best_det[j] < 0:
                    best_det[j] = d
                    fixable[d] = True

        det_columns["record"].append(np.full(num_det, number, np.int64))
        det_columns["index"].append(order.astype(np.int64))
        det_columns["class"].append(classes)
        det_columns["score"].append(scores)
        det_columns["state"].append(state)
        det_columns["error"].append(error)
        global_gt = np.where(refers >= 0, gt_offset + local_gt[np.maximum(refers, 0)], -1) \
            if num_gt else refers
        det_columns["gt"].append(global_gt)
        det_columns["fixable"].append(fixable)

        size = record.gt_boxes.shape[0]
        used_all = np.zeros(size, bool)
        used_all[local_gt] = gt_used
        missed_all = np.zeros(size, bool)
        missed_all[local_gt] = ~gt_used & ~gt_usable
        gt_columns["record"].append(np.full(size, number, np.int64))
        gt_columns["index"].append(np.arange(size, dtype=np.int64))
        gt_columns["class"].append(record.gt_classes)
        gt_columns["counted"].append(counted)
        gt_columns["used"].append(used_all)
        gt_columns["missed"].append(missed_all)
        gt_offset += size

    dtypes = {"record": np.int64, "index": np.int64, "class": np.int64, "score": np.float64,
              "state": np.int8, "error": np.int8, "gt": np.int64, "fixable": bool,
              "counted": bool, "used": bool, "missed": bool}

    def flat(columns, name):
        parts = columns[name]
        return np.concatenate(parts).astype(dtypes[name]) if parts \
            else np.zeros((0,), dtypes[name])

    return TideMatches(
        **{f"det_{name}": flat(det_columns, name) for name in det_columns},
        **{f"gt_{name}": flat(gt_columns, name) for name in gt_columns},
    )


def _class_counts(classes) -> dict:
    values, counts = np.unique(np.asarray(classes, np.int64), return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}


def tide_errors(matches: TideMatches) -> dict:
    """TIDE's base AP, dAP of every main and special error, and error counts.

    Args:
        matches: from `match_tide`.

    Returns:
        {"ap50": float, "main": {type: dAP}, "special": {"false_positives": dAP,
        "false_negatives": dAP}, "counts": {type: int}, "num_ignored": int}; AP and dAP on the 0-1
        scale (TIDE prints 100 times these). Main dAPs are clipped at 0, special ones are not.
    """
    m = matches
    pushed = m.det_state != _IGNORED
    is_tp = m.det_state == _TP
    gt_counts = _class_counts(m.gt_class[m.gt_counted])
    base = _tide_map(m.det_class[pushed], m.det_score[pushed], is_tp[pushed], gt_counts)

    main = {}
    for code, name in enumerate(ERROR_TYPES):
        counts = dict(gt_counts)
        if code == _MISS:
            for c, n in _class_counts(m.gt_class[m.gt_missed]).items():
                counts[c] -= n
            keep = pushed
            classes, scores, positive = m.det_class[keep], m.det_score[keep], is_tp[keep]
        else:
            fixed = m.det_error == code
            keep = pushed & ~fixed
            promoted = fixed & m.det_fixable
            if code == _CLS:
                promoted_classes = m.gt_class[m.det_gt[promoted]]
            else:
                promoted_classes = m.det_class[promoted]
            classes = np.concatenate([m.det_class[keep], promoted_classes])
            scores = np.concatenate([m.det_score[keep], m.det_score[promoted]])
            positive = np.concatenate([is_tp[keep], np.ones(int(promoted.sum()), bool)])
        main[name] = max(_tide_map(classes, scores, positive, counts) - base, 0.0)

    perfect_scores = np.where(is_tp[pushed], 1.0, 0.0)
    false_positives = _tide_map(m.det_class[pushed], perfect_scores, is_tp[pushed], gt_counts)
    matched_counts = {c: 0 for c in gt_counts}
    matched_counts.update(_class_counts(m.gt_class[m.gt_counted & m.gt_used]))
    false_negatives = _tide_map(m.det_class[pushed], m.det_score[pushed], is_tp[pushed],
                                matched_counts)

    counts = {name: int(np.count_nonzero(m.det_error == code))
              for code, name in enumerate(ERROR_TYPES)}
    counts["missed"] = int(np.count_nonzero(m.gt_missed))
    return {
        "ap50": base,
        "main": main,
        "special": {"false_positives": false_positives - base,
                    "false_negatives": false_negatives - base},
        "counts": counts,
        "num_ignored": int(np.count_nonzero(m.det_state == _IGNORED)),
    }


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
            inside = _inside_fraction(boxes, record.gt_boxes[regions])
            same_region = classes[:, None] == record.gt_classes[regions][None, :]
            unmatched &= ~np.any((inside > iou_threshold) & same_region, axis=1)
        for d in np.flatnonzero(partner >= 0):
            matrix[slot(int(gt_classes[partner[d]])), slot(int(classes[d]))] += 1
        for d in np.flatnonzero(unmatched):
            matrix[background, slot(int(classes[d]))] += 1
        for j in np.flatnonzero(~taken):
            matrix[slot(int(gt_classes[j])), background] += 1
    return matrix


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

        voc = VOCEvaluator(self.iou_threshold, class_names=self.class_names)
        voc._records = list(self._records)  # same checked records, no second validation
        per_class = {}
        for c in classes:
            entry = voc._evaluate_class(c)
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
        candidates = np.flatnonzero(m.det_state == _FP)
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


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------

def _jsonable(value):
    """Plain JSON types; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "n/a"
    return str(value).replace("|", "\\|")


def _labels(result: dict, class_names) -> list:
    labels = list(result["confusion"]["labels"])
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != len(labels) - 1:
            raise ValueError(f"class_names has {len(class_names)} names but the confusion matrix "
                             f"has {len(labels) - 1} classes")
        labels = class_names + [labels[-1]]
    return labels


def format_analysis(result: dict, class_names=None) -> str:
    """A markdown report: TIDE errors, per-class best-F1 points and the confusion matrix.

    Args:
        result: `ErrorAnalyzer.result()`.
        class_names: optional names replacing the result's class labels (same number).
    """
    labels = _labels(result, class_names)
    tide = result["tide"]
    lines = [
        "# Error analysis",
        "",
        f"## TIDE errors (IoU {tide['iou_threshold']:g}, background IoU "
        f"{tide['background_threshold']:g}): AP50 = {_cell(tide['ap50'])}",
        "",
        "dAP: AP50 gained by fixing that error type alone, 0-1 scale (TIDE prints 100x).",
        "",
        "| error | count | dAP |",
        "|---|---|---|",
    ]
    for name in ERROR_TYPES:
        lines.append(f"| {name} | {tide['counts'][name]} | {_cell(tide['main'][name])} |")
    for name in SPECIAL_ERROR_TYPES:
        lines.append(f"| all {name.replace('_', ' ')} | | {_cell(tide['special'][name])} |")
    lines += ["", f"Detections ignored in crowd/difficult regions: {tide['num_ignored']}", ""]

    lines += ["## Per class at the best-F1 score threshold", "",
              "| class | num_gt | threshold | precision | recall | F1 | tp | fp |",
              "|---|---|---|---|---|---|---|---|"]
    for label, entry in zip(labels, result["per_class"].values()):
        lines.append("| " + " | ".join(_cell(v) for v in (
            label, entry["num_gt"], entry["threshold"], entry["precision"], entry["recall"],
            entry["f1"], entry["tp"], entry["fp"])) + " |")

    confusion = result["confusion"]
    lines += ["", f"## Confusion matrix (IoU {confusion['iou_threshold']:g}; rows ground truth, "
              "columns predicted)", "",
              "| gt \\ predicted | " + " | ".join(_cell(x) for x in labels) + " |",
              "|---|" + "---|" * len(labels)]
    for label, row in zip(labels, confusion["matrix"]):
        lines.append(f"| {_cell(label)} | " + " | ".join(str(v) for v in row) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_confusion_matrix(result: dict, path: str, class_names=None) -> str:
    """Saves the confusion matrix as a PNG (counts in each cell, colour by row share).

    Uses matplotlib's `Figure` directly (no pyplot, no global backend change).

    Args:
        result: `ErrorAnalyzer.result()`.
        path: the PNG to write (its folder must exist).
        class_names: optional names replacing the result's class labels.

    Returns:
        `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = _labels(result, class_names)
    matrix = np.asarray(result["confusion"]["matrix"], np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = min(4 + 0.45 * len(labels), 30)
    figure = Figure(figsize=(size + 1.5, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the row")
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    if len(labels) <= 25:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    axes.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                              fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    thresholds = result["confusion"]["score_thresholds"]
    scope = f"score >= {thresholds[0]:.2f}" if len(set(thresholds)) == 1 \
        else "per-class best-F1 score thresholds"
    axes.set_title(f"Confusion at IoU {result['confusion']['iou_threshold']:g}, {scope}")
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_analysis(result: dict, output_dir: str, class_names=None) -> dict:
    """Writes `analysis.md`, `analysis.json`, `confusion_matrix.csv` and `confusion_matrix.png`.

    Args:
        result: `ErrorAnalyzer.result()`.
        output_dir: created when missing.
        class_names: optional names replacing the result's class labels (same number).

    Returns:
        {"markdown", "json", "csv", "png"} -> file paths. The JSON is strict (None for undefined
        values, never NaN).
    """
    labels = _labels(result, class_names)
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "markdown": os.path.join(output_dir, "analysis.md"),
        "json": os.path.join(output_dir, "analysis.json"),
        "csv": os.path.join(output_dir, "confusion_matrix.csv"),
        "png": os.path.join(output_dir, "confusion_matrix.png"),
    }
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(format_analysis(result, class_names))
    with open(paths["json"], "w", encoding="utf-8") as handle:
        json.dump(_jsonable(result), handle, indent=2, allow_nan=False)
    with open(paths["csv"], "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["gt \\ predicted"] + labels)
        for label, row in zip(labels, result["confusion"]["matrix"]):
            writer.writerow([label] + [int(v) for v in row])
    plot_confusion_matrix(result, paths["png"], class_names)
    return paths


_MISSED_COLOR = (255, 190, 0)
_GT_COLOR = (0, 150, 255)  # white tags would hide their white text


def plot_error_gallery(images_by_id: dict, worst: dict, path: str, class_names=None,
                       columns: int = 4, tile_inches: float = 3.2) -> str | None:
    """Saves one tile per worst false positive and missed ground truth as a PNG grid.

    False positives are red, labelled with their error type, class and score, over the ground
    truth their error refers to (blue); missed ground truths are amber.

    Args:
        images_by_id: {image_id: uint8 [H, W, 3] RGB}, in the pixels the boxes are in.
        worst: `result()["worst"]`.
        path: the PNG to write.
        class_names: optional names for the labels (default: the entries' `class_name`).
        columns: tiles per row.

    Returns:
        `path`, or None when none of the entries' images is in `images_by_id` (no file written).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from retinanet.visualization import RED, _to_uint8, draw_boxes

    def name(entry, key="class"):
        if class_names is not None:
            return class_name(entry[key], class_names)
        return entry.get(f"{key}_name") or str(entry[key])

    tiles = []
    for entry in worst.get("false_positives", []):
        if entry["image_id"] not in images_by_id:
            continue
        tile = _to_uint8(images_by_id[entry["image_id"]])
        if entry.get("gt_box") is not None:
            tile = draw_boxes(tile, [entry["gt_box"]], [name(entry, "gt_class")],
                              colors=_GT_COLOR)
        tile = draw_boxes(tile, [entry["box"]], [f"{name(entry)} {entry['score']:.2f}"],
                          colors=RED)
        tiles.append((tile, f"{entry['error']} FP, image {entry['image_id']}"))
    for entry in worst.get("missed", []):
        if entry["image_id"] not in images_by_id:
            continue
        tile = draw_boxes(images_by_id[entry["image_id"]], [entry["box"]], [name(entry)],
                          colors=_MISSED_COLOR)
        tiles.append((tile, f"missed, image {entry['image_id']}"))
    if not tiles:
        return None

    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    figure = Figure(figsize=(tile_inches * columns, tile_inches * rows + 0.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (tile, title) in zip(axes.ravel(), tiles):
        axis.imshow(tile)
        axis.set_title(title, fontsize=9)
    figure.suptitle("worst false positives (red; blue: the ground truth they refer to) and "
                    "missed objects (amber)", fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
