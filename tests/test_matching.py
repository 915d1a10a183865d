import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from retinanet import AnchorGenerator, BoxCoder, IoUMatcher, LabelEncoder, ops

# Docstring example: one 10x10 box against three anchors.
ANCHORS = tf.constant([[0, 0, 10, 10], [0, 0, 10, 22], [20, 20, 30, 30]], tf.float32)
BOX = tf.constant([[[0, 0, 10, 10]]], tf.float32)
CLASS = tf.constant([[3]])


def test_worked_example_positive_ignored_negative():
    _, states = IoUMatcher()(ANCHORS, BOX, CLASS)
    # IoUs 1.0, 100/220 = 0.4545 and 0.
    np.testing.assert_array_equal(states, [[1, -1, 0]])


def test_low_quality_match_claims_the_best_anchor():
    anchors = ANCHORS[1:]
    _, states = IoUMatcher()(anchors, BOX, CLASS)
    np.testing.assert_array_equal(states, [[1, 0]])
    _, states = IoUMatcher(allow_low_quality_matches=False)(anchors, BOX, CLASS)
    np.testing.assert_array_equal(states, [[-1, 0]])


def test_low_quality_match_goes_to_the_claiming_box():
    # Anchor 0 overlaps box A at 0.6 and box B at 0.3; it is the best anchor of both, and the
    # claim with the higher IoU (A) wins.
    anchors = tf.constant([[0, 0, 10, 10], [30, 30, 40, 40]], tf.float32)
    boxes = tf.constant([[[0, 0, 10, 6], [0, 0, 3, 10]]], tf.float32)
    index, states = IoUMatcher()(anchors, boxes, tf.constant([[0, 1]]))
    np.testing.assert_array_equal(states, [[1, 0]])
    np.testing.assert_array_equal(index[:, 0], [0])
    # A lone box B claims anchor 0 for itself.
    index, states = IoUMatcher()(anchors, boxes[:, 1:], tf.constant([[1]]))
    np.testing.assert_array_equal(states, [[1, 0]])


def _encoder(box_weights=(1.0, 1.0, 1.0, 1.0)):
    return LabelEncoder(AnchorGenerator(min_level=3, max_level=4), box_coder=BoxCoder(box_weights))


@pytest.mark.parametrize(
    "boxes, classes",
    [
        (np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "int32")),
        (-np.ones((2, 3, 4), "float32"), -np.ones((2, 3), "int32")),
    ],
    ids=["no-boxes", "all-padding"],
)
def test_images_without_boxes_are_all_negative(boxes, classes):
    targets = _encoder()(boxes, classes, 64, 64)
    assert np.all(targets["anchor_states"].numpy() == 0)
    assert np.all(targets["cls_targets"].numpy() == -1)
    assert np.all(targets["box_targets"].numpy() == 0)


def test_box_off_the_image_matches_nothing_and_targets_stay_finite():
    boxes = np.array([[[500, 500, 600, 600], [0, 0, 0, 0]]], "float32")
    targets = _encoder()(boxes, np.array([[0, 1]]), 64, 64)
    assert np.all(targets["anchor_states"].numpy() == 0)
    assert np.all(np.isfinite(targets["box_targets"].numpy()))


def test_targets_decode_back_to_the_matched_boxes():
    encoder = _encoder(box_weights=(10.0, 10.0, 5.0, 5.0))
    boxes = np.array([[[4, 6, 40, 30], [30, 30, 62, 60]], [[0, 0, 20, 50], [-1, -1, -1, -1]]], "float32")
    classes = np.array([[2, 0], [1, -1]], "int32")
    targets = encoder(boxes, classes, 64, 64)
    anchors = encoder.anchor_generator(64, 64)
    index, states = encoder.matcher(anchors, boxes, classes)
    decoded = ops.decode_boxes(targets["box_targets"], anchors[None], weights=encoder.box_coder.weights)
    positive = states.numpy() == 1
    assert positive[0].any() and positive[1].any()
    expected = np.take_along_axis(boxes, index.numpy()[..., None], axis=1)
    np.testing.assert_allclose(decoded.numpy()[positive], expected[positive], atol=1e-3)
    np.testing.assert_array_equal(
        targets["cls_targets"].numpy()[positive],
        np.take_along_axis(classes, index.numpy(), axis=1)[positive],
    )
    # Every real box owns at least one positive anchor.
    for image in range(2):
        owners = set(index.numpy()[image][positive[image]])
        assert owners == {n for n in range(2) if classes[image, n] >= 0}


def test_works_inside_tf_function_and_tf_data():
    encoder = _encoder()
    boxes = np.array([[[4, 6, 40, 30]]] * 4, "float32")
    classes = np.array([[1]] * 4, "int32")
    dataset = tf.data.Dataset.from_tensor_slices((boxes, classes)).batch(2)
    dataset = dataset.map(lambda b, c: encoder(b, c, 64, 64)["anchor_states"])
    graph_states = tf.function(lambda b, c: encoder(b, c, 64, 64)["anchor_states"])(boxes, classes)
    for batch in dataset:
        np.testing.assert_array_equal(batch, graph_states[:2])


box_coordinate = st.floats(-50, 300, allow_nan=False, width=32)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(box_coordinate, box_coordinate, box_coordinate, box_coordinate), max_size=6),
    st.floats(0.0, 1.0),
)
def test_random_boxes_give_valid_finite_targets(raw_boxes, negative_iou):
    encoder = LabelEncoder(
        AnchorGenerator(min_level=3, max_level=5),
        IoUMatcher(positive_iou=max(negative_iou, 0.5), negative_iou=min(negative_iou, 0.5)),
    )
    boxes = np.array(
        [[min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)] for x1, y1, x2, y2 in raw_boxes],
        "float32",
    ).reshape(1, -1, 4)
    classes = np.arange(boxes.shape[1], dtype="int32")[None] % 3
    targets = encoder(boxes, classes, 128, 128)
    states = targets["anchor_states"].numpy()
    assert set(np.unique(states)) <= {-1, 0, 1}
    assert np.all(np.isfinite(targets["box_targets"].numpy()))
    assert np.all((targets["cls_targets"].numpy() >= 0) == (states == 1))
    # A box that overlaps any anchor gets at least one positive anchor.
    iou = ops.box_iou(encoder.anchor_generator(128, 128), boxes[0]).numpy()
    positives = states[0] == 1
    for column in range(boxes.shape[1]):
        if iou[:, column].max() > 0:
            assert positives[iou[:, column] == iou[:, column].max()].all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"positive_iou": 0.3, "negative_iou": 0.4}, "negative_iou"),
        ({"positive_iou": 1.5}, "positive_iou"),
    ],
)
def test_invalid_thresholds_and_box_weights_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        IoUMatcher(**kwargs)
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1, 1, 1))


def test_bad_box_shape_names_the_argument():
    with pytest.raises(ValueError, match="boxes"):
        LabelEncoder()(np.zeros((2, 3, 5), "float32"), np.zeros((2, 3), "int32"), 128, 128)


# ----------------------------------------------------------------------------------- ATSS

from retinanet import ATSSMatcher  # noqa: E402

# Two levels: four 10x10 anchors (centres (5, 5), (15, 5), (5, 15), (15, 15)), then one
# 20x20 anchor centred at (10, 10).
LEVELS = [tf.constant([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]],
                      tf.float32), tf.constant([[0, 0, 20, 20]], tf.float32)]
LEVEL_ANCHORS = tf.concat(LEVELS, axis=0)


def _atss(boxes, top_k=2, anchors=LEVEL_ANCHORS, level_sizes=(4, 1)):
    boxes = tf.constant([boxes], tf.float32)
    classes = tf.zeros([1, boxes.shape[1]], tf.int32)
    index, states = ATSSMatcher(top_k)(anchors, boxes, classes, list(level_sizes))
    return index.numpy()[0], states.numpy()[0]


def test_atss_threshold_is_the_mean_plus_std_of_the_candidates():
    # Box [0, 0, 10, 10]: candidates anchor 0 (IoU 1) and anchor 1 (nearest tie, IoU 0) on
    # level 0, the 20x20 anchor (IoU 0.25) on level 1: threshold 0.4167 + 0.5204 = 0.937.
    _, states = _atss([[0, 0, 10, 10]])
    np.testing.assert_array_equal(states, [1, 0, 0, 0, 0])


def test_atss_keeps_an_object_smaller_than_every_anchor():
    # A 4x4 box centred at (5, 5): IoUs 0.16, 0 and 0.04, so the threshold is
    # 0.0667 + 0.0833 = 0.150 and anchor 0 (0.16, centre inside) is positive, where the
    # IoU matcher at 0.5 without low-quality matches finds nothing.
    _, states = _atss([[3, 3, 7, 7]])
    np.testing.assert_array_equal(states, [1, 0, 0, 0, 0])
    _, iou_states = IoUMatcher(allow_low_quality_matches=False)(
        LEVEL_ANCHORS, tf.constant([[[3, 3, 7, 7]]], tf.float32), tf.zeros([1, 1], tf.int32))
    assert not (iou_states.numpy() == 1).any()


def test_atss_gives_an_anchor_two_objects_claim_to_the_higher_iou():
    # Box B [0, 0, 12, 10] (listed first) and box A [0, 0, 10, 10] both select anchor 0:
    # for B its IoU 0.833 passes B's threshold 0.411 + 0.379 = 0.790; for A it is 1.
    index, states = _atss([[0, 0, 12, 10], [0, 0, 10, 10]])
    np.testing.assert_array_equal(states, [1, 0, 0, 0, 0])
    assert index[0] == 1  # A, the higher IoU


def test_atss_positives_need_their_centre_inside_the_box():
    # One level, every anchor a candidate: [0, 0, 10, 22] (IoU 0.4545, centre (5, 11) below
    # the box), [2, 2, 8, 8] (IoU 0.36, centre inside) and seven far anchors (IoU 0). The
    # threshold 0.0905 + 0.1812 = 0.272 passes both overlapping anchors; only the one whose
    # centre is inside is positive.
    far = [[100 + 10 * i, 100, 110 + 10 * i, 110] for i in range(7)]
    anchors = tf.constant([[0, 0, 10, 22], [2, 2, 8, 8]] + far, tf.float32)
    _, states = _atss([[0, 0, 10, 10]], top_k=9, anchors=anchors, level_sizes=(9,))
    np.testing.assert_array_equal(states, [0, 1] + [0] * 7)


def test_atss_counts_top_k_in_locations():
    # Four locations (centres (5, 5), (15, 5), (5, 15), (15, 15)), each with a 10x10 and a
    # 20x10 anchor, ordered location by location. Box [0, 0, 12, 10] (centre (6, 5)): the
    # two nearest locations give IoUs 0.833, 0.6 (location 0) and 0.1, 0.28 (location 1),
    # so the threshold is 0.4533 + 0.3270 = 0.780 and the square at location 0 is positive.
    # Counted in anchors, the two nearest are location 0's two shapes (IoUs 0.833 and 0.6,
    # threshold 0.717 + 0.165 = 0.882) and nothing would be.
    anchors = []
    for cx, cy in [(5, 5), (15, 5), (5, 15), (15, 15)]:
        anchors += [[cx - 5, cy - 5, cx + 5, cy + 5], [cx - 10, cy - 5, cx + 10, cy + 5]]
    anchors = tf.constant(anchors, tf.float32)
    boxes, classes = tf.constant([[[0, 0, 12, 10]]], tf.float32), tf.zeros([1, 1], tf.int32)
    _, states = ATSSMatcher(top_k=2)(anchors, boxes, classes, [8], anchors_per_location=2)
    np.testing.assert_array_equal(states.numpy()[0], [1] + [0] * 7)
    _, states = ATSSMatcher(top_k=2)(anchors, boxes, classes, [8], anchors_per_location=1)
    np.testing.assert_array_equal(states.numpy()[0], [0] * 8)


def test_atss_without_boxes_and_with_padding_is_all_negative():
    index, states = ATSSMatcher()(LEVEL_ANCHORS, -tf.ones([2, 3, 4]), -tf.ones([2, 3], tf.int32),
                                  [4, 1])
    np.testing.assert_array_equal(states, 0)
    with pytest.raises(ValueError, match="level_sizes"):
        ATSSMatcher()(LEVEL_ANCHORS, -tf.ones([1, 1, 4]), -tf.ones([1, 1], tf.int32))
    with pytest.raises(ValueError, match="top_k"):
        ATSSMatcher(top_k=0)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(2, 60),
                          st.floats(2, 60)), min_size=1, max_size=5))
def test_atss_positives_lie_inside_their_box(raw_boxes):
    """With the package's anchors, targets stay finite and every positive anchor's centre
    is inside the box it is matched to."""
    encoder = LabelEncoder(AnchorGenerator(min_level=3, max_level=5), ATSSMatcher())
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in raw_boxes], np.float32)
    targets = encoder(boxes[None], np.zeros((1, len(boxes)), np.int32), 128, 128)
    anchors = encoder.anchor_generator(128, 128).numpy()
    states = targets["anchor_states"].numpy()[0]
    assert np.all(np.isfinite(targets["box_targets"].numpy()))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    index, _ = encoder.matcher(tf.constant(anchors), tf.constant(boxes[None]),
                               tf.zeros([1, len(boxes)], tf.int32), [16 * 16 * 9, 64 * 9, 16 * 9],
                               anchors_per_location=9)
    for anchor in np.flatnonzero(states == 1):
        box = boxes[index.numpy()[0, anchor]]
        assert (box[:2] < centres[anchor]).all() and (centres[anchor] < box[2:]).all()


@pytest.mark.parametrize("matcher", [IoUMatcher(), ATSSMatcher()], ids=["iou", "atss"])
def test_padding_past_the_last_box_changes_no_target(matcher):
    """Matching drops the padding columns after the batch's last box (a speed-up): the
    targets equal those of the untrimmed batch, and of the same boxes padded less."""
    encoder = LabelEncoder(AnchorGenerator(min_level=3, max_level=5), matcher)
    boxes = -np.ones((2, 50, 4), np.float32)
    classes = -np.ones((2, 50), np.int32)
    boxes[0, :2] = [[10, 12, 60, 70], [40, 30, 120, 110]]
    boxes[1, :3] = [[0, 0, 30, 20], [-1, -1, -1, -1], [64, 64, 128, 128]]  # a hole
    classes[0, :2], classes[1, :3] = [1, 0], [2, -1, 1]
    trimmed = encoder(boxes, classes, 128, 128)
    for other in (encoder(boxes, classes, 128, 128, trim_padding=False),
                  encoder(boxes[:, :3], classes[:, :3], 128, 128)):
        for key in trimmed:
            np.testing.assert_array_equal(trimmed[key], other[key], err_msg=key)
    assert (trimmed["anchor_states"].numpy() == 1).sum(axis=1).min() > 0
