"""COCOEvaluator against a direct pycocotools run built independently here, and by hand."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinanet.evaluation import COCOEvaluator

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ---------------------------------------------------------------------------------------------
# An independent reference: COCO json dicts written out by hand, then pycocotools as documented.
# ---------------------------------------------------------------------------------------------

def _reference_coco(images, category_of_class):
    """Runs pycocotools on `images` (list of per-image dicts, in update order).

    Returns (stats [12], {class: (AP, AP50)}) where the per-class values come from a separate
    COCOeval restricted to that category (params.catIds = [id]).
    """
    gt = {"info": {}, "licenses": [], "images": [], "annotations": [],
          "categories": [{"id": cid, "name": str(cid)} for cid in category_of_class.values()]}
    detections = []
    for number, image in enumerate(images, start=1):
        gt["images"].append({"id": number})
        for (x1, y1, x2, y2), cls, crowd in zip(image["gt_boxes"].tolist(), image["gt_classes"],
                                                image["gt_iscrowd"]):
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": number,
                "category_id": category_of_class[int(cls)], "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd),
            })
        for (x1, y1, x2, y2), score, cls in zip(image["det_boxes"].tolist(),
                                                image["det_scores"].tolist(), image["det_classes"]):
            detections.append({"image_id": number, "category_id": category_of_class[int(cls)],
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        run = COCOeval(coco_gt, coco_dt, "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
        per_class = {}
        for cls, cid in category_of_class.items():
            single = COCOeval(coco_gt, coco_dt, "bbox")
            single.params.catIds = [cid]
            single.evaluate()
            single.accumulate()
            single.summarize()
            per_class[cls] = (single.stats[0], single.stats[1])
    return run.stats, per_class


def _random_box(rng, size_kind, width=640, height=480):
    side = {"small": (2, 30), "medium": (33, 94), "large": (98, 300)}[size_kind]
    w, h = rng.uniform(*side, size=2)
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return [x1, y1, x1 + w, y1 + h]


def _random_images(seed, num_images=40, num_classes=5, crowd_rate=0.1):
    """Ground truth of classes [0, num_classes - 1) plus detections, as float32 like a model's.

    The last class never has a ground truth (detections only) and class 0 never gets a
    detection; about a fifth of the images are empty; one image has > 100 detections.
    """
    rng = np.random.default_rng(seed)
    images = []
    for index in range(num_images):
        empty = rng.random() < 0.2
        num_gt = 0 if empty else int(rng.integers(1, 9))
        kinds = rng.choice(["small", "medium", "large"], size=num_gt)
        gt_boxes = [_random_box(rng, kind) for kind in kinds]
        gt_classes = rng.integers(0, num_classes - 1, size=num_gt)
        gt_iscrowd = rng.random(num_gt) < crowd_rate
        det_boxes, det_classes = [], []
        if rng.random() > 0.15:
            for box, cls in zip(gt_boxes, gt_classes):
                for _ in range(int(rng.integers(0, 3))):  # misses, hits and duplicates
                    w, h = box[2] - box[0], box[3] - box[1]
                    jitter = rng.normal(0, 0.12, size=4) * [w, h, w, h]
                    x1, y1, x2, y2 = np.asarray(box) + jitter
                    det_boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
                    det_classes.append(cls if rng.random() > 0.1 else rng.integers(0, num_classes))
            for _ in range(int(rng.integers(0, 6))):  # background false positives
                det_boxes.append(_random_box(rng, rng.choice(["small", "medium", "large"])))
                det_classes.append(rng.integers(0, num_classes))
        if index == 3:  # crowded: more than maxDets=100 of one class
            for _ in range(120):
                det_boxes.append(_random_box(rng, "medium"))
                det_classes.append(1)
        det_classes = np.asarray(det_classes, np.int64).reshape(-1)
        det_classes[det_classes == 0] = 1  # class 0: ground truth but never detected
        images.append({
            "image_id": f"frame-{seed}-{index:03d}",
            "gt_boxes": np.asarray(gt_boxes, np.float32).reshape(-1, 4),
            "gt_classes": np.asarray(gt_classes, np.int32),
            "gt_iscrowd": gt_iscrowd,
            "det_boxes": np.asarray(det_boxes, np.float32).reshape(-1, 4),
            "det_scores": rng.random(len(det_classes)).astype(np.float32),
            "det_classes": det_classes.astype(np.int32),
        })
    return images


def _feed(evaluator, images):
    for image in images:
        evaluator.update(image["image_id"], image["gt_boxes"], image["gt_classes"],
                         image["det_boxes"], image["det_scores"], image["det_classes"],
                         gt_iscrowd=image["gt_iscrowd"])
    return evaluator.result()


@pytest.mark.parametrize("seed, num_images", [(0, 40), (1, 40), (2, 250)])
def test_random_sets_equal_direct_pycocotools(seed, num_images):
    num_classes = 5
    images = _random_images(seed, num_images=num_images, num_classes=num_classes)
    # The sets really contain what they are meant to exercise.
    all_gt = np.concatenate([i["gt_classes"] for i in images])
    all_det = np.concatenate([i["det_classes"] for i in images])
    assert 0 in all_gt and 0 not in all_det and (num_classes - 1) not in all_gt
    assert any(i["gt_iscrowd"].any() for i in images)
    assert any(len(i["gt_classes"]) == 0 for i in images)
    assert any(len(i["det_classes"]) == 0 and len(i["gt_classes"]) > 0 for i in images)

    names = [f"c{c}" for c in range(num_classes)]
    result = _feed(COCOEvaluator(class_names=names), images)
    stats, per_class = _reference_coco(images, {c: c + 1 for c in range(num_classes)})
    for name, expected in zip(METRICS, stats):
        assert result[name] == pytest.approx(expected, abs=1e-9), name
    for c in range(num_classes):
        assert result["per_class"][f"c{c}"]["AP"] == pytest.approx(per_class[c][0], abs=1e-9)
        assert result["per_class"][f"c{c}"]["AP50"] == pytest.approx(per_class[c][1], abs=1e-9)
    # a class with ground truth but no detections scores 0; one without ground truth, -1
    assert result["per_class"]["c0"]["AP"] == 0.0
    assert result["per_class"][f"c{num_classes - 1}"]["AP"] == -1.0
    assert 0 < result["AP"] < 1 and result["AR1"] < result["AR10"]


def test_dataset_category_ids_and_unnamed_classes():
    images = _random_images(7, num_images=25, num_classes=4)
    category_ids = [17, 3, 90, 5]  # not sorted, with gaps: like the real COCO ids
    result = _feed(COCOEvaluator(category_ids=category_ids), images)
    stats, per_class = _reference_coco(images, dict(enumerate(category_ids)))
    for name, expected in zip(METRICS, stats):
        assert result[name] == pytest.approx(expected, abs=1e-9), name
    assert set(result["per_class"]) == {"0", "1", "2", "3"}
    for c in range(4):
        assert result["per_class"][str(c)]["AP"] == pytest.approx(per_class[c][0], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------

def test_one_hit_one_miss_hand_worked():
    # Two medium objects, one found exactly, one false positive elsewhere. At every IoU threshold
    # precision is 1 up to recall 0.5 (51 of the 101 recall points) and 0 after, so AP = 51/101;
    # recall tops out at 0.5. pycocotools' precision tp / (tp + fp + eps) is 1 - 2.2e-16.
    evaluator = COCOEvaluator()
    evaluator.update("a", [[0, 0, 50, 50], [100, 100, 150, 150]], [0, 0],
                     [[0, 0, 50, 50], [300, 300, 350, 350]], [0.9, 0.8], [0, 0])
    result = evaluator.result()
    for name in ("AP", "AP50", "AP75", "APm"):
        assert result[name] == pytest.approx(51 / 101, abs=1e-9), name
    for name in ("AR1", "AR10", "AR100", "ARm"):
        assert result[name] == pytest.approx(0.5, abs=1e-12), name
    for name in ("APs", "APl", "ARs", "ARl"):  # no small or large object: pycocotools gives -1
        assert result[name] == -1.0, name


def test_max_detections_hand_worked():
    # Three large objects found exactly, scores 0.9 / 0.8 / 0.7: one detection per image recalls
    # one object in three, ten recall all.
    boxes = [[0, 0, 100, 100], [200, 0, 300, 100], [0, 200, 100, 300]]
    evaluator = COCOEvaluator()
    evaluator.update(7, boxes, [0, 0, 0], boxes, [0.9, 0.8, 0.7], [0, 0, 0])
    result = evaluator.result()
    assert result["AR1"] == pytest.approx(1 / 3, abs=1e-12)
    assert result["AR10"] == pytest.approx(1.0, abs=1e-12)
    assert result["AP"] == pytest.approx(1.0, abs=1e-9)
    assert result["per_class"]["0"]["num_gt"] == 3
    assert result["per_class"]["0"]["num_detections"] == 3


def test_no_detections_at_all():
    # pycocotools' loadRes([]) raises; every metric with ground truth is 0, the rest -1.
    evaluator = COCOEvaluator(class_names=["cat", "dog", "bird"])
    evaluator.update("small-cat", [[0, 0, 10, 10]], [0], np.zeros((0, 4)), [], [])
    evaluator.update("large-dog", [[0, 0, 200, 200]], [1], np.zeros((0, 4)), [], [])
    evaluator.update("nothing", np.zeros((0, 4)), [], np.zeros((0, 4)), [], [])
    result = evaluator.result()
    for name in ("AP", "AP50", "AP75", "APs", "APl", "AR1", "AR10", "AR100", "ARs", "ARl"):
        assert result[name] == 0.0, name
    assert result["APm"] == -1.0 and result["ARm"] == -1.0
    assert result["per_class"]["cat"]["AP"] == 0.0 and result["per_class"]["cat"]["APl"] == -1.0
    assert result["per_class"]["dog"]["APs"] == -1.0
    assert result["per_class"]["bird"]["AP"] == -1.0


def test_no_images_and_only_crowds_give_minus_one():
    assert all(COCOEvaluator().result()[name] == -1.0 for name in METRICS)
    evaluator = COCOEvaluator()
    # A crowd region is ignored: detections inside it are neither right nor wrong.
    evaluator.update("crowd", [[0, 0, 100, 100]], [0], [[10, 10, 40, 40]], [0.5], [0],
                     gt_iscrowd=[True])
    result = evaluator.result()
    assert all(result[name] == -1.0 for name in METRICS)
    assert result["per_class"]["0"]["num_gt"] == 0


def test_crowd_absorbs_detections_hand_worked():
    # One real object (found, score 0.6) and a crowd region with a higher-scoring detection
    # inside it. Without the crowd flag that detection would be a false positive ranked first
    # (AP50 = 1/2 precision at recall 1 -> 0.5); with it, it is ignored and AP50 = 1.
    gt = [[0, 0, 40, 40], [100, 100, 300, 300]]
    dets = [[0, 0, 40, 40], [120, 120, 160, 160]]
    crowd = COCOEvaluator()
    crowd.update("x", gt, [0, 0], dets, [0.6, 0.9], [0, 0], gt_iscrowd=[False, True])
    plain = COCOEvaluator()
    plain.update("x", gt[:1], [0], dets, [0.6, 0.9], [0, 0])
    assert crowd.result()["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert plain.result()["AP50"] == pytest.approx(0.5, abs=1e-9)


def test_gt_difficult_is_ignored_and_ids_of_any_kind():
    boxes = [[0, 0, 50, 50]]
    with_flag, without = COCOEvaluator(), COCOEvaluator()
    with_flag.update(b"bytes-id", boxes, [0], boxes, [0.5], [0], gt_difficult=[True])
    without.update(np.int64(12), boxes, [0], boxes, [0.5], [0])
    assert with_flag.result()["AP"] == without.result()["AP"] == pytest.approx(1.0, abs=1e-9)


def test_reset_and_repeated_result():
    evaluator = COCOEvaluator()
    evaluator.update("a", [[0, 0, 50, 50]], [0], [[0, 0, 50, 50]], [0.5], [0])
    first = evaluator.result()
    assert evaluator.result()["AP"] == first["AP"]
    evaluator.reset()
    assert evaluator.num_images == 0
    evaluator.update("a", [[0, 0, 50, 50]], [0], np.zeros((0, 4)), [], [])  # same id is fine now
    assert evaluator.result()["AP"] == 0.0


def test_tensors_are_accepted():
    tf = pytest.importorskip("tensorflow")
    evaluator = COCOEvaluator()
    boxes = tf.constant([[0.0, 0.0, 50.0, 50.0]])
    evaluator.update(tf.constant("t"), boxes, tf.constant([0]), boxes, tf.constant([0.5]),
                     tf.constant([0]))
    assert evaluator.result()["AP"] == pytest.approx(1.0, abs=1e-9)
