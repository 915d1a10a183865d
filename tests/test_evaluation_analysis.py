"""ErrorAnalyzer: TIDE errors vs tidecv-light, confusion matrix and best F1 by hand, writers."""

import csv
import json

import numpy as np
import pytest

from retinanet.evaluation.analysis import ErrorAnalyzer
from retinanet.evaluation.analysis_report import plot_error_gallery, write_analysis
from retinanet.evaluation.confusion import best_f1
from retinanet.evaluation.tide import ERROR_TYPES, tide_ap

CAT, DOG = 0, 1
# tidecv's short names for our error types.
TIDE_NAMES = {"classification": "Cls", "localization": "Loc", "both": "Both",
              "duplicate": "Dupe", "background": "Bkg", "missed": "Miss"}


def _analyze(images, **kwargs):
    analyzer = ErrorAnalyzer(**kwargs)
    for image in images:
        analyzer.update(**image)
    return analyzer.result()


def _image(image_id, gt_boxes=(), gt_classes=(), det_boxes=(), det_scores=(), det_classes=(),
           **flags):
    return dict(image_id=image_id, gt_boxes=np.array(gt_boxes, np.float64).reshape(-1, 4),
                gt_classes=np.array(gt_classes, np.int64),
                det_boxes=np.array(det_boxes, np.float64).reshape(-1, 4),
                det_scores=np.array(det_scores, np.float64),
                det_classes=np.array(det_classes, np.int64), **flags)


def _one_error_of_each_type():
    """Six images; each holds one injected error (plus correct detections where needed)."""
    box = [0, 0, 100, 100]
    shifted = [50, 0, 150, 100]  # IoU 1/3 with `box`
    return [
        # A right-class box at IoU 1/3: localization.
        _image("loc", [box], [CAT], [shifted], [0.91], [CAT]),
        # A perfect box with the wrong class: classification.
        _image("cls", [box], [CAT], [box], [0.82], [DOG]),
        # Wrong class and IoU 1/3 (the cat itself is found): both.
        _image("both", [box], [CAT], [box, shifted], [0.95, 0.73], [CAT, DOG]),
        # A second, slightly smaller box on a found dog: duplicate.
        _image("dupe", [[200, 200, 300, 300]], [DOG],
               [[200, 200, 300, 300], [200, 200, 300, 290]], [0.97, 0.64], [DOG, DOG]),
        # A box far from every object (the dog is found): background.
        _image("bkg", [[0, 0, 50, 50]], [DOG], [[0, 0, 50, 50], [300, 300, 400, 400]],
               [0.99, 0.55], [DOG, CAT]),
        # An object without any detection: missed.
        _image("miss", [box], [CAT]),
    ]


def _tidecv_errors(images):
    """tidecv-light's AP, main and special errors (0-100) and error counts on the same images."""
    tidecv = pytest.importorskip("tidecv")
    gt, predictions = tidecv.Data("gt"), tidecv.Data("predictions")
    for image in images:
        # tidecv-light 1.0.2's IoU reads `bbox` as x1, y1, x2, y2 (its docstring says x, y, w, h,
        # but `TIDEExample._run.jaccard` takes corners), so boxes go in as xyxy.
        for box, cls in zip(image["gt_boxes"], image["gt_classes"]):
            gt.add_ground_truth(image["image_id"], int(cls), [float(v) for v in box])
        for box, score, cls in zip(image["det_boxes"], image["det_scores"],
                                   image["det_classes"]):
            predictions.add_detection(image["image_id"], int(cls), float(score),
                                      [float(v) for v in box])
    tide = tidecv.TIDE()
    run = tide.evaluate(gt, predictions, mode=tidecv.TIDE.BOX)
    errors = tide.get_all_errors()
    counts = {error_type.short_name: len(found) for error_type, found in run.error_dict.items()}
    return run.ap, errors["main"]["predictions"], errors["special"]["predictions"], counts


def _assert_matches_tidecv(images):
    result = _analyze(images)["tide"]
    ap, main, special, counts = _tidecv_errors(images)
    assert result["ap50"] == pytest.approx(ap / 100, abs=1e-6)
    for name in ERROR_TYPES:
        assert result["main"][name] == pytest.approx(main[TIDE_NAMES[name]] / 100, abs=1e-6), name
        assert result["counts"][name] == counts[TIDE_NAMES[name]], name
    assert result["special"]["false_positives"] == pytest.approx(special["FalsePos"] / 100,
                                                                 abs=1e-6)
    assert result["special"]["false_negatives"] == pytest.approx(special["FalseNeg"] / 100,
                                                                 abs=1e-6)
    return result


def _random_images(seed, num_images=30, num_classes=4):
    """Random gt; detections jitter them, swap classes, duplicate, miss, add background boxes."""
    rng = np.random.default_rng(seed)
    images = []
    for number in range(num_images):
        count = int(rng.integers(0, 6))
        corner = rng.uniform(0, 200, (count, 2))
        gt_boxes = np.concatenate([corner, corner + rng.uniform(10, 80, (count, 2))], axis=1)
        gt_classes = rng.integers(0, num_classes, count)
        det_boxes, det_classes = [], []
        for box, cls in zip(gt_boxes, gt_classes):
            if rng.uniform() < 0.15:
                continue  # missed
            moved = box + rng.normal(0, 0.15 * np.mean(box[2:] - box[:2]), 4)
            moved = np.concatenate([np.minimum(moved[:2], moved[2:]),
                                    np.maximum(moved[:2], moved[2:])])
            label = cls if rng.uniform() > 0.2 else rng.integers(0, num_classes)
            det_boxes.append(moved)
            det_classes.append(label)
            if rng.uniform() < 0.2:  # a duplicate
                det_boxes.append(moved + np.array([0, 0, 5, 5]))
                det_classes.append(label)
        for _ in range(int(rng.integers(0, 4))):  # background
            corner = rng.uniform(0, 250, 2)
            det_boxes.append(np.concatenate([corner, corner + rng.uniform(5, 60, 2)]))
            det_classes.append(rng.integers(0, num_classes))
        scores = rng.uniform(0.05, 1.0, len(det_classes))  # distinct with probability 1
        images.append(_image(number, gt_boxes, gt_classes, det_boxes, scores, det_classes))
    return images


# ---------------------------------------------------------------------------------------------
# TIDE
# ---------------------------------------------------------------------------------------------

def test_each_injected_error_lands_in_its_own_bin():
    result = _analyze(_one_error_of_each_type())
    assert result["tide"]["counts"] == {name: 1 for name in ERROR_TYPES}
    errors = {(entry["image_id"], entry["error"]) for entry in result["worst"]["false_positives"]}
    assert errors == {("loc", "localization"), ("cls", "classification"), ("both", "both"),
                      ("dupe", "duplicate"), ("bkg", "background")}
    assert [(entry["image_id"], entry["class"]) for entry in result["worst"]["missed"]] == \
        [("miss", CAT)]
    # Fixing the misses, the localization and the classification error each raise the cat's AP.
    for name in ("classification", "localization", "missed"):
        assert result["tide"]["main"][name] > 0.01, name


def test_hand_built_errors_agree_with_tidecv():
    _assert_matches_tidecv(_one_error_of_each_type())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_detections_agree_with_tidecv(seed):
    result = _assert_matches_tidecv(_random_images(seed))
    assert sum(result["counts"].values()) > 20  # the case exercises the errors


def test_tide_ap_by_hand():
    # 2 gts; TP 0.9, FP 0.8, TP 0.7: envelope 1 up to recall 0.5 (points 0..0.50, 51 of them)
    # and 2/3 after (points 0.51..1, 50 of them).
    assert tide_ap([0.8, 0.9, 0.7], [False, True, True], 2) == \
        pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert tide_ap([0.9], [True], 0) == 0.0
    assert tide_ap([], [], 3) == 0.0


def test_detection_in_a_crowd_region_is_not_a_false_positive():
    images = [_image("crowd", [[0, 0, 10, 10], [50, 50, 150, 150]], [CAT, CAT],
                     [[0, 0, 10, 10], [60, 60, 80, 80]], [0.9, 0.8], [CAT, CAT],
                     gt_iscrowd=[False, True])]
    result = _analyze(images)
    assert result["tide"]["ap50"] == pytest.approx(1.0)
    assert result["tide"]["num_ignored"] == 1
    assert result["worst"]["false_positives"] == []
    assert result["confusion"]["matrix"] == [[1, 0], [0, 0]]


# ---------------------------------------------------------------------------------------------
# Confusion matrix and best F1
# ---------------------------------------------------------------------------------------------

def test_confusion_matrix_by_hand():
    images = [
        # cat found; the dog boxed but called a cat.
        _image("a", [[0, 0, 10, 10], [20, 0, 30, 10]], [CAT, DOG],
               [[0, 0, 10, 10], [20, 0, 30, 10]], [0.9, 0.8], [CAT, CAT]),
        # dog found, a duplicate of it, a cat on nothing, a low-score cat (below 0.5: dropped).
        _image("b", [[0, 0, 10, 10]], [DOG],
               [[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 10, 10]],
               [0.95, 0.7, 0.6, 0.3], [DOG, DOG, CAT, CAT]),
        # Two cats missed; a cat detection inside a crowd of cats is not counted.
        _image("c", [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 80, 80]], [CAT, CAT, CAT],
               [[45, 45, 55, 55]], [0.9], [CAT], gt_iscrowd=[False, False, True]),
        # Overlapping cat and dog: the dog detection overlaps the cat more (IoU 1 vs 10/11) but
        # takes the dog, so the cat detection still finds the cat.
        _image("d", [[0, 0, 10, 10], [0, 0, 10, 11]], [CAT, DOG],
               [[0, 0, 10, 10], [0, 0, 10, 10.5]], [0.9, 0.8], [DOG, CAT]),
    ]
    confusion = _analyze(images, class_names=["cat", "dog"], score_threshold=0.5)["confusion"]
    assert confusion["labels"] == ["cat", "dog", "background"]
    assert confusion["score_thresholds"] == [0.5, 0.5]
    # rows: gt cat, dog, background; columns: predicted cat, dog, background
    assert confusion["matrix"] == [[2, 0, 2], [1, 2, 0], [1, 1, 0]]


def _ranked_class_case():
    # 4 cats; ranked detections TP .9, TP .8, FP .7, TP .6, FP .5, FP .4.
    # precision 1, 1, 2/3, 3/4, 3/5, 1/2; recall 1/4, 1/2, 1/2, 3/4, 3/4, 3/4;
    # F1 0.4, 2/3, 4/7, 3/4, 2/3, 0.6 -> best at threshold 0.6: P = R = F1 = 3/4.
    gts = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    dets = [[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110], [40, 0, 50, 10],
            [120, 100, 130, 110], [140, 100, 150, 110]]
    return _image("ranked", gts, [CAT] * 4, dets, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [CAT] * 6)


def test_best_f1_threshold_by_hand():
    result = _analyze([_ranked_class_case()], class_names=["cat", "dog"])
    assert result["per_class"]["cat"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "threshold": 0.6, "tp": 3, "fp": 1,
         "num_gt": 4})
    assert result["per_class"]["dog"] == {"precision": None, "recall": None, "f1": None,
                                          "threshold": None, "tp": None, "fp": None, "num_gt": 0}
    # The default confusion thresholds: the cat's best F1, the fallback for the dog.
    assert result["confusion"]["score_thresholds"] == [0.6, 0.5]
    assert result["confusion"]["matrix"] == [[3, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_best_f1_cuts_only_between_distinct_scores():
    # One gt; a TP and an FP with the same score can only be kept together.
    entry = best_f1([1.0, 0.5], [1.0, 1.0], [0.9, 0.9], num_gt=1)
    assert entry["threshold"] == 0.9
    assert entry["f1"] == pytest.approx(2 / 3)
    assert (entry["tp"], entry["fp"]) == (1, 1)
    no_hit = best_f1([0.0], [0.0], [0.9], num_gt=2)
    assert no_hit["threshold"] is None and no_hit["f1"] == 0.0


# ---------------------------------------------------------------------------------------------
# Writers and input checks
# ---------------------------------------------------------------------------------------------

def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_writers_make_csv_strict_json_markdown_and_png(tmp_path):
    images = _one_error_of_each_type() + [_ranked_class_case()]
    result = _analyze(images, class_names=["cat", "dog", "bird"])  # bird: no gt, NaN-prone
    json.dumps(result, allow_nan=False)  # the result itself holds no NaN
    paths = write_analysis(result, str(tmp_path / "out"), class_names=["Cat", "Dog", "Bird"])

    with open(paths["csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["gt \\ predicted", "Cat", "Dog", "Bird", "background"]
    assert [row[0] for row in rows[1:]] == ["Cat", "Dog", "Bird", "background"]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == result["confusion"]["matrix"]

    with open(paths["json"], encoding="utf-8") as handle:
        loaded = _strict_json(handle.read())
    assert loaded["per_class"]["bird"]["f1"] is None
    assert loaded["tide"]["counts"] == result["tide"]["counts"]

    with open(paths["markdown"], encoding="utf-8") as handle:
        markdown = handle.read()
    assert "| localization | 1 |" in markdown
    assert "| Cat | 8 | 0.6000 | 0.6667 | 0.5000 | 0.5714 | 4 | 2 |" in markdown
    assert "| Bird | 0 | n/a |" in markdown
    with open(paths["png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_error_gallery_draws_the_worst_errors(tmp_path):
    images = _one_error_of_each_type()
    result = _analyze(images, class_names=["cat", "dog"], max_worst=3)
    assert len(result["worst"]["false_positives"]) == 3  # the three highest-scoring
    assert [e["score"] for e in result["worst"]["false_positives"]] == [0.91, 0.82, 0.73]
    pictures = {image["image_id"]: np.full((320, 320, 3), 90, np.uint8) for image in images}
    path = plot_error_gallery(pictures, result["worst"], str(tmp_path / "gallery.png"),
                              class_names=["cat", "dog"])
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert plot_error_gallery({}, result["worst"], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("kwargs", [
    {"iou_threshold": 0.0},
    {"background_threshold": 0.7},
    {"max_worst": -1},
    {"score_threshold": [0.5, 0.5]},  # per-class thresholds without class names
    {"class_names": ["cat"], "score_threshold": [0.5, 0.5]},
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ErrorAnalyzer(**kwargs)
