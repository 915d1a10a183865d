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
