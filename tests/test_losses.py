import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinanet.losses import FocalLoss, SmoothL1Loss


def test_focal_loss_by_hand():
    # Two anchors, one class, logit 0 (p = 0.5): one positive, one negative.
    logits = tf.zeros([1, 2, 1])
    loss = FocalLoss(alpha=0.25, gamma=2.0)(logits, tf.constant([[0, -1]]), tf.constant([[1, 0]]))
    positive = 0.25 * 0.5**2 * math.log(2)
    negative = 0.75 * 0.5**2 * math.log(2)
    assert float(loss) == pytest.approx(positive + negative, rel=1e-6)


def test_focal_loss_matches_keras_binary_focal_crossentropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(2, 50, 4)).astype("float32")
    states = rng.choice([1, 0, 0, 0], size=(2, 50)).astype("int32")
    classes = rng.integers(0, 4, size=(2, 50)).astype("int32")
    ours = FocalLoss(alpha=0.25, gamma=2.0)(logits, classes, states)
    one_hot = np.where(states[..., None] == 1, np.eye(4)[classes], 0.0).astype("float32")
    reference = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True, reduction="sum"
    )
    expected = float(reference(one_hot[..., None], logits[..., None])) / max(states.sum(), 1)
    assert float(ours) == pytest.approx(expected, rel=1e-4)


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy():
    logits = tf.constant([[[2.0, -1.0]]])
    loss = FocalLoss(alpha=0.5, gamma=0.0)(logits, tf.constant([[1]]), tf.constant([[1]]))
    expected = 0.5 * (math.log1p(math.exp(-(-1.0))) + math.log1p(math.exp(2.0)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_focal_loss_down_weights_easy_examples():
    focal = FocalLoss(alpha=0.5, gamma=2.0)
    # p_t = 0.9 (easy) and 0.1 (hard): (1 - p_t)^2 scales them by 0.01 and 0.81.
    logit = math.log(9.0)
    easy = float(focal.elementwise(tf.constant([logit]), tf.constant([1.0]))[0])
    hard = float(focal.elementwise(tf.constant([-logit]), tf.constant([1.0]))[0])
    assert easy == pytest.approx(0.5 * 0.01 * -math.log(0.9), rel=1e-5)
    assert hard == pytest.approx(0.5 * 0.81 * -math.log(0.1), rel=1e-5)


def test_ignored_anchors_contribute_nothing_and_normaliser_is_at_least_one():
    logits = tf.constant([[[5.0], [5.0]]])
    focal = FocalLoss()
    only_ignored = focal(logits, tf.constant([[-1, -1]]), tf.constant([[-1, -1]]))
    assert float(only_ignored) == 0.0
    one_negative = focal(logits, tf.constant([[-1, -1]]), tf.constant([[0, -1]]))
    p = 1 / (1 + math.exp(-5.0))
    expected = 0.75 * p**2 * -math.log(1 - p)
    assert float(one_negative) == pytest.approx(expected, rel=1e-5)


def test_smooth_l1_by_hand_and_against_huber():
    beta = 1 / 9
    loss = SmoothL1Loss(beta)
    predictions = tf.constant([[[0.05, 1.0, 0.0, -2.0]]])
    targets = tf.zeros([1, 1, 4])
    expected = 0.5 * 0.05**2 / beta + (1.0 - 0.5 * beta) + 0.0 + (2.0 - 0.5 * beta)
    assert float(loss(predictions, targets, tf.constant([[1]]))) == pytest.approx(expected, rel=1e-6)
    # Keras's Huber averages over the last axis; smooth L1 is Huber / beta, summed.
    huber = keras.losses.Huber(delta=beta, reduction="sum")
    assert 4 * float(huber(targets[0], predictions[0])) / beta == pytest.approx(expected, rel=1e-5)


def test_smooth_l1_counts_positive_anchors_only():
    predictions = tf.ones([1, 3, 4])
    loss = SmoothL1Loss(beta=0.0)(predictions, tf.zeros([1, 3, 4]), tf.constant([[1, 0, -1]]))
    assert float(loss) == pytest.approx(4.0)
    loss = SmoothL1Loss(beta=0.0)(predictions, tf.zeros([1, 3, 4]), tf.constant([[1, 1, -1]]))
    assert float(loss) == pytest.approx(4.0)


def test_losses_are_float32_and_finite_from_float16():
    logits = tf.constant([[[60000.0], [-60000.0]]], tf.float16)
    loss = FocalLoss()(logits, tf.constant([[0, -1]]), tf.constant([[1, 0]]))
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    deltas = tf.constant([[[1e4, 0, 0, 0]]], tf.float16)
    loss = SmoothL1Loss()(deltas, tf.zeros([1, 1, 4]), tf.constant([[1]]))
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: FocalLoss(alpha=1.5), "alpha"),
        (lambda: FocalLoss(gamma=-1), "gamma"),
        (lambda: SmoothL1Loss(beta=-0.1), "beta"),
    ],
)
def test_invalid_loss_parameters_raise_naming_them(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


# -- the IoU family --------------------------------------------------------------------------

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from retinanet.box_coder import BoxCoder  # noqa: E402
from retinanet.losses import IOU_LOSSES, IoULoss, iou_loss  # noqa: E402


def _decoded(deltas, targets, anchors):
    """What RetinaNet.compute_loss passes an IoU loss: both sets of deltas decoded."""
    coder = BoxCoder()
    return {"predicted": coder.decode(deltas, anchors[None]),
            "target": coder.decode(targets, anchors[None])}


def _torchvision_giou_loss(a, b):
    """torchvision.ops.generalized_box_iou_loss's definition, in numpy (eps 1e-7)."""
    x1, y1, x2, y2 = a.T
    x1g, y1g, x2g, y2g = b.T
    xkis1, ykis1 = np.maximum(x1, x1g), np.maximum(y1, y1g)
    xkis2, ykis2 = np.minimum(x2, x2g), np.minimum(y2, y2g)
    intsct = np.where((ykis2 > ykis1) & (xkis2 > xkis1), (xkis2 - xkis1) * (ykis2 - ykis1), 0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsct
    iou = intsct / (union + 1e-7)
    area_c = (np.maximum(x2, x2g) - np.minimum(x1, x1g)) * (np.maximum(y2, y2g) - np.minimum(y1, y1g))
    return 1 - (iou - (area_c - union) / (area_c + 1e-7))


def test_giou_by_hand():
    # [0,0,2,2] and [1,1,3,3]: intersection 1, union 7, enclosing 9.
    loss = iou_loss([[0.0, 0, 2, 2]], [[1.0, 1, 3, 3]], "giou")
    assert float(loss[0]) == pytest.approx(1 - 1 / 7 + 2 / 9, rel=1e-6)
    # DIoU: centres (1, 1) and (2, 2), squared distance 2; enclosing diagonal squared 18.
    assert float(iou_loss([[0.0, 0, 2, 2]], [[1.0, 1, 3, 3]], "diou")[0]) == pytest.approx(
        1 - 1 / 7 + 2 / 18, rel=1e-6)
    # Disjoint boxes far apart: GIoU approaches 2.
    assert float(iou_loss([[0.0, 0, 1, 1]], [[1000.0, 1000, 1001, 1001]], "giou")[0]) > 1.99


box = st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), st.floats(0, 1e3),
                st.floats(0, 1e3)).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])


@settings(max_examples=200, deadline=None)
@given(a=box, b=box)
def test_iou_losses_range_symmetry_and_identity(a, b):
    pair = np.array([a, b], np.float32)
    for kind in IOU_LOSSES:
        ab = float(iou_loss(pair[:1], pair[1:], kind)[0])
        ba = float(iou_loss(pair[1:], pair[:1], kind)[0])
        assert np.isfinite(ab) and -1e-5 <= ab <= (2.0 if kind != "ciou" else 3.0) + 1e-5
        # Symmetric up to float32 rounding, which decides the ratios of sub-pixel geometry far
        # from the origin (hypothesis found [256, 0, 256, 0] against [256, 0, 256.0003, 0]).
        enclosing = np.hypot(*(np.maximum(pair[:, 2:], pair[:, :2]).max(axis=0)
                               - pair[:, :2].min(axis=0)))
        if enclosing > 1.0:
            assert ab == pytest.approx(ba, abs=1e-4)
        if (pair[0, 2] - pair[0, 0]) * (pair[0, 3] - pair[0, 1]) > 1e-2:
            assert float(iou_loss(pair[:1], pair[:1], kind)[0]) == pytest.approx(0.0, abs=1e-4)


@settings(max_examples=100, deadline=None)
@given(a=box, b=box)
def test_giou_is_torchvisions(a, b):
    pair = np.array([a, b], np.float64)
    # Boxes of real size: on 1e-12-wide ones float32 and float64 disagree on the area, not
    # on the definition.
    assume(np.all(pair[:, 2:] - pair[:, :2] > 1e-2))
    expected = _torchvision_giou_loss(pair[:1], pair[1:])[0]
    assert float(iou_loss(pair[:1], pair[1:], "giou")[0]) == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("kind", IOU_LOSSES)
def test_iou_loss_gradients_stay_finite_at_extremes(kind):
    anchors = tf.constant([[0.0, 0, 32, 32], [10, 10, 10, 10], [0, 0, 1e4, 1e4]])
    deltas = tf.Variable([[[1e6, -1e6, 1e3, -1e3], [0.0, 0, 0, 0], [-50, 50, 80, -80]]])
    targets = tf.constant([[[0.1, -0.2, 0.3, 0.0], [0.0, 0, 0, 0], [0.0, 0, 0, 0]]])
    states = tf.constant([[1, 1, 1]])
    with tf.GradientTape() as tape:
        loss = IoULoss(kind)(deltas, targets, states, _decoded(deltas, targets, anchors))
    gradient = tape.gradient(loss, deltas)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(gradient.numpy()))


def test_iou_loss_counts_positive_anchors_only_and_round_trips():
    anchors = tf.constant([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    deltas = tf.constant([[[0.0, 0, 0, 0], [0.5, 0, 0, 0]]])
    targets = tf.zeros([1, 2, 4])
    # Only the first (exact) anchor is positive: loss 0; the second is negative.
    decoded = _decoded(deltas, targets, anchors)
    assert float(IoULoss("giou")(deltas, targets, tf.constant([[1, 0]]), decoded)) == \
        pytest.approx(0.0, abs=1e-6)
    shifted = float(IoULoss("giou")(deltas, targets, tf.constant([[0, 1]]), decoded))
    # Shifted by half its width: intersection 50 of union 150, enclosing 150.
    assert shifted == pytest.approx(1 - 1 / 3, rel=1e-5)
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(IoULoss("ciou")))
    assert again.get_config() == {"kind": "ciou"}
    # A compile config saved when the loss held the coder's weights still loads.
    assert IoULoss.from_config({"kind": "diou", "box_weights": [1, 1, 1, 1]}).kind == "diou"


@pytest.mark.slow
@pytest.mark.parametrize("kind", IOU_LOSSES)
def test_each_iou_loss_trains_through_fit(kind, tiny_retinanet):
    from conftest import make_squares

    keras.utils.set_random_seed(0)
    images, boxes, classes = make_squares(num_images=8)
    model = tiny_retinanet()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), box_loss=IoULoss(kind))
    history = model.fit(images, {"boxes": boxes, "classes": classes}, batch_size=4, epochs=8,
                        verbose=0)
    losses = history.history["box_loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# --------------------------------------------------------------------- quality focal loss

from retinanet.losses import QualityFocalLoss  # noqa: E402


def test_quality_focal_loss_by_hand():
    # One positive anchor of class 1 with quality 0.6, two classes; one negative anchor;
    # one ignored anchor (no loss whatever its logits).
    logits = tf.constant([[[0.0, 1.0], [-1.0, 2.0], [5.0, 5.0]]])
    loss = QualityFocalLoss(beta=2.0)(logits, tf.constant([[1, 0, 0]]),
                                      tf.constant([[1, 0, -1]]), tf.constant([[0.6, 0, 0]]))

    def term(logit, target):
        p = 1 / (1 + np.exp(-logit))
        return -(target * np.log(p) + (1 - target) * np.log(1 - p)) * abs(target - p) ** 2

    expected = term(0.0, 0) + term(1.0, 0.6) + term(-1.0, 0) + term(2.0, 0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # one positive: divided by 1


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 0.99), st.floats(0.0, 1.0))
def test_quality_focal_loss_is_least_where_the_score_is_the_quality(quality, other):
    """The loss of a positive anchor's own class is 0 exactly when sigmoid(logit) = q, and
    grows as the score moves away from q on either side."""
    loss = QualityFocalLoss()

    def at(score):
        logit = np.log(score / (1 - score))
        return float(loss(tf.constant([[[logit]]], tf.float32), tf.constant([[0]]),
                          tf.constant([[1]]), tf.constant([[quality]], tf.float32)))

    assert at(quality) == pytest.approx(0.0, abs=1e-6)
    away = min(max(other, 0.001), 0.999)
    if abs(away - quality) > 0.05:
        assert at(away) > at(quality)
        closer = (away + quality) / 2
        assert at(away) >= at(closer) - 1e-7


def test_quality_focal_loss_needs_the_quality():
    with pytest.raises(ValueError, match="quality"):
        QualityFocalLoss()(tf.zeros([1, 2, 3]), tf.zeros([1, 2], tf.int32),
                           tf.zeros([1, 2], tf.int32))
    with pytest.raises(ValueError, match="beta"):
        QualityFocalLoss(beta=-1)
