"""Non-maximum suppression: hard, Gaussian soft-NMS and class-aware."""

import tensorflow as tf

from retinanet.ops._checks import (check_boxes, check_max_output_size, check_range,
                                   check_rank, check_same_length, static_number, to_tensor)

def _nms_inputs(boxes, scores, max_output_size, score_threshold):
    boxes = to_tensor(boxes, "boxes", tf.float32)
    scores = to_tensor(scores, "scores", tf.float32)
    check_boxes(boxes, "boxes", ranks=(2,))
    check_rank(scores, "scores", 1, "[N]")
    check_same_length(scores, "scores", boxes)
    max_output_size = check_max_output_size(max_output_size)
    if score_threshold is None:
        score_threshold = float("-inf")
    else:
        check_range(score_threshold, "score_threshold", 0.0)
    return boxes, scores, max_output_size, score_threshold


def _hard_nms(boxes, scores, iou_threshold, max_output_size, score_threshold):
    """`tf.image.non_max_suppression`, written as the padded kernel plus its valid count.

    The same kernel and result; the explicit count is what lets the TFLite converter keep the
    number of kept boxes (it otherwise returns `max_output_size` indices padded with 0).
    """
    indices, num_valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes,
        scores=scores,
        max_output_size=max_output_size,
        iou_threshold=tf.cast(iou_threshold, tf.float32),
        score_threshold=tf.cast(score_threshold, tf.float32),
        pad_to_max_output_size=True,
    )
    return indices[:num_valid]


def _nms_with_scores(boxes, scores, iou_threshold, max_output_size, score_threshold, sigma):
    # TF's kernel decays by exp(-0.5 * iou**2 / s); Bodla et al. (and mmcv, detectron2) use
    # exp(-iou**2 / sigma), so s = sigma / 2. With s > 0 TF ignores iou_threshold.
    return tf.image.non_max_suppression_with_scores(
        boxes,
        scores,
        max_output_size=max_output_size,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        soft_nms_sigma=0.5 * tf.cast(sigma, tf.float32),
    )


def nms(boxes, scores, iou_threshold=0.5, max_output_size=100, score_threshold=None):
    """Greedy non-maximum suppression.

    Repeatedly keeps the highest-scoring remaining box and removes every remaining box whose
    IoU with it is greater than `iou_threshold` (IoU equal to the threshold survives).
    Equal scores are taken in index order. Zero-area boxes never suppress anything. (Unlike
    `box_iou`, TF's kernel treats an inverted box, x2 < x1, as the box between its corners.)

    Args:
        boxes: float Tensor `[N, 4]`, xyxy, absolute pixels (any units work: IoU is
            scale-free).
        scores: float Tensor `[N]`.
        iou_threshold: float in [0, 1].
        max_output_size: int >= 0, the most indices returned.
        score_threshold: float >= 0 or None; boxes with `score <= score_threshold` are
            dropped first. None keeps every box.

    Returns:
        int32 Tensor `[K]`, K <= max_output_size: indices into `boxes` of the kept boxes,
        highest score first.

    Raises:
        ValueError: bad shapes or lengths, or thresholds out of range.
    """
    check_range(iou_threshold, "iou_threshold", 0.0, 1.0)
    boxes, scores, max_output_size, score_threshold = _nms_inputs(
        boxes, scores, max_output_size, score_threshold
    )
    # TF documents [y1, x1, y2, x2], but IoU is unchanged by swapping the x and y axes, so xyxy
    # boxes go in as they are.
    return _hard_nms(boxes, scores, iou_threshold, max_output_size, score_threshold)


def soft_nms(boxes, scores, sigma=0.5, max_output_size=100, score_threshold=0.001):
    """Gaussian soft-NMS (Bodla et al., 2017, https://arxiv.org/abs/1704.04503).

    Repeatedly keeps the box with the highest current score and multiplies the score of every
    remaining box b by `exp(-IoU(kept, b)**2 / sigma)`; boxes whose score falls to
    `score_threshold` or below are dropped. Nothing is removed by an IoU cut-off.

    Args:
        boxes: float Tensor `[N, 4]`, xyxy, absolute pixels.
        scores: float Tensor `[N]`.
        sigma: float > 0, the Gaussian's width (the paper's sigma; TF's `soft_nms_sigma`
            is sigma / 2).
        max_output_size: int >= 0, the most indices returned.
        score_threshold: float >= 0 or None (keep every box).

    Returns:
        `(indices, new_scores)`: int32 `[K]` indices into `boxes` and float32 `[K]`
        decayed scores, K <= max_output_size, highest decayed score first.

    Raises:
        ValueError: bad shapes or lengths, `sigma` <= 0, or thresholds out of range.
    """
    check_range(sigma, "sigma", 0.0, low_inclusive=False)
    boxes, scores, max_output_size, score_threshold = _nms_inputs(
        boxes, scores, max_output_size, score_threshold
    )
    return _nms_with_scores(boxes, scores, 1.0, max_output_size, score_threshold, sigma)


def batched_nms(
    boxes,
    scores,
    classes,
    iou_threshold=0.5,
    max_output_size=100,
    score_threshold=None,
    soft_nms_sigma=0.0,
    return_scores=False,
):
    """Class-aware NMS: boxes of different classes never suppress each other.

    Gives the same result as running `nms` (or `soft_nms`) on each class separately and
    merging by score, in a single NMS call (up to float32 rounding of the shifted coordinates
    for IoUs within about 1e-6 of the threshold).

    Args:
        boxes: float Tensor `[N, 4]`, xyxy, absolute pixels.
        scores: float Tensor `[N]`.
        classes: int Tensor `[N]`, any integer labels (-1 padding included).
        iou_threshold: float in [0, 1]; used by hard NMS only (ignored when
            `soft_nms_sigma > 0`, where the Gaussian decay replaces the cut-off).
        max_output_size: int >= 0, the most indices returned over all classes.
        score_threshold: float >= 0 or None; boxes with (decayed) `score <= score_threshold`
            are dropped. None keeps every box.
        soft_nms_sigma: float >= 0. 0 is hard NMS; > 0 is Gaussian soft-NMS with this
            sigma, as in `soft_nms`.
        return_scores: also return the kept boxes' scores.

    Returns:
        int32 Tensor `[K]` of indices into `boxes`, highest (decayed) score first; with
        `return_scores=True`, `(indices, kept_scores)` where `kept_scores` is float32
        `[K]` (the decayed scores under soft-NMS, `scores[indices]` otherwise).

    Raises:
        ValueError: bad shapes or lengths, or thresholds out of range.
    """
    check_range(iou_threshold, "iou_threshold", 0.0, 1.0)
    check_range(soft_nms_sigma, "soft_nms_sigma", 0.0)
    boxes, scores, max_output_size, score_threshold = _nms_inputs(
        boxes, scores, max_output_size, score_threshold
    )
    classes = to_tensor(classes, "classes")
    check_rank(classes, "classes", 1, "[N]")
    check_same_length(classes, "classes", boxes)

    # Shift each class's boxes into its own region, `span` apart, so boxes of different
    # classes cannot overlap and one NMS call serves all classes (torchvision's trick; a loop
    # over classes would be one kernel launch per class and awkward in a graph). Subtracting
    # the minimum first keeps coordinates small, and so float32 rounding small.
    has_boxes = tf.size(boxes) > 0
    min_coordinate = tf.where(has_boxes, tf.reduce_min(boxes), 0.0)
    max_coordinate = tf.where(has_boxes, tf.reduce_max(boxes), 0.0)
    span = max_coordinate - min_coordinate + 1.0
    offsets = tf.cast(classes, tf.float32)[:, None] * span
    shifted_boxes = boxes - min_coordinate + offsets

    if static_number(soft_nms_sigma, "soft_nms_sigma") == 0.0:
        indices = _hard_nms(shifted_boxes, scores, iou_threshold, max_output_size, score_threshold)
        kept_scores = tf.gather(scores, indices)
    else:
        # A sigma only known at run time may be 0: TF's kernel then does hard NMS with the
        # IoU cut-off, the same result as the branch above.
        indices, kept_scores = _nms_with_scores(
            shifted_boxes, scores, iou_threshold, max_output_size, score_threshold, soft_nms_sigma
        )
    if return_scores:
        return indices, kept_scores
    return indices
