"""VOCEvaluator: hand-worked examples and agreement with a loop-based devkit voc_eval."""

import math

import numpy as np
import pytest

from retinanet.evaluation import VOCEvaluator, pairwise_iou, voc_ap


def _single_image(gt_boxes, gt_classes, det_boxes, det_scores, det_classes, **kwargs):
    evaluator = VOCEvaluator(method=kwargs.pop("method", "all_points"),
                             iou_threshold=kwargs.pop("iou_threshold", 0.5))
    evaluator.update("only", gt_boxes, gt_classes, det_boxes, det_scores, det_classes, **kwargs)
    return evaluator.result()


# ---------------------------------------------------------------------------------------------
# Hand-worked examples
# ---------------------------------------------------------------------------------------------

def test_duplicate_detection_is_a_false_positive():
    # gts A, B. Ranked: A exactly (TP), a near copy of A (best gt A, already matched: FP),
    # B exactly (TP). precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # all points: envelope 1 on (0, 1/2], 2/3 on (1/2, 1] -> 1/2 + 1/3 = 5/6.
    # 11 points: t = 0..0.5 -> 1 (six), t = 0.6..1 -> 2/3 (five) -> (6 + 10/3) / 11 = 28/33.
    args = ([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0],
            [[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])
    result = _single_image(*args)
    entry = result["per_class"]["0"]
    assert entry["AP"] == pytest.approx(5 / 6, abs=1e-12)
    assert result["mAP"] == pytest.approx(5 / 6, abs=1e-12)
    assert (entry["tp"], entry["fp"], entry["num_gt"]) == (2, 1, 2)
    np.testing.assert_allclose(entry["precision"], [1, 1 / 2, 2 / 3], atol=1e-12)
    np.testing.assert_allclose(entry["recall"], [1 / 2, 1 / 2, 1], atol=1e-12)
    np.testing.assert_allclose(entry["scores"], [0.9, 0.8, 0.7])
    assert _single_image(*args, method="11_points")["mAP"] == pytest.approx(28 / 33, abs=1e-12)


@pytest.mark.parametrize("flag", ["gt_difficult", "gt_iscrowd"])
def test_difficult_objects_neither_count_nor_penalise(flag):
    # A normal, D difficult. Ranked: on D (ignored), on A (TP), far away (FP), on D again
    # (ignored, even as a duplicate). num_gt = 1; counted: TP, FP -> precision 1, 1/2, recall 1, 1.
    # AP = 1.
    gt = [[0, 0, 10, 10], [50, 50, 60, 60]]
    dets = [[50, 50, 60, 60], [0, 0, 10, 10], [100, 100, 110, 110], [51, 50, 60, 60]]
    scores = [0.95, 0.9, 0.8, 0.5]
    entry = _single_image(gt, [0, 0], dets, scores, [0, 0, 0, 0], **{flag: [False, True]})
    entry = entry["per_class"]["0"]
    assert (entry["tp"], entry["fp"], entry["num_gt"]) == (1, 1, 1)
    assert entry["AP"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(entry["precision"], [1, 1 / 2])
    np.testing.assert_allclose(entry["recall"], [1, 1])
    np.testing.assert_allclose(entry["scores"], [0.9, 0.8])
    # Without the flag: TP (D), TP (A), FP, FP (duplicate of D): 2 tp, 2 fp, AP = 1.
    plain = _single_image(gt, [0, 0], dets, scores, [0, 0, 0, 0])["per_class"]["0"]
    assert (plain["tp"], plain["fp"], plain["num_gt"]) == (2, 2, 2)


def test_only_difficult_ground_truth_makes_a_detection_ignored_not_wrong():
    # The difficult object is the only one: a detection on it changes nothing, a miss elsewhere
    # is a FP; the class has no counted gt so its AP is NaN and it leaves the mean.
    evaluator = VOCEvaluator(class_names=["person", "dog"])
    evaluator.update(1, [[0, 0, 10, 10], [0, 0, 20, 20]], [0, 1], [[0, 0, 10, 10], [0, 0, 20, 20]],
                     [0.9, 0.9], [0, 1], gt_difficult=[True, False])
    result = evaluator.result()
    person = result["per_class"]["person"]
    assert person["num_gt"] == 0 and person["tp"] == 0 and person["fp"] == 0
    assert math.isnan(person["AP"])
    assert result["mAP"] == pytest.approx(1.0)  # only "dog" counts


def test_eleven_points_hand_worked():
    # Four well-separated objects; ranked TP, FP, TP, FP, FP.
    # precision 1, 1/2, 2/3, 1/2, 2/5; recall 1/4, 1/4, 1/2, 1/2, 1/2.
    # 11 points: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3; t >= .6 -> 0: (3 + 2) / 11 = 5/11.
    # all points: 1/4 * 1 + 1/4 * 2/3 = 5/12.
    gt = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    dets = [[0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 10], [200, 0, 210, 10],
            [300, 0, 310, 10]]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    args = (gt, [0] * 4, dets, scores, [0] * 5)
    assert _single_image(*args, method="11_points")["mAP"] == pytest.approx(5 / 11, abs=1e-12)
    assert _single_image(*args)["mAP"] == pytest.approx(5 / 12, abs=1e-12)


def test_eleven_points_recall_exactly_on_a_threshold():
    # 10 objects, 3 found: recall 0.1, 0.2, 0.3 at precision 1. Thresholds 0, .1, .2, .3 are
    # reached -> 4/11 (the arange(0, 1.1, 0.1) variant would miss 0.3 and give 3/11).
    gt = [[20 * i, 0, 20 * i + 10, 10] for i in range(10)]
    result = _single_image(gt, [0] * 10, gt[:3], [0.9, 0.8, 0.7], [0] * 3, method="11_points")
    assert result["mAP"] == pytest.approx(4 / 11, abs=1e-12)


def test_threshold_is_inclusive_and_iou_is_continuous():
    # [0,0,10,5] covers exactly half of [0,0,10,10]: IoU = 50 / 100 = 0.5 -> TP at 0.5.
    # With the devkit's +1 pixels it would be 66/121 = 0.545; continuous is what we use.
    assert pairwise_iou([[0, 0, 10, 5]], [[0, 0, 10, 10]])[0, 0] == 0.5
    hit = _single_image([[0, 0, 10, 10]], [0], [[0, 0, 10, 5]], [0.5], [0])
    assert hit["per_class"]["0"]["tp"] == 1
    miss = _single_image([[0, 0, 10, 10]], [0], [[0, 0, 10, 4.9]], [0.5], [0])
    assert miss["per_class"]["0"]["fp"] == 1 and miss["mAP"] == 0.0
    strict = _single_image([[0, 0, 10, 10]], [0], [[0, 0, 10, 7]], [0.5], [0], iou_threshold=0.75)
    assert strict["per_class"]["0"]["fp"] == 1


def test_best_gt_already_matched_is_false_positive_even_if_another_overlaps():
    # A and B overlap. First detection takes A. The second overlaps A best (0.961) and B enough
    # (0.852), but its best gt is taken, so it is a FP (the devkit rule).
    gt = [[0, 0, 10, 10], [1, 0, 11, 10]]
    dets = [[0, 0, 10, 10], [0.2, 0, 10.2, 10]]
    entry = _single_image(gt, [0, 0], dets, [0.9, 0.8], [0, 0])["per_class"]["0"]
    assert (entry["tp"], entry["fp"]) == (1, 1)
    assert entry["AP"] == pytest.approx(0.5, abs=1e-12)


def test_other_classes_images_and_empty_cases():
    evaluator = VOCEvaluator(class_names=["a", "b", "c"])
    # class b: right box but in the wrong image -> FP; class c: no gt, only detections.
    evaluator.update("i1", [[0, 0, 10, 10]], [0], [[0, 0, 10, 10]], [0.9], [0])
    evaluator.update("i2", [[0, 0, 10, 10]], [1], np.zeros((0, 4)), [], [])
    evaluator.update("i3", np.zeros((0, 4)), [], [[0, 0, 10, 10], [5, 5, 9, 9]], [0.3, 0.2], [1, 2])
    result = evaluator.result()
    assert result["per_class"]["a"]["AP"] == 1.0
    assert result["per_class"]["b"]["AP"] == 0.0 and result["per_class"]["b"]["fp"] == 1
    assert math.isnan(result["per_class"]["c"]["AP"]) and result["per_class"]["c"]["fp"] == 1
    assert result["mAP"] == pytest.approx(0.5)  # mean of a and b; c has no ground truth
    assert math.isnan(VOCEvaluator().result()["mAP"])


def test_voc_ap_edges():
    assert voc_ap([], [], "all_points") == 0.0
    assert voc_ap([], [], "11_points") == 0.0
    assert voc_ap([1.0], [1.0]) == 1.0
    assert voc_ap([1.0], [1.0], "11_points") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="method"):
        voc_ap([1.0], [1.0], "13_points")
    with pytest.raises(ValueError, match="method"):
        VOCEvaluator(method="area")
    with pytest.raises(ValueError, match="iou_threshold"):
        VOCEvaluator(iou_threshold=0)


def test_equal_scores_keep_insertion_order():
    # Two detections with the same score on one object: the first added is the TP.
    entry = _single_image([[0, 0, 10, 10]], [0], [[0, 0, 10, 10], [0, 0, 10, 9]], [0.5, 0.5],
                          [0, 0])["per_class"]["0"]
    np.testing.assert_allclose(entry["precision"], [1.0, 0.5])


# ---------------------------------------------------------------------------------------------
# Randomised sets against a straightforward loop-based voc_eval (as in the VOC devkit)
# ---------------------------------------------------------------------------------------------

def _devkit_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            t = k / 10  # exact thresholds; see VOCEvaluator's module docstring
            p = max([p for r, p in zip(rec, prec) if r >= t], default=0.0)
            ap += p / 11.0
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
               if mrec[i + 1] != mrec[i])


def _devkit_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _devkit_voc_eval(images, cls, ovthresh, use_07_metric):
    """voc_eval for one class: returns (ap, tp list, fp list, npos), ignored detections as 0/0."""
    class_recs, npos = {}, 0
    for image in images:
        rows = [i for i, c in enumerate(image["gt_classes"]) if c == cls]
        difficult = [bool(image["gt_difficult"][i] or image["gt_iscrowd"][i]) for i in rows]
        class_recs[image["image_id"]] = {
            "bbox": [[float(v) for v in image["gt_boxes"][i]] for i in rows],
            "difficult": difficult,
            "det": [False] * len(rows),
        }
        npos += sum(not d for d in difficult)
    image_ids, confidence, boxes = [], [], []
    for image in images:
        for box, score, c in zip(image["det_boxes"], image["det_scores"], image["det_classes"]):
            if c == cls:
                image_ids.append(image["image_id"])
                confidence.append(float(score))
                boxes.append([float(v) for v in box])
    order = sorted(range(len(confidence)), key=lambda i: -confidence[i])  # stable
    tp, fp = [0] * len(order), [0] * len(order)
    for d, index in enumerate(order):
        record = class_recs[image_ids[index]]
        ovmax, jmax = -math.inf, -1
        for j, gt_box in enumerate(record["bbox"]):
            overlap = _devkit_iou(boxes[index], gt_box)
            if overlap > ovmax:
                ovmax, jmax = overlap, j
        if ovmax >= ovthresh:
            if not record["difficult"][jmax]:
                if not record["det"][jmax]:
                    tp[d] = 1
                    record["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    cum_tp, cum_fp, rec, prec, t_sum, f_sum = [], [], [], [], 0, 0
    for t, f in zip(tp, fp):
        t_sum, f_sum = t_sum + t, f_sum + f
        cum_tp.append(t_sum)
        cum_fp.append(f_sum)
        rec.append(t_sum / npos if npos else math.nan)
        prec.append(t_sum / max(t_sum + f_sum, np.finfo(np.float64).eps))
    ap = _devkit_ap(rec, prec, use_07_metric) if npos else math.nan
    return ap, tp, fp, npos, rec, prec


def _random_images(seed, num_images=30, num_classes=4):
    rng = np.random.default_rng(seed)
    images = []
    for index in range(num_images):
        num_gt = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, size=(num_gt, 2))
        wh = rng.uniform(5, 80, size=(num_gt, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_classes = rng.integers(0, num_classes - 1, size=num_gt)  # last class: detections only
        det_boxes, det_classes = [], []
        for box, cls in zip(gt_boxes, gt_classes):
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 0.15, size=4) * np.tile(box[2:] - box[:2], 2)
                x1, y1, x2, y2 = box + jitter
                det_boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
                det_classes.append(cls if rng.random() > 0.1 else rng.integers(0, num_classes))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 200, size=2)
            w, h = rng.uniform(5, 80, size=2)
            det_boxes.append([x, y, x + w, y + h])
            det_classes.append(rng.integers(0, num_classes))
        images.append({
            "image_id": f"im{index}",
            "gt_boxes": gt_boxes.astype(np.float32),
            "gt_classes": gt_classes.astype(np.int32),
            "gt_difficult": rng.random(num_gt) < 0.15,
            "gt_iscrowd": rng.random(num_gt) < 0.05,
            "det_boxes": np.asarray(det_boxes, np.float32).reshape(-1, 4),
            # one decimal: plenty of ties, which both sides break by insertion order
            "det_scores": np.round(rng.random(len(det_classes)), 1).astype(np.float32),
            "det_classes": np.asarray(det_classes, np.int32),
        })
    return images


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["all_points", "11_points"])
def test_random_sets_agree_with_loop_based_devkit(seed, method):
    num_classes = 4
    threshold = [0.5, 0.3, 0.7][seed % 3]
    images = _random_images(seed, num_classes=num_classes)
    evaluator = VOCEvaluator(iou_threshold=threshold, method=method,
                             class_names=[f"k{c}" for c in range(num_classes)])
    for image in images:
        evaluator.update(image["image_id"], image["gt_boxes"], image["gt_classes"],
                         image["det_boxes"], image["det_scores"], image["det_classes"],
                         gt_iscrowd=image["gt_iscrowd"], gt_difficult=image["gt_difficult"])
    result = evaluator.result()
    aps = []
    for c in range(num_classes):
        ap, tp, fp, npos, rec, prec = _devkit_voc_eval(images, c, threshold, method == "11_points")
        entry = result["per_class"][f"k{c}"]
        assert entry["num_gt"] == npos
        assert (entry["tp"], entry["fp"]) == (sum(tp), sum(fp))
        counted = [i for i in range(len(tp)) if tp[i] or fp[i]]  # the devkit keeps 0/0 rows
        np.testing.assert_allclose(entry["precision"], [prec[i] for i in counted], atol=1e-12)
        if npos:
            assert entry["AP"] == pytest.approx(ap, abs=1e-12)
            np.testing.assert_allclose(entry["recall"], [rec[i] for i in counted], atol=1e-12)
            aps.append(ap)
        else:
            assert math.isnan(entry["AP"])
    assert result["mAP"] == pytest.approx(sum(aps) / len(aps), abs=1e-12)
    assert math.isnan(result["per_class"][f"k{num_classes - 1}"]["AP"])
