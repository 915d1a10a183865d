"""Tests for retinanet.ops: formats, IoU, the box coder and NMS.

Expected values are worked out by hand in the comments, or come from small numpy reference
implementations written here from the definitions, never from running retinanet.ops.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from keras.utils import bounding_boxes as keras_bounding_boxes

from retinanet import ops

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)
EPS32 = float(np.finfo(np.float32).eps)


# ----------------------------------------------------------------------------- references


def reference_iou(boxes1, boxes2):
    """IoU from the definition, float64, zero-area pairs give 0."""
    boxes1 = np.asarray(boxes1, np.float64)
    boxes2 = np.asarray(boxes2, np.float64)
    out = np.zeros((len(boxes1), len(boxes2)))
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = inter_w * inter_h
            area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
            area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
            union = area_a + area_b - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def reference_nms(boxes, scores, iou_threshold, score_threshold=None):
    """Textbook greedy NMS; equal scores are taken in index order."""
    scores = np.asarray(scores, np.float32)
    iou = reference_iou(boxes, boxes)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if score_threshold is not None and not scores[i] > score_threshold:
            continue
        if all(iou[k, i] <= iou_threshold for k in kept):
            kept.append(i)
    return kept


def reference_batched_nms(boxes, scores, classes, iou_threshold):
    """NMS per class, then all kept boxes by (score desc, index)."""
    scores = np.asarray(scores, np.float32)
    classes = np.asarray(classes)
    kept = []
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        kept += [members[k] for k in reference_nms(boxes[members], scores[members], iou_threshold)]
    return sorted(kept, key=lambda i: (-scores[i], i))


def reference_soft_nms(boxes, scores, sigma, score_threshold):
    """Gaussian soft-NMS as in Bodla et al. (2017), Algorithm 1: s_i *= exp(-iou^2 / sigma)."""
    scores = np.asarray(scores, np.float64).copy()
    iou = reference_iou(boxes, boxes)
    remaining = list(range(len(scores)))
    kept, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        if not scores[best] > score_threshold:
            break
        kept.append(best)
        kept_scores.append(scores[best])
        remaining.remove(best)
        for i in remaining:
            scores[i] *= math.exp(-iou[best, i] ** 2 / sigma)
    return kept, np.array(kept_scores)


def random_boxes(rng, n, low=0.0, high=100.0, min_size=1.0, max_size=50.0):
    """Valid xyxy boxes, float32, sizes in [min_size, max_size]."""
    xy = rng.uniform(low, high, size=(n, 2))
    wh = rng.uniform(min_size, max_size, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# Integer-valued boxes keep every IoU exact in float32, so the NMS invariants below can be
# checked without tolerance games at the threshold.
integer_box = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.integers(0, 20), st.integers(0, 20)
).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@st.composite
def nms_inputs(draw, max_boxes=12):
    n = draw(st.integers(0, max_boxes))
    boxes = np.array(draw(st.lists(integer_box, min_size=n, max_size=n)), np.float32).reshape(n, 4)
    # A few distinct values on purpose: ties in score must be handled too. No subnormals:
    # TF's CPU kernels flush them to zero, so 1e-45 ties with 0 there.
    score = st.one_of(
        st.sampled_from([0.2, 0.5, 0.9]), st.floats(0.0, 1.0, width=32, allow_subnormal=False)
    )
    scores = np.array(draw(st.lists(score, min_size=n, max_size=n)), np.float32)
    return boxes, scores


positive_box = st.tuples(
    st.floats(-100, 100), st.floats(-100, 100), st.floats(0.5, 100), st.floats(0.5, 100)
).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))
any_box = st.one_of(
    positive_box,
    st.just((-1.0, -1.0, -1.0, -1.0)),
    st.tuples(*[st.floats(-100, 100)] * 4),  # possibly inverted or zero-area
)


# ----------------------------------------------------------------------------- box_iou


def test_box_iou_hand_values():
    box = [[0, 0, 2, 2]]  # area 4
    others = [
        [1, 1, 3, 3],  # intersection [1,1,2,2] = 1, union 4 + 4 - 1 = 7
        [0, 0, 1, 1],  # inside: 1 / 4
        [2, 0, 4, 2],  # shares an edge only: 0
        [5, 5, 6, 6],  # disjoint: 0
        [0, 0, 2, 2],  # identical: 1
        [-1, -1, 3, 3],  # contains it: 4 / 16
        [1, 0, 3, 1],  # intersection [1,0,2,1] = 1, union 4 + 2 - 1 = 5
    ]
    iou = ops.box_iou(box, others)
    assert iou.dtype == tf.float32
    assert iou.shape == (1, 7)
    np.testing.assert_allclose(iou[0], [1 / 7, 1 / 4, 0, 0, 1, 1 / 4, 1 / 5], rtol=1e-6)


def test_box_iou_off_image_boxes_are_ordinary_boxes():
    # [-10,-10,-5,-5] and [-8,-8,-3,-3]: intersection 3 x 3 = 9, union 25 + 25 - 9 = 41.
    iou = ops.box_iou([[-10, -10, -5, -5]], [[-8, -8, -3, -3]])
    np.testing.assert_allclose(iou, [[9 / 41]], rtol=1e-6)


def test_box_iou_batched_and_mixed_rank():
    boxes1 = np.array([[[0, 0, 2, 2]], [[0, 0, 4, 4]]], np.float32)  # [2, 1, 4]
    boxes2 = np.array([[[1, 1, 3, 3], [0, 0, 2, 2]], [[0, 0, 2, 2], [2, 2, 4, 4]]], np.float32)
    iou = ops.box_iou(boxes1, boxes2)
    assert iou.shape == (2, 1, 2)
    # Image 1: [0,0,4,4] (area 16) against two 2x2 boxes inside it: 4 / 16 each.
    np.testing.assert_allclose(iou, [[[1 / 7, 1]], [[1 / 4, 1 / 4]]], rtol=1e-6)

    # Unbatched anchors [A, 4] against batched boxes [B, M, 4] give [B, A, M].
    anchors = np.array([[0, 0, 2, 2], [0, 0, 4, 4], [10, 10, 11, 11]], np.float32)
    iou = ops.box_iou(anchors, boxes2)
    assert iou.shape == (2, 3, 2)
    for b in range(2):
        np.testing.assert_allclose(iou[b], reference_iou(anchors, boxes2[b]), rtol=1e-6)


@pytest.mark.parametrize(
    "shape1, shape2, expected",
    [((0, 4), (3, 4), (0, 3)), ((3, 4), (0, 4), (3, 0)), ((2, 0, 4), (2, 5, 4), (2, 0, 5))],
)
def test_box_iou_no_boxes(shape1, shape2, expected):
    iou = ops.box_iou(np.zeros(shape1, np.float32), np.zeros(shape2, np.float32))
    assert iou.shape == expected
    assert iou.dtype == tf.float32


def test_box_iou_padding_and_zero_area_give_zero_not_nan():
    padding = -np.ones((3, 4), np.float32)
    real = np.array([[0, 0, 10, 10], [-5, -5, 5, 5]], np.float32)
    for a, b in [(padding, padding), (padding, real), (real, padding)]:
        iou = ops.box_iou(a, b).numpy()
        assert np.all(iou == 0), iou
    # A point, a line, and an inverted box: 0 against themselves and against a real box.
    degenerate = np.array([[5, 5, 5, 5], [0, 5, 10, 5], [10, 10, 0, 0]], np.float32)
    iou = ops.box_iou(degenerate, np.concatenate([degenerate, real])).numpy()
    assert np.all(iou == 0), iou


def test_box_iou_float16_inputs_give_float32():
    iou = ops.box_iou(np.array([[0, 0, 2, 2]], np.float16), np.array([[1, 1, 3, 3]], np.float16))
    assert iou.dtype == tf.float32
    np.testing.assert_allclose(iou, [[1 / 7]], rtol=1e-6)


def test_box_iou_agrees_with_keras_compute_iou():
    rng = np.random.default_rng(0)
    boxes1, boxes2 = random_boxes(rng, 20), random_boxes(rng, 30)
    ours = ops.box_iou(boxes1, boxes2)
    # Keras adds 1e-7 to the union, which is negligible for boxes of area >= 1.
    theirs = keras_bounding_boxes.compute_iou(boxes1, boxes2, bounding_box_format="xyxy")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(ours, reference_iou(boxes1, boxes2), atol=1e-6)

    batched1 = np.stack([random_boxes(rng, 7) for _ in range(3)])
    batched2 = np.stack([random_boxes(rng, 5) for _ in range(3)])
    theirs = keras_bounding_boxes.compute_iou(batched1, batched2, bounding_box_format="xyxy")
    np.testing.assert_allclose(ops.box_iou(batched1, batched2), theirs, atol=1e-5)


@PROPERTY_SETTINGS
@given(st.lists(any_box, max_size=8), st.lists(any_box, max_size=8))
def test_box_iou_symmetric_and_in_unit_range(boxes1, boxes2):
    boxes1 = np.array(boxes1, np.float32).reshape(-1, 4)
    boxes2 = np.array(boxes2, np.float32).reshape(-1, 4)
    forward = ops.box_iou(boxes1, boxes2).numpy()
    backward = ops.box_iou(boxes2, boxes1).numpy()
    np.testing.assert_array_equal(forward, backward.T)
    assert np.all(np.isfinite(forward))
    assert np.all((forward >= 0) & (forward <= 1))


@PROPERTY_SETTINGS
@given(st.lists(positive_box, min_size=1, max_size=8))
def test_box_iou_of_a_positive_box_with_itself_is_one(boxes):
    boxes = np.array(boxes, np.float32)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]  # float32 rounding
    np.testing.assert_allclose(np.diag(ops.box_iou(boxes, boxes).numpy()), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- convert_format

# One box written out by hand in every format: xyxy [10, 20, 50, 80] (w 40, h 60, centre
# (30, 50)) in an image of height 100 and width 200 (x / 200, y / 100 for the rel_ forms).
HEIGHT, WIDTH = 100, 200
SAME_BOX = {
    "xyxy": [10, 20, 50, 80],
    "yxyx": [20, 10, 80, 50],
    "xywh": [10, 20, 40, 60],
    "center_xywh": [30, 50, 40, 60],
    "center_yxhw": [50, 30, 60, 40],
    "rel_xyxy": [0.05, 0.2, 0.25, 0.8],
    "rel_yxyx": [0.2, 0.05, 0.8, 0.25],
    "rel_xywh": [0.05, 0.2, 0.2, 0.6],
    "rel_center_xywh": [0.15, 0.5, 0.2, 0.6],
}


def test_formats_cover_keras_names():
    assert set(SAME_BOX) == set(ops.BOX_FORMATS)


def test_convert_format_every_pair_by_hand():
    for source, box in SAME_BOX.items():
        for target, expected in SAME_BOX.items():
            out = ops.convert_format([box], source, target, height=HEIGHT, width=WIDTH)
            np.testing.assert_allclose(out, [expected], rtol=1e-6, err_msg=f"{source}->{target}")


def test_convert_format_yolo_line_to_pixels():
    # YOLO label "0 0.5 0.25 0.2 0.1" in a 640 x 480 image: centre (320, 120), size 128 x 48,
    # so x 256..384, y 96..144.
    line = "0 0.5 0.25 0.2 0.1"
    label, *box = line.split()
    box = np.array([float(v) for v in box], np.float32)
    pixels = ops.convert_format(box[None], "rel_center_xywh", "xyxy", height=480, width=640)
    np.testing.assert_allclose(pixels, [[256, 96, 384, 144]], rtol=1e-6)
    back = ops.convert_format(pixels, "xyxy", "rel_center_xywh", height=480, width=640)
    np.testing.assert_allclose(back, box[None], rtol=1e-6)


def test_convert_format_round_trip_through_xyxy_random():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 50, high=400)  # inside a 500 x 640 image
    for fmt in ops.BOX_FORMATS:
        there = ops.convert_format(boxes, "xyxy", fmt, height=500, width=640)
        back = ops.convert_format(there, fmt, "xyxy", height=500, width=640)
        np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-4, err_msg=fmt)


def test_convert_format_agrees_with_keras():
    rng = np.random.default_rng(2)
    boxes = np.stack([random_boxes(rng, 6, high=300) for _ in range(2)])  # [2, 6, 4]
    for source in ops.BOX_FORMATS:
        for target in ops.BOX_FORMATS:
            ours = ops.convert_format(boxes, source, target, height=320, width=480)
            theirs = keras_bounding_boxes.convert_format(
                boxes, source=source, target=target, height=320, width=480
            )
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, err_msg=f"{source}->{target}")


def test_convert_format_relative_to_relative_needs_no_image_size():
    out = ops.convert_format([SAME_BOX["rel_xyxy"]], "rel_xyxy", "rel_center_xywh")
    np.testing.assert_allclose(out, [SAME_BOX["rel_center_xywh"]], rtol=1e-6)


def test_convert_format_dtypes_and_case():
    ints = ops.convert_format(np.array([[10, 20, 50, 80]], np.int32), "XYXY", "xywh")
    assert ints.dtype == tf.float32
    np.testing.assert_array_equal(ints, [SAME_BOX["xywh"]])
    doubles = ops.convert_format(np.array([SAME_BOX["xyxy"]], np.float64), "xyxy", "center_xywh")
    assert doubles.dtype == tf.float64
    halves = ops.convert_format(np.array([SAME_BOX["xyxy"]], np.float16), "xyxy", "yxyx")
    assert halves.dtype == tf.float16


def test_convert_format_per_image_sizes_and_empty():
    # Two images, 100x200 and 50x100 (height x width): the same relative box doubles in pixels.
    rel = np.array([[[0.1, 0.2, 0.5, 0.6]], [[0.1, 0.2, 0.5, 0.6]]], np.float32)
    heights = np.array([100, 50], np.float32).reshape(2, 1, 1)
    widths = np.array([200, 100], np.float32).reshape(2, 1, 1)
    out = ops.convert_format(rel, "rel_xyxy", "xyxy", height=heights, width=widths)
    np.testing.assert_allclose(out, [[[20, 20, 100, 60]], [[10, 10, 50, 30]]], rtol=1e-6)

    empty = ops.convert_format(np.zeros((2, 0, 4)), "xyxy", "rel_center_xywh", height=5, width=5)
    assert empty.shape == (2, 0, 4)


# ----------------------------------------------------------------------------- box coder


def test_encode_hand_value_and_decode_back():
    # Anchor [0,0,10,10]: centre (5, 5), size 10 x 10. Box [2,4,12,24]: centre (7, 14), 10 x 20.
    # t_x = (7 - 5) / 10 = 0.2, t_y = (14 - 5) / 10 = 0.9, t_w = log 1 = 0, t_h = log 2.
    anchor, box = [[0, 0, 10, 10]], [[2, 4, 12, 24]]
    deltas = ops.encode_boxes(box, anchor)
    np.testing.assert_allclose(deltas, [[0.2, 0.9, 0, math.log(2)]], rtol=1e-6)
    weighted = ops.encode_boxes(box, anchor, weights=(10, 10, 5, 5))
    np.testing.assert_allclose(weighted, [[2, 9, 0, 5 * math.log(2)]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ops.decode_boxes(weighted, anchor, (10, 10, 5, 5)), box, atol=1e-5)


def test_encode_broadcasts_anchors_over_a_batch():
    anchors = np.array([[0, 0, 10, 10], [10, 10, 30, 30]], np.float32)  # [A, 4]
    boxes = np.stack([anchors, anchors + 2.0])  # [2, A, 4]; image 2 moved by (2, 2)
    deltas = ops.encode_boxes(boxes, anchors[None])
    assert deltas.shape == (2, 2, 4)
    np.testing.assert_allclose(deltas[0], 0.0, atol=1e-7)
    # Shift 2 over anchor sizes 10 and 20; sizes unchanged.
    np.testing.assert_allclose(deltas[1], [[0.2, 0.2, 0, 0], [0.1, 0.1, 0, 0]], atol=1e-6)


def test_round_trip_hand_boxes_within_1e5_of_box_size():
    anchors = np.array([[0, 0, 64, 64], [100, 40, 132, 104], [300, 300, 812, 556]], np.float32)
    boxes = np.array([[12.5, 30, 140, 75], [90, 50, 150, 80.25], [280, 330, 900, 600]], np.float32)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5)]:
        decoded = ops.decode_boxes(ops.encode_boxes(boxes, anchors, weights), anchors, weights)
        size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None]
        assert np.all(np.abs(decoded - boxes) <= 1e-5 * size)


@PROPERTY_SETTINGS
@given(
    anchor=st.tuples(
        st.floats(0, 1024), st.floats(0, 1024), st.floats(4, 512), st.floats(4, 512)
    ),
    shift=st.tuples(st.floats(-2, 2), st.floats(-2, 2)),
    log_scale=st.tuples(st.floats(-3, 3), st.floats(-3, 3)),  # inside the +-4.13 clamp
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (0.5, 2.0, 1.0, 3.0)]),
)
def test_encode_decode_round_trip_property(anchor, shift, log_scale, weights):
    acx, acy, aw, ah = anchor
    width, height = aw * math.exp(log_scale[0]), ah * math.exp(log_scale[1])
    cx, cy = acx + shift[0] * aw, acy + shift[1] * ah
    anchors = np.array([[acx - aw / 2, acy - ah / 2, acx + aw / 2, acy + ah / 2]], np.float32)
    boxes = np.array(
        [[cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2]], np.float32
    )
    decoded = ops.decode_boxes(ops.encode_boxes(boxes, anchors, weights), anchors, weights).numpy()
    # 1e-5 of the box size, plus the float32 rounding of the coordinates themselves (a few
    # ulps of the largest coordinate, which dominates for small boxes far from the origin).
    largest_coordinate = max(np.abs(boxes).max(), np.abs(anchors).max())
    tolerance = 1e-5 * max(width, height) + 8 * EPS32 * largest_coordinate
    assert np.all(np.abs(decoded - boxes) <= tolerance), (decoded, boxes)
    np.testing.assert_allclose(ops.encode_boxes(anchors, anchors, weights), 0.0, atol=1e-6)


def test_encode_degenerate_boxes_are_finite():
    anchors = np.array([[0, 0, 10, 10]] * 4 + [[5, 5, 5, 5]], np.float32)
    boxes = np.array(
        [
            [3, 3, 3, 8],  # zero width
            [3, 3, 8, 3],  # zero height
            [-1, -1, -1, -1],  # padding
            [-50, -50, -40, -40],  # off the image
            [0, 0, 10, 10],  # against a zero-size anchor
        ],
        np.float32,
    )
    deltas = ops.encode_boxes(boxes, anchors).numpy()
    assert np.all(np.isfinite(deltas)), deltas
    # The off-image box is an ordinary box: centre (-45, -45) vs (5, 5), same size.
    np.testing.assert_allclose(deltas[3], [-5, -5, 0, 0], atol=1e-6)


def test_encode_decode_no_boxes():
    assert ops.encode_boxes(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)
    assert ops.decode_boxes(np.zeros((2, 0, 4)), np.zeros((0, 4))).shape == (2, 0, 4)


def test_decode_clamps_huge_deltas():
    anchor = [[0, 0, 10, 10]]  # centre (5, 5), size 10
    huge = ops.decode_boxes([[0, 0, 1e30, 1e30]], anchor).numpy()
    assert np.all(np.isfinite(huge))
    # Clamped at log(1000/16): size 10 * 62.5 = 625 about the centre 5.
    np.testing.assert_allclose(huge, [[5 - 312.5, 5 - 312.5, 5 + 312.5, 5 + 312.5]], rtol=1e-5)
    # The clamp applies after dividing by the weights: 5 * 100 / 5 = 100 > 4.13.
    weighted = ops.decode_boxes([[0, 0, 500, 500]], anchor, (10, 10, 5, 5)).numpy()
    np.testing.assert_allclose(weighted, huge, rtol=1e-5)
    # Hugely negative sizes shrink to a point at the centre, still finite.
    tiny = ops.decode_boxes([[1e6, 0, -1e30, -np.inf]], anchor).numpy()
    assert np.all(np.isfinite(tiny))
    np.testing.assert_allclose(tiny, [[1e7 + 5, 5, 1e7 + 5, 5]], rtol=1e-6)


def test_decode_computes_in_float32():
    out = ops.decode_boxes(np.zeros((1, 4), np.float16), np.array([[0, 0, 10, 10]], np.float64))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out, [[0, 0, 10, 10]])


# ----------------------------------------------------------------------------- nms

# Five boxes worked by hand (input order shuffled on purpose):
#   A [0,0,10,10]   0.9   B [3,0,13,10]  0.8   C [6,0,16,10]  0.7
#   D [20,20,30,30] 0.6   E [21,21,31,31] 0.5
# IoU(A,B) = 70/130 = 0.538, IoU(B,C) = 70/130 = 0.538, IoU(A,C) = 40/160 = 0.25,
# IoU(D,E) = 81/119 = 0.681, every other pair 0.
FIVE_BOXES = np.array(
    [[6, 0, 16, 10], [21, 21, 31, 31], [0, 0, 10, 10], [20, 20, 30, 30], [3, 0, 13, 10]],
    np.float32,
)  # C, E, A, D, B
FIVE_SCORES = np.array([0.7, 0.5, 0.9, 0.6, 0.8], np.float32)
A, B, C, D, E = 2, 4, 0, 3, 1


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # A removes B; C survives because B, which overlaps it, was removed first (greedy);
        # D removes E.
        ({"iou_threshold": 0.5}, [A, C, D]),
        ({"iou_threshold": 0.6}, [A, B, C, D]),  # 0.538 no longer suppresses; 0.681 does
        ({"iou_threshold": 0.7}, [A, B, C, D, E]),
        ({"iou_threshold": 0.2}, [A, D]),  # 0.25 suppresses C too
        ({"iou_threshold": 0.5, "score_threshold": 0.65}, [A, C]),
        ({"iou_threshold": 0.5, "max_output_size": 2}, [A, C]),
        ({"iou_threshold": 0.5, "max_output_size": 0}, []),
    ],
)
def test_nms_five_boxes_by_hand(kwargs, expected):
    kept = ops.nms(FIVE_BOXES, FIVE_SCORES, **kwargs)
    assert kept.dtype == tf.int32
    assert kept.numpy().tolist() == expected


def test_nms_threshold_edges():
    # IoU([0,0,2,1], [0,0,1,1]) = 1/2 exactly: equal to the threshold is not "above" it.
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], np.float32)
    assert ops.nms(boxes, [0.9, 0.8], iou_threshold=0.5).numpy().tolist() == [0, 1]
    assert ops.nms(boxes, [0.9, 0.8], iou_threshold=0.49).numpy().tolist() == [0]
    # A score equal to score_threshold is dropped.
    kept = ops.nms(boxes, [0.9, 0.8], iou_threshold=1.0, score_threshold=0.8)
    assert kept.numpy().tolist() == [0]
    # iou_threshold 0: any overlap suppresses, touching does not.
    touching = np.array([[0, 0, 1, 1], [1, 0, 2, 1], [0.5, 0, 1.5, 1]], np.float32)
    assert ops.nms(touching, [0.9, 0.8, 0.7], iou_threshold=0.0).numpy().tolist() == [0, 1]


def test_nms_degenerate_inputs():
    empty = ops.nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
    assert empty.dtype == tf.int32 and empty.shape == (0,)
    # Padding and zero-area boxes have IoU 0 with everything, so nothing suppresses them.
    padding = -np.ones((3, 4), np.float32)
    assert sorted(ops.nms(padding, [0.3, 0.2, 0.1]).numpy().tolist()) == [0, 1, 2]
    # Boxes off the image suppress each other like any others: IoU 81/119.
    off = np.array([[-30, -30, -20, -20], [-29, -29, -19, -19]], np.float32)
    assert ops.nms(off, [0.5, 0.6]).numpy().tolist() == [1]


def check_nms_invariants(boxes, scores, kept, iou_threshold, score_threshold):
    iou = reference_iou(boxes, boxes)
    kept = list(kept)
    assert len(set(kept)) == len(kept)
    kept_scores = scores[kept]
    assert np.all(np.diff(kept_scores) <= 0), "kept boxes are not in descending score order"
    if score_threshold is not None:
        assert np.all(kept_scores > score_threshold)
    for i, a in enumerate(kept):
        for b in kept[i + 1 :]:
            assert iou[a, b] <= iou_threshold, (a, b, iou[a, b])
    for dropped in set(range(len(boxes))) - set(kept):
        below = score_threshold is not None and scores[dropped] <= score_threshold
        suppressed = any(
            scores[k] >= scores[dropped] and iou[k, dropped] > iou_threshold for k in kept
        )
        assert below or suppressed, f"box {dropped} dropped for no reason"


@PROPERTY_SETTINGS
@given(
    inputs=nms_inputs(),
    iou_threshold=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 1.0]),
    score_threshold=st.sampled_from([None, 0.0, 0.3, 0.5]),
)
def test_nms_invariants_property(inputs, iou_threshold, score_threshold):
    boxes, scores = inputs
    kept = ops.nms(boxes, scores, iou_threshold, len(boxes), score_threshold).numpy()
    check_nms_invariants(boxes, scores, kept, iou_threshold, score_threshold)
    assert kept.tolist() == reference_nms(boxes, scores, iou_threshold, score_threshold)
    # max_output_size only truncates the greedy order.
    truncated = ops.nms(boxes, scores, iou_threshold, 2, score_threshold).numpy()
    assert truncated.tolist() == kept[:2].tolist()


def test_nms_agrees_with_tf_image_nms_on_yxyx_boxes():
    rng = np.random.default_rng(3)
    for trial in range(5):
        boxes = random_boxes(rng, 60, max_size=40)
        scores = rng.uniform(size=60).astype(np.float32)
        yxyx = boxes[:, [1, 0, 3, 2]]
        for iou_threshold, score_threshold in [(0.5, None), (0.3, 0.2), (0.7, 0.5)]:
            ours = ops.nms(boxes, scores, iou_threshold, 30, score_threshold)
            theirs = tf.image.non_max_suppression(
                yxyx, scores, 30, iou_threshold,
                float("-inf") if score_threshold is None else score_threshold,
            )
            np.testing.assert_array_equal(ours, theirs)
            full = ops.nms(boxes, scores, iou_threshold, 60, score_threshold).numpy().tolist()
            assert full == reference_nms(boxes, scores, iou_threshold, score_threshold)


# ----------------------------------------------------------------------------- batched_nms


def test_batched_nms_by_hand():
    # B in its own class is no longer suppressed by A; E in its own class survives D.
    classes = np.zeros(5, np.int32)
    classes[B] = 1
    classes[E] = 2
    kept = ops.batched_nms(FIVE_BOXES, FIVE_SCORES, classes, iou_threshold=0.5)
    assert kept.dtype == tf.int32
    # Class 0: A, C, D. Class 1: B. Class 2: E. Merged by score.
    assert kept.numpy().tolist() == [A, B, C, D, E]
    # With iou_threshold 0.2, A (IoU 0.25) now suppresses C as well.
    kept = ops.batched_nms(FIVE_BOXES, FIVE_SCORES, classes, iou_threshold=0.2)
    assert kept.numpy().tolist() == [A, B, D, E]
    # All one class: plain NMS.
    same = ops.batched_nms(FIVE_BOXES, FIVE_SCORES, np.full(5, 7), iou_threshold=0.5)
    assert same.numpy().tolist() == [A, C, D]


def test_batched_nms_with_boxes_off_the_image():
    # With negative coordinates an offset of class * (max + 1) is not enough: here the largest
    # coordinate is 30, so class 1's box would move by 31 onto class 0's [11,11,21,21].
    boxes = np.array([[-20, -20, -10, -10], [11, 11, 21, 21], [0, 0, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.1], np.float32)
    classes = np.array([1, 0, 0])
    # Class 0: IoU([11,11,21,21], [0,0,30,30]) = 100/900, both kept.
    assert ops.batched_nms(boxes, scores, classes).numpy().tolist() == [0, 1, 2]


def test_batched_nms_degenerate_inputs():
    empty = ops.batched_nms(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int32))
    assert empty.dtype == tf.int32 and empty.shape == (0,)
    indices, scores = ops.batched_nms(
        np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int32), return_scores=True
    )
    assert indices.shape == (0,) and scores.shape == (0,)
    # Padding rows (boxes -1, class -1) are a class of their own and suppress nothing.
    boxes = np.array([[0, 0, 10, 10], [-1, -1, -1, -1], [-1, -1, -1, -1]], np.float32)
    kept = ops.batched_nms(boxes, [0.9, 0.0, 0.0], [3, -1, -1], score_threshold=0.05)
    assert kept.numpy().tolist() == [0]


@PROPERTY_SETTINGS
@given(
    inputs=nms_inputs(),
    class_draw=st.lists(st.integers(0, 2), min_size=12, max_size=12),
    iou_threshold=st.sampled_from([0.0, 0.3, 0.5, 0.8]),
)
def test_batched_nms_never_suppresses_across_classes(inputs, class_draw, iou_threshold):
    boxes, scores = inputs
    classes = np.array(class_draw[: len(boxes)], np.int32)
    kept = ops.batched_nms(boxes, scores, classes, iou_threshold, len(boxes)).numpy()
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        alone = members[ops.nms(boxes[members], scores[members], iou_threshold, len(members))]
        assert set(kept[classes[kept] == label]) == set(alone)
    assert kept.tolist() == reference_batched_nms(boxes, scores, classes, iou_threshold)


def test_batched_nms_agrees_with_per_class_tf_nms_random():
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 200, high=300, max_size=80)
    scores = rng.uniform(size=200).astype(np.float32)
    classes = rng.integers(0, 20, size=200)
    kept = ops.batched_nms(boxes, scores, classes, 0.5, 200).numpy()
    expected = []
    for label in range(20):
        members = np.flatnonzero(classes == label)
        alone = tf.image.non_max_suppression(boxes[members], scores[members], 200, 0.5)
        expected += members[alone.numpy()].tolist()
    assert kept.tolist() == sorted(expected, key=lambda i: -scores[i])


# ----------------------------------------------------------------------------- soft-NMS


def test_soft_nms_by_hand():
    # A [0,0,2,2] 0.9, B [1,1,3,3] 0.8, C [0,1,2,3] 0.85.
    # IoU(A,B) = 1/7, IoU(A,C) = 2/6 = 1/3, IoU(B,C) = 2/6 = 1/3. With sigma 0.5:
    # keep A; B -> 0.8 exp(-(1/7)^2 / 0.5) = 0.8 exp(-2/49) = 0.768, C -> 0.85 exp(-2/9) = 0.681;
    # keep B; C -> 0.85 exp(-2/9) exp(-2/9) = 0.85 exp(-4/9) = 0.545; keep C.
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [0, 1, 2, 3]], np.float32)
    scores = np.array([0.9, 0.8, 0.85], np.float32)
    indices, new_scores = ops.soft_nms(boxes, scores, sigma=0.5)
    assert indices.dtype == tf.int32 and new_scores.dtype == tf.float32
    assert indices.numpy().tolist() == [0, 1, 2]
    np.testing.assert_allclose(
        new_scores, [0.9, 0.8 * math.exp(-2 / 49), 0.85 * math.exp(-4 / 9)], rtol=1e-5
    )
    # The score threshold applies to the decayed scores: 0.545 <= 0.6.
    indices, new_scores = ops.soft_nms(boxes, scores, sigma=0.5, score_threshold=0.6)
    assert indices.numpy().tolist() == [0, 1]
    indices, _ = ops.soft_nms(boxes, scores, max_output_size=1)
    assert indices.numpy().tolist() == [0]


def test_soft_nms_reorders_by_decayed_score():
    # B decays from 0.8 to 0.768 (IoU 1/7 with A) and falls behind the lone box at 0.78.
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [10, 10, 12, 12]], np.float32)
    indices, new_scores = ops.soft_nms(boxes, [0.9, 0.8, 0.78])
    assert indices.numpy().tolist() == [0, 2, 1]
    np.testing.assert_allclose(new_scores, [0.9, 0.78, 0.8 * math.exp(-2 / 49)], rtol=1e-5)


def test_soft_nms_agrees_with_paper_reference_random():
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 40, high=60, min_size=5, max_size=30)
    scores = rng.uniform(size=40).astype(np.float32)
    for sigma in [0.1, 0.5, 2.0]:
        indices, new_scores = ops.soft_nms(boxes, scores, sigma=sigma, max_output_size=40)
        expected, expected_scores = reference_soft_nms(boxes, scores, sigma, 0.001)
        assert indices.numpy().tolist() == expected
        np.testing.assert_allclose(new_scores, expected_scores, rtol=1e-4)
        assert np.all(new_scores.numpy() <= scores[indices.numpy()])


def test_soft_nms_degenerate_inputs():
    indices, new_scores = ops.soft_nms(np.zeros((0, 4)), np.zeros((0,)))
    assert indices.shape == (0,) and new_scores.shape == (0,)
    padding = -np.ones((2, 4), np.float32)
    indices, new_scores = ops.soft_nms(padding, [0.5, 0.4])
    assert indices.numpy().tolist() == [0, 1]
    np.testing.assert_allclose(new_scores, [0.5, 0.4])  # IoU 0: no decay


def test_batched_soft_nms():
    classes = np.array([0, 0, 1, 0, 1])
    # sigma 0 is plain batched NMS, with kept scores = input scores.
    indices, kept_scores = ops.batched_nms(
        FIVE_BOXES, FIVE_SCORES, classes, soft_nms_sigma=0.0, return_scores=True
    )
    hard = ops.batched_nms(FIVE_BOXES, FIVE_SCORES, classes)
    assert indices.numpy().tolist() == hard.numpy().tolist()
    np.testing.assert_array_equal(kept_scores, FIVE_SCORES[indices.numpy()])
    # sigma > 0 is soft-NMS within each class.
    indices, kept_scores = ops.batched_nms(
        FIVE_BOXES, FIVE_SCORES, classes, soft_nms_sigma=0.5, score_threshold=0.001,
        return_scores=True,
    )
    expected = {}
    for label in (0, 1):
        members = np.flatnonzero(classes == label)
        kept, decayed = reference_soft_nms(FIVE_BOXES[members], FIVE_SCORES[members], 0.5, 0.001)
        expected.update({members[k]: s for k, s in zip(kept, decayed)})
    order = sorted(expected, key=lambda i: -expected[i])
    assert indices.numpy().tolist() == order
    np.testing.assert_allclose(kept_scores, [expected[i] for i in order], rtol=1e-5)


# ----------------------------------------------------------------------------- graph mode


def test_ops_work_inside_tf_function_with_unknown_sizes():
    spec = [tf.TensorSpec([None, 4]), tf.TensorSpec([None]), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec)
    def run(boxes, scores, classes):
        return (
            ops.box_iou(boxes, boxes),
            ops.convert_format(boxes, "xyxy", "rel_center_xywh", height=40, width=50),
            ops.decode_boxes(ops.encode_boxes(boxes, boxes[:1]), boxes[:1]),
            ops.nms(boxes, scores),
            ops.batched_nms(boxes, scores, classes),
            ops.soft_nms(boxes, scores)[0],
        )

    classes = np.array([0, 0, 1, 0, 1], np.int32)
    graph = run(FIVE_BOXES, FIVE_SCORES, classes)
    eager = (
        ops.box_iou(FIVE_BOXES, FIVE_BOXES),
        ops.convert_format(FIVE_BOXES, "xyxy", "rel_center_xywh", height=40, width=50),
        ops.decode_boxes(ops.encode_boxes(FIVE_BOXES, FIVE_BOXES[:1]), FIVE_BOXES[:1]),
        ops.nms(FIVE_BOXES, FIVE_SCORES),
        ops.batched_nms(FIVE_BOXES, FIVE_SCORES, classes),
        ops.soft_nms(FIVE_BOXES, FIVE_SCORES)[0],
    )
    for g, e in zip(graph, eager):
        np.testing.assert_allclose(g, e, rtol=1e-6)


# ----------------------------------------------------------------------------- validation

BOXES = FIVE_BOXES
SCORES = FIVE_SCORES


@pytest.mark.parametrize(
    "argument, call",
    [
        ("boxes1", lambda: ops.box_iou(np.zeros(4), BOXES)),
        ("boxes1", lambda: ops.box_iou(np.zeros((1, 2, 3, 4)), BOXES)),
        ("boxes2", lambda: ops.box_iou(BOXES, np.zeros((3, 5)))),
        ("boxes2", lambda: ops.box_iou(np.zeros((2, 3, 4)), np.zeros((3, 3, 4)))),
        ("boxes", lambda: ops.convert_format(np.zeros((3, 3)), "xyxy", "xywh")),
        ("source", lambda: ops.convert_format(BOXES, "xyxz", "xywh")),
        ("target", lambda: ops.convert_format(BOXES, "xyxy", "yolo")),
        ("height", lambda: ops.convert_format(BOXES, "xyxy", "rel_xyxy", width=10)),
        ("width", lambda: ops.convert_format(BOXES, "rel_xyxy", "xyxy", height=10)),
        ("height", lambda: ops.convert_format(BOXES, "rel_xyxy", "xyxy", height=0, width=10)),
        ("boxes", lambda: ops.encode_boxes(np.zeros((3, 3)), BOXES)),
        ("anchors", lambda: ops.encode_boxes(BOXES, np.zeros((5, 2)))),
        ("anchors", lambda: ops.encode_boxes(BOXES, BOXES[:2])),
        ("weights", lambda: ops.encode_boxes(BOXES, BOXES, weights=(1, 1, 1))),
        ("weights", lambda: ops.decode_boxes(BOXES, BOXES, weights=(1, 1, 0, 1))),
        ("deltas", lambda: ops.decode_boxes(np.zeros((5, 5)), BOXES)),
        ("boxes", lambda: ops.nms(BOXES[None], SCORES)),
        ("boxes", lambda: ops.nms(np.zeros((5, 3)), SCORES)),
        ("scores", lambda: ops.nms(BOXES, SCORES[None])),
        ("scores", lambda: ops.nms(BOXES, SCORES[:3])),
        ("iou_threshold", lambda: ops.nms(BOXES, SCORES, iou_threshold=-0.1)),
        ("iou_threshold", lambda: ops.nms(BOXES, SCORES, iou_threshold=1.5)),
        ("iou_threshold", lambda: ops.nms(BOXES, SCORES, iou_threshold=float("nan"))),
        ("score_threshold", lambda: ops.nms(BOXES, SCORES, score_threshold=-0.5)),
        ("max_output_size", lambda: ops.nms(BOXES, SCORES, max_output_size=-1)),
        ("max_output_size", lambda: ops.nms(BOXES, SCORES, max_output_size=2.5)),
        ("sigma", lambda: ops.soft_nms(BOXES, SCORES, sigma=0.0)),
        ("score_threshold", lambda: ops.soft_nms(BOXES, SCORES, score_threshold=-1.0)),
        ("classes", lambda: ops.batched_nms(BOXES, SCORES, np.zeros(4))),
        ("classes", lambda: ops.batched_nms(BOXES, SCORES, np.zeros((5, 1)))),
        ("soft_nms_sigma", lambda: ops.batched_nms(BOXES, SCORES, np.zeros(5), soft_nms_sigma=-1)),
        ("iou_threshold", lambda: ops.batched_nms(BOXES, SCORES, np.zeros(5), iou_threshold=2)),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(argument, call):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def test_unknown_format_error_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        ops.convert_format(BOXES, "xyxy", "yolo")
    for name in ops.BOX_FORMATS:
        assert name in str(error.value)
