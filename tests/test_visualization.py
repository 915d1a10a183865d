"""retinanet.visualization: boxes drawn where they belong, in the right colours."""

import numpy as np
import pytest

from retinanet import visualization


def test_draw_boxes_outlines_the_box_in_its_colour():
    image = np.zeros((40, 60, 3), np.uint8)
    drawn = visualization.draw_boxes(image, [[10, 5, 30, 25]], colors=(255, 0, 0), line_width=1)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert tuple(drawn[5, 20]) == (255, 0, 0)  # top edge
    assert tuple(drawn[15, 10]) == (255, 0, 0)  # left edge
    assert tuple(drawn[24, 20]) == (255, 0, 0)  # bottom edge: last pixel row inside x2/y2
    assert tuple(drawn[15, 20]) == (0, 0, 0)  # inside stays
    assert not image.any()  # the input is not modified


def test_draw_detections_skips_padding_and_low_scores():
    image = np.zeros((50, 50, 3), np.uint8)
    boxes = np.array([[5, 5, 20, 20], [25, 25, 45, 45], [0, 0, 0, 0]], np.float32)
    drawn = visualization.draw_detections(image, boxes, [0, 1, -1], [0.9, 0.1, 0.0],
                                          ["a", "b"], score_threshold=0.5)
    assert drawn[5:20, 5].any()  # the confident one
    assert not drawn[30:44, 25].any()  # below the threshold: not drawn


def test_detection_labels_give_name_and_score_or_the_class_id():
    assert visualization.detection_labels([1, 0], [0.5, 0.25], ["cat", "dog"]) == \
        ["dog 0.50", "cat 0.25"]
    assert visualization.detection_labels([3]) == ["3"]


def test_anchor_matches_are_green_and_red():
    image = np.zeros((32, 32, 3), np.uint8)
    drawn = visualization.draw_anchor_matches(image, [[2, 2, 12, 12], [16, 16, 30, 30]],
                                              [True, False])
    assert tuple(drawn[2, 6]) == visualization.GREEN
    assert tuple(drawn[16, 20]) == visualization.RED


def test_plot_gallery_writes_a_png(tmp_path):
    from PIL import Image

    images = [np.full((64, 64, 3), 90, np.uint8), np.full((64, 80, 3), 30, np.uint8)]
    detections = [{"boxes": np.array([[4, 4, 30, 30]]), "classes": np.array([0]),
                   "scores": np.array([0.8])},
                  {"boxes": np.zeros((0, 4)), "classes": np.zeros(0, int),
                   "scores": np.zeros(0)}]
    truth = [{"boxes": np.array([[5, 5, 31, 31]]), "classes": np.array([0])},
             {"boxes": np.full((1, 4), -1.0), "classes": np.array([-1])}]
    path = visualization.plot_gallery(images, detections, str(tmp_path / "g.png"),
                                      class_names=["square"], ground_truth=truth)
    assert Image.open(path).size[0] > 300
    with pytest.raises(ValueError, match="2 images but 1"):
        visualization.plot_gallery(images, detections[:1], str(tmp_path / "x.png"))


def test_bad_image_shape_is_named():
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        visualization.draw_boxes(np.zeros((4, 4)), [[0, 0, 1, 1]])
