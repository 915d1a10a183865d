"""Hypothesis fuzzing: random, extreme and empty boxes never give NaN or crash."""

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retinanet import AnchorGenerator, DetectionPostprocessor, LabelEncoder, ops

# Coordinates from tiny to huge, so aspect ratios reach 1e6 and beyond.
coordinate = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


def _boxes(max_size=8):
    return hnp.arrays(
        np.float32, st.tuples(st.integers(0, max_size), st.just(4)), elements=coordinate
    ).map(_ordered)


def _ordered(raw):
    """Sorts each row into a valid (possibly zero-area) xyxy box."""
    x = np.sort(raw[:, [0, 2]], axis=1)
    y = np.sort(raw[:, [1, 3]], axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


@settings(max_examples=60, deadline=None)
@given(_boxes(), _boxes())
def test_box_iou_is_finite_and_in_range(boxes1, boxes2):
    iou = ops.box_iou(boxes1, boxes2).numpy()
    assert iou.shape == (len(boxes1), len(boxes2))
    assert np.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1 + 1e-6).all()


@settings(max_examples=60, deadline=None)
@given(_boxes(), _boxes())
def test_box_coder_never_gives_nan(boxes, anchors):
    count = min(len(boxes), len(anchors))
    boxes, anchors = boxes[:count], anchors[:count]
    deltas = ops.encode_boxes(boxes, anchors).numpy()
    assert np.isfinite(deltas).all()
    decoded = ops.decode_boxes(deltas, anchors).numpy()
    assert np.isfinite(decoded).all()


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (5, 4), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_decode_of_extreme_deltas_is_finite(deltas):
    anchors = np.tile(np.array([[0, 0, 32, 64]], np.float32), (5, 1))
    assert np.isfinite(ops.decode_boxes(deltas, anchors).numpy()).all()


@settings(max_examples=30, deadline=None)
@given(_boxes(max_size=6), st.integers(1, 2))
def test_label_encoder_on_random_boxes(boxes, batch_size):
    encoder = LabelEncoder(AnchorGenerator(min_level=3, max_level=5))
    classes = np.arange(len(boxes), dtype=np.int32) % 4
    batch_boxes = np.tile(boxes[None], (batch_size, 1, 1))
    batch_classes = np.tile(classes[None], (batch_size, 1))
    targets = encoder(batch_boxes, batch_classes, 128, 96)
    assert np.isfinite(targets["box_targets"].numpy()).all()
    assert set(np.unique(targets["anchor_states"].numpy())) <= {-1, 0, 1}


@settings(max_examples=25, deadline=None)
@given(
    st.floats(-1e4, 1e4, width=32),
    st.floats(-1e4, 1e4, width=32),
    st.integers(0, 2**31 - 1),
)
def test_postprocessor_on_extreme_outputs(logit_scale, delta_scale, seed):
    generator = AnchorGenerator(min_level=3, max_level=4)
    postprocessor = DetectionPostprocessor(generator, score_threshold=0.0, max_detections=20)
    num_anchors = generator.num_anchors(64, 64)
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((2, num_anchors, 3)) * logit_scale).astype(np.float32)
    deltas = (rng.standard_normal((2, num_anchors, 4)) * delta_scale).astype(np.float32)
    detections = postprocessor(
        tf.constant(logits), tf.constant(deltas), anchor_image_size=(64, 64), clip_size=(50, 60)
    )
    boxes = detections["boxes"].numpy()
    assert np.isfinite(boxes).all() and np.isfinite(detections["scores"].numpy()).all()
    assert boxes[..., [0, 2]].max() <= 60 and boxes[..., [1, 3]].max() <= 50 and boxes.min() >= 0
    classes = detections["classes"].numpy()
    counts = detections["num_detections"].numpy()
    for image, count in enumerate(counts):
        assert ((classes[image, :count] >= 0) & (classes[image, :count] < 3)).all()
        assert (classes[image, count:] == -1).all()
