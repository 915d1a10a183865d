"""Bad input to `update` raises a ValueError that names the image."""

import numpy as np
import pytest

from retinanet.evaluation import COCOEvaluator, VOCEvaluator

GOOD = dict(
    gt_boxes=[[0, 0, 10, 10], [5, 5, 20, 20]],
    gt_classes=[0, 1],
    det_boxes=[[0, 0, 10, 10]],
    det_scores=[0.5],
    det_classes=[0],
)

BAD = {
    "gt_classes shorter": dict(gt_classes=[0]),
    "det_scores longer": dict(det_scores=[0.5, 0.4]),
    "det_classes shorter": dict(det_classes=np.zeros((0,), np.int32)),
    "gt_iscrowd wrong length": dict(gt_iscrowd=[True]),
    "gt_difficult wrong length": dict(gt_difficult=[True, False, False]),
    "NaN score": dict(det_scores=[float("nan")]),
    "infinite score": dict(det_scores=[np.inf]),
    "gt x2 < x1": dict(gt_boxes=[[10, 0, 5, 10], [5, 5, 20, 20]]),
    "det y2 < y1": dict(det_boxes=[[0, 10, 10, 5]]),
    "NaN coordinate": dict(det_boxes=[[0, 0, np.nan, 10]]),
    "boxes with 5 columns": dict(det_boxes=[[0, 0, 10, 10, 1]]),
    "boxes 1-D": dict(gt_boxes=[0, 0, 10, 10]),
    "boxes 3-D": dict(det_boxes=[[[0, 0, 10, 10]]]),
    "scores 2-D": dict(det_scores=[[0.5]]),
    "negative class (padding)": dict(gt_classes=[0, -1]),
    "fractional class": dict(det_classes=[0.5]),
    "class out of range": dict(det_classes=[7]),
    "crowd flag not boolean": dict(gt_iscrowd=[2, 0]),
}


@pytest.mark.parametrize("evaluator_class", [COCOEvaluator, VOCEvaluator])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_image(evaluator_class, case):
    evaluator = evaluator_class(class_names=["a", "b", "c"])
    arguments = {**GOOD, **BAD[case]}
    with pytest.raises(ValueError, match="street-0042"):
        evaluator.update("street-0042", **arguments)
    assert evaluator.num_images == 0  # nothing half-added


def test_messages_say_what_is_wrong():
    evaluator = VOCEvaluator()
    with pytest.raises(ValueError, match=r"det_scores has 2 entries but det_boxes has 1"):
        evaluator.update(3, **{**GOOD, "det_scores": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"gt_boxes\[0\].*x2 < x1"):
        evaluator.update(3, **{**GOOD, "gt_boxes": [[10, 0, 5, 10], [5, 5, 20, 20]]})
    with pytest.raises(ValueError, match="NaN"):
        evaluator.update(3, **{**GOOD, "det_scores": [np.nan]})


def test_repeated_image_id_is_refused():
    evaluator = COCOEvaluator()
    evaluator.update("a", **GOOD)
    with pytest.raises(ValueError, match="'a' was already added"):
        evaluator.update(b"a", **GOOD)


def test_empty_inputs_in_any_empty_shape_and_degenerate_boxes_are_fine():
    evaluator = VOCEvaluator()
    evaluator.update("e", [], [], np.zeros((0, 4)), np.zeros((0,)), [])
    evaluator.update("z", [[5, 5, 5, 9]], [0], [[5, 5, 5, 9]], [0.5], [0])  # zero width allowed
    assert evaluator.num_images == 2


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="class_names"):
        COCOEvaluator(class_names=["a", "a"])
    with pytest.raises(ValueError, match="category_ids"):
        COCOEvaluator(category_ids=[1, 1])
    with pytest.raises(ValueError, match="2 names but 3 classes"):
        COCOEvaluator(class_names=["a", "b"], category_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="image_id"):
        COCOEvaluator().update(1.5, **GOOD)
