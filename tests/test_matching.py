import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from retinanet import AnchorGenerator, LabelEncoder, ops

# Docstring example: one 10x10 box against three anchors.
ANCHORS = tf.constant([[0, 0, 10, 10], [0, 0, 10, 22], [20, 20, 30, 30]], tf.float32)
BOX = tf.constant([[[0, 0, 10, 10]]], tf.float32)
CLASS = tf.constant([[3]])


def test_worked_example_positive_ignored_negative():
    _, states = LabelEncoder().match(ANCHORS, BOX, CLASS)
    # IoUs 1.0, 100/220 = 0.4545 and 0.
    np.testing.assert_array_equal(states, [[1, -1, 0]])


def test_low_quality_match_claims_the_best_anchor():
    anchors = ANCHORS[1:]
    _, states = LabelEncoder().match(anchors, BOX, CLASS)
    np.testing.assert_array_equal(states, [[1, 0]])
    _, states = LabelEncoder(allow_low_quality_matches=False).match(anchors, BOX, CLASS)
    np.testing.assert_array_equal(states, [[-1, 0]])


def test_low_quality_match_goes_to_the_claiming_box():
    # Anchor 0 overlaps box A at 0.6 and box B at 0.3; it is the best anchor of both, and the
    # claim with the higher IoU (A) wins.
    anchors = tf.constant([[0, 0, 10, 10], [30, 30, 40, 40]], tf.float32)
    boxes = tf.constant([[[0, 0, 10, 6], [0, 0, 3, 10]]], tf.float32)
    index, states = LabelEncoder().match(anchors, boxes, tf.constant([[0, 1]]))
    np.testing.assert_array_equal(states, [[1, 0]])
    np.testing.assert_array_equal(index[:, 0], [0])
    # A lone box B claims anchor 0 for itself.
    index, states = LabelEncoder().match(anchors, boxes[:, 1:], tf.constant([[1]]))
    np.testing.assert_array_equal(states, [[1, 0]])


def _encoder(**kwargs):
    return LabelEncoder(AnchorGenerator(min_level=3, max_level=4), **kwargs)


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
    index, states = encoder.match(anchors, boxes, classes)
    decoded = ops.decode_boxes(targets["box_targets"], anchors[None], weights=encoder.box_weights)
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
        AnchorGenerator(min_level=3, max_level=5), positive_iou=max(negative_iou, 0.5),
        negative_iou=min(negative_iou, 0.5),
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
        ({"box_weights": (1, 1, 1)}, "box_weights"),
    ],
)
def test_invalid_thresholds_and_box_weights_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LabelEncoder(**kwargs)


def test_bad_box_shape_names_the_argument():
    with pytest.raises(ValueError, match="boxes"):
        LabelEncoder()(np.zeros((2, 3, 5), "float32"), np.zeros((2, 3), "int32"), 128, 128)
