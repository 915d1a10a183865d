"""TIDE (Bolya et al. 2020, "TIDE: A General Toolbox for Identifying Object Detection Errors"),
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
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retinanet.evaluation.voc import pairwise_iou

#: The six TIDE error types, in TIDE's order (its short names: Cls, Loc, Both, Dupe, Bkg, Miss).
ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")
#: TIDE's special errors (FalsePos, FalseNeg).
SPECIAL_ERROR_TYPES = ("false_positives", "false_negatives")

_CLS, _LOC, _BOTH, _DUPE, _BKG, _MISS = range(6)
# Detection states after matching; IGNORED detections lie in crowd / difficult regions.
TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1


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


def inside_fraction(boxes, regions) -> np.ndarray:
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
        state = np.full(num_det, FALSE_POSITIVE, np.int8)
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
                state[d], refers[d], gt_used[j] = TRUE_POSITIVE, j, True

        if ignored.size and num_det:
            inside = inside_fraction(boxes, record.gt_boxes[ignored])
            same_region = classes[:, None] == record.gt_classes[ignored][None, :]
            in_region = np.any((inside > pos) & same_region, axis=1)
            state[(state == FALSE_POSITIVE) & in_region] = IGNORED

        for d in range(num_det):
            if state[d] == TRUE_POSITIVE:
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
    pushed = m.det_state != IGNORED
    is_tp = m.det_state == TRUE_POSITIVE
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
        "num_ignored": int(np.count_nonzero(m.det_state == IGNORED)),
    }
