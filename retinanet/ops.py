"""Pure box math: formats, pairwise IoU, the box coder and NMS.

Boxes are ``xyxy`` in absolute pixels with continuous coordinates (width = x2 - x1, no +1)
unless an argument says otherwise. Every function accepts numpy arrays or tensors, returns
tensors, has no state and works eagerly and inside a ``tf.function``.
"""

import math

import numpy as np
import tensorflow as tf
from keras.utils import bounding_boxes as keras_bounding_boxes

__all__ = [
    "BBOX_XFORM_CLIP",
    "BOX_FORMATS",
    "batched_nms",
    "box_iou",
    "convert_format",
    "decode_boxes",
    "encode_boxes",
    "nms",
    "soft_nms",
]

# The format names of `keras.utils.bounding_boxes.convert_format`.
BOX_FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)

# Largest log-scale delta decode applies: a box grows at most 1000/16 = 62.5 times its anchor.
# Without it exp() of an untrained head's output overflows to inf (detectron2's value).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# Decoding clamps |t_x| and |t_y| here too: no real box is a million anchor widths away, and
# the clamp keeps absurd network outputs from overflowing to inf.
BBOX_SHIFT_CLIP = 1e6

# Widths and heights are clamped to this before encode divides and takes logs, so degenerate
# (zero-size) boxes and anchors encode to finite deltas.
_MIN_BOX_SIZE = 1e-6


# ----------------------------------------------------------------------------- validation


def _to_tensor(value, name, dtype=None):
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be convertible to a tensor, got {value!r}.") from error
    if dtype is not None:
        tensor = tf.cast(tensor, dtype)
    return tensor


def _check_boxes(boxes, name, ranks=None):
    """Checks a `[..., 4]` box tensor's static rank and last dimension."""
    rank = boxes.shape.rank
    if rank is None:
        return
    if ranks is not None and rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"`{name}` must have rank {expected} ([N, 4] or [B, N, 4]), got shape {boxes.shape}."
        )
    if rank == 0:
        raise ValueError(f"`{name}` must have shape [..., 4], got a scalar.")
    last = boxes.shape[-1]
    if last is not None and last != 4:
        raise ValueError(f"`{name}` must have a last dimension of 4, got shape {boxes.shape}.")


def _check_rank(tensor, name, rank, shape_text):
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"`{name}` must have shape {shape_text}, got shape {tensor.shape}.")


def _check_same_length(tensor, name, boxes):
    """Static check that `tensor` has one entry per box."""
    length, num_boxes = tensor.shape[0], boxes.shape[0]
    if length is not None and num_boxes is not None and length != num_boxes:
        raise ValueError(
            f"`{name}` must have one entry per box: got {length} for {num_boxes} boxes."
        )


def _static_number(value, name):
    """The Python float of a scalar argument, or None when only known at run time."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = tf.get_static_value(value)
        if value is None:
            return None
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a scalar number, got {value!r}.") from error


def _check_range(value, name, low, high=None, low_inclusive=True):
    number = _static_number(value, name)
    if number is None:
        return
    above_low = number >= low if low_inclusive else number > low
    # Written as a negation so that NaN fails too.
    if not (above_low and (high is None or number <= high)):
        if high is not None:
            expected = f"in [{low}, {high}]"
        else:
            expected = f"{'>=' if low_inclusive else '>'} {low}"
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")


def _is_scalar(value):
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.shape.rank == 0
    return np.ndim(value) == 0


def _check_max_output_size(max_output_size):
    """The size as a Python int when static (TF wants an integer), else an int32 tensor."""
    number = _static_number(max_output_size, "max_output_size")
    if number is None:
        return tf.cast(max_output_size, tf.int32)
    if not (number >= 0 and number.is_integer()):
        raise ValueError(
            f"`max_output_size` must be a non-negative integer, got {max_output_size!r}."
        )
    return int(number)


def _check_format(name, argument):
    if not isinstance(name, str) or name.lower() not in BOX_FORMATS:
        raise ValueError(
            f"`{argument}` must be one of {', '.join(BOX_FORMATS)}; got {name!r}."
        )
    return name.lower()


def _check_weights(weights):
    try:
        values = np.asarray(weights, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`weights` must be 4 positive numbers, got {weights!r}.") from error
    if values.shape != (4,) or not np.all(values > 0):
        raise ValueError(f"`weights` must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}.")
    return tf.constant(values)


def _check_broadcastable(a, a_name, b, b_name):
    try:
        tf.broadcast_static_shape(a.shape, b.shape)
    except ValueError as error:
        raise ValueError(
            f"`{a_name}` {a.shape} and `{b_name}` {b.shape} must broadcast against each other."
        ) from error


# ----------------------------------------------------------------------------- formats


def convert_format(boxes, source, target, height=None, width=None):
    """Converts boxes between Keras's box formats.

    Formats (case-insensitive), all in absolute pixels except the ``rel_*`` forms, which are
    fractions of the image size:

    - ``xyxy``: (x1, y1, x2, y2); ``yxyx``: (y1, x1, y2, x2); ``xywh``: (x1, y1, w, h);
    - ``center_xywh``: (cx, cy, w, h); ``center_yxhw``: (cy, cx, h, w);
    - ``rel_xyxy``, ``rel_yxyx``, ``rel_xywh``, ``rel_center_xywh`` (the YOLO label format).

    Args:
        boxes: float or int array/Tensor ``[..., 4]`` in the ``source`` format.
        source: the format of ``boxes``, one of ``BOX_FORMATS``.
        target: the format to return, one of ``BOX_FORMATS``.
        height: image height in pixels; required when exactly one of ``source`` and
            ``target`` is relative, unused otherwise. A scalar, or a tensor that broadcasts
            against ``boxes[..., :1]`` (``[B, 1, 1]`` for per-image sizes of ``[B, N, 4]``).
        width: image width in pixels, as ``height``.

    Returns:
        Tensor ``[..., 4]`` in the ``target`` format, with the float dtype of ``boxes``
        (integer boxes become float32).

    Raises:
        ValueError: unknown format name, last dimension not 4, or ``height``/``width``
            missing or not positive for a relative/absolute conversion.
    """
    source = _check_format(source, "source")
    target = _check_format(target, "target")
    boxes = _to_tensor(boxes, "boxes")
    _check_boxes(boxes, "boxes")
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)

    if source.startswith("rel_") != target.startswith("rel_"):
        for value, name in ((height, "height"), (width, "width")):
            if value is None:
                raise ValueError(
                    f"`{name}` is required to convert between relative and absolute formats "
                    f"(source={source!r}, target={target!r})."
                )
            if _is_scalar(value):
                _check_range(value, name, 0.0, low_inclusive=False)
    else:
        # Relative-to-relative needs no image size (the same maths as absolute-to-absolute),
        # but Keras demands one for any rel_ name, so convert as the absolute formats.
        source = source.removeprefix("rel_")
        target = target.removeprefix("rel_")
        height = width = None

    # Keras casts to float32 unless told otherwise; keep float64/float16 inputs as they are.
    return keras_bounding_boxes.convert_format(
        boxes, source=source, target=target, height=height, width=width, dtype=boxes.dtype.name
    )


# ----------------------------------------------------------------------------- IoU


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union.

    Args:
        boxes1: float Tensor ``[N, 4]`` or ``[B, N, 4]``, xyxy, absolute pixels.
        boxes2: float Tensor ``[M, 4]`` or ``[B, M, 4]``, xyxy, absolute pixels.
            Unbatched boxes pair with every image of a batched other argument.

    Returns:
        float32 Tensor ``[N, M]`` (both unbatched) or ``[B, N, M]``, in [0, 1].
        Boxes of zero area, inverted boxes (x2 < x1 or y2 < y1) and padding rows (all -1)
        give 0 against everything, never NaN. Boxes off the image (negative coordinates)
        are ordinary boxes. Computed in float32 whatever the input dtype.

    Raises:
        ValueError: rank other than 2 or 3, last dimension not 4, or batch sizes differ.
    """
    boxes1 = _to_tensor(boxes1, "boxes1", tf.float32)
    boxes2 = _to_tensor(boxes2, "boxes2", tf.float32)
    _check_boxes(boxes1, "boxes1", ranks=(2, 3))
    _check_boxes(boxes2, "boxes2", ranks=(2, 3))
    if boxes1.shape.rank == 3 and boxes2.shape.rank == 3:
        batch1, batch2 = boxes1.shape[0], boxes2.shape[0]
        if batch1 is not None and batch2 is not None and batch1 != batch2:
            raise ValueError(
                f"`boxes1` and `boxes2` must have the same batch size, got {batch1} and {batch2}."
            )

    # [..., N, 1, 4] against [..., 1, M, 4] broadcasts to [..., N, M].
    b1 = boxes1[..., :, None, :]
    b2 = boxes2[..., None, :, :]
    inter_w = tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0])
    inter_h = tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1])
    intersection = tf.maximum(inter_w, 0.0) * tf.maximum(inter_h, 0.0)
    union = _box_area(b1) + _box_area(b2) - intersection
    # Only zero-area pairs have union 0, and their IoU is defined as 0. No epsilon in the
    # denominator, so IoU(b, b) is exactly 1.
    return tf.math.divide_no_nan(intersection, union)


def _box_area(boxes):
    """Area of xyxy boxes ``[..., 4]`` -> ``[...]``; inverted boxes have area 0."""
    widths = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    heights = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return widths * heights


# ----------------------------------------------------------------------------- box coder


def _centers_and_sizes(boxes):
    """xyxy ``[..., 4]`` -> (cx, cy, w, h), each ``[...]``."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Encodes boxes as regression targets relative to anchors (the R-CNN parameterisation).

    With (cx, cy, w, h) the centres and sizes of a box g and its anchor p::

        t_x = wx * (g_cx - p_cx) / p_w        t_w = ww * log(g_w / p_w)
        t_y = wy * (g_cy - p_cy) / p_h        t_h = wh * log(g_h / p_h)

    Widths and heights are clamped to 1e-6 first, so zero-size boxes or anchors give large
    but finite deltas.

    Args:
        boxes: float Tensor ``[..., 4]``, xyxy, absolute pixels (ground truth).
        anchors: float Tensor ``[..., 4]``, xyxy, absolute pixels; broadcasts against ``boxes``.
        weights: 4 positive floats (wx, wy, ww, wh).

    Returns:
        float32 Tensor ``[..., 4]`` of deltas (t_x, t_y, t_w, t_h), the broadcast shape.

    Raises:
        ValueError: last dimension not 4, shapes that do not broadcast, or bad ``weights``.
    """
    boxes = _to_tensor(boxes, "boxes", tf.float32)
    anchors = _to_tensor(anchors, "anchors", tf.float32)
    _check_boxes(boxes, "boxes")
    _check_boxes(anchors, "anchors")
    _check_broadcastable(boxes, "boxes", anchors, "anchors")
    weights = _check_weights(weights)

    box_cx, box_cy, box_w, box_h = _centers_and_sizes(boxes)
    anchor_cx, anchor_cy, anchor_w, anchor_h = _centers_and_sizes(anchors)
    box_w = tf.maximum(box_w, _MIN_BOX_SIZE)
    box_h = tf.maximum(box_h, _MIN_BOX_SIZE)
    anchor_w = tf.maximum(anchor_w, _MIN_BOX_SIZE)
    anchor_h = tf.maximum(anchor_h, _MIN_BOX_SIZE)
    deltas = tf.stack(
        [
            (box_cx - anchor_cx) / anchor_w,
            (box_cy - anchor_cy) / anchor_h,
            tf.math.log(box_w / anchor_w),
            tf.math.log(box_h / anchor_h),
        ],
        axis=-1,
    )
    return deltas * weights


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Applies regression deltas to anchors; the inverse of `encode_boxes`.

    The deltas are divided by ``weights``, then t_w and t_h are clamped from above at
    ``BBOX_XFORM_CLIP`` before ``exp``, and t_x, t_y to ``[-BBOX_SHIFT_CLIP, BBOX_SHIFT_CLIP]``,
    so any finite deltas on reasonable anchors give finite boxes.

    Args:
        deltas: float Tensor ``[..., 4]`` (t_x, t_y, t_w, t_h), as `encode_boxes` returns.
        anchors: float Tensor ``[..., 4]``, xyxy, absolute pixels; broadcasts against ``deltas``.
        weights: the 4 positive floats (wx, wy, ww, wh) the deltas were encoded with.

    Returns:
        float32 Tensor ``[..., 4]``, xyxy, absolute pixels (not clipped to any image).

    Raises:
        ValueError: last dimension not 4, shapes that do not broadcast, or bad ``weights``.
    """
    deltas = _to_tensor(deltas, "deltas", tf.float32)
    anchors = _to_tensor(anchors, "anchors", tf.float32)
    _check_boxes(deltas, "deltas")
    _check_boxes(anchors, "anchors")
    _check_broadcastable(deltas, "deltas", anchors, "anchors")
    deltas = deltas / _check_weights(weights)

    anchor_cx, anchor_cy, anchor_w, anchor_h = _centers_and_sizes(anchors)
    shifts = tf.clip_by_value(deltas[..., :2], -BBOX_SHIFT_CLIP, BBOX_SHIFT_CLIP)
    center_x = shifts[..., 0] * anchor_w + anchor_cx
    center_y = shifts[..., 1] * anchor_h + anchor_cy
    half_w = 0.5 * tf.exp(tf.minimum(deltas[..., 2], BBOX_XFORM_CLIP)) * anchor_w
    half_h = 0.5 * tf.exp(tf.minimum(deltas[..., 3], BBOX_XFORM_CLIP)) * anchor_h
    return tf.stack(
        [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1
    )


# ----------------------------------------------------------------------------- NMS


def _nms_inputs(boxes, scores, max_output_size, score_threshold):
    boxes = _to_tensor(boxes, "boxes", tf.float32)
    scores = _to_tensor(scores, "scores", tf.float32)
    _check_boxes(boxes, "boxes", ranks=(2,))
    _check_rank(scores, "scores", 1, "[N]")
    _check_same_length(scores, "scores", boxes)
    max_output_size = _check_max_output_size(max_output_size)
    if score_threshold is None:
        score_threshold = float("-inf")
    else:
        _check_range(score_threshold, "score_threshold", 0.0)
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
    IoU with it is greater than ``iou_threshold`` (IoU equal to the threshold survives).
    Equal scores are taken in index order. Zero-area boxes never suppress anything. (Unlike
    `box_iou`, TF's kernel treats an inverted box, x2 < x1, as the box between its corners.)

    Args:
        boxes: float Tensor ``[N, 4]``, xyxy, absolute pixels (any units work: IoU is
            scale-free).
        scores: float Tensor ``[N]``.
        iou_threshold: float in [0, 1].
        max_output_size: int >= 0, the most indices returned.
        score_threshold: float >= 0 or None; boxes with ``score <= score_threshold`` are
            dropped first. None keeps every box.

    Returns:
        int32 Tensor ``[K]``, K <= max_output_size: indices into ``boxes`` of the kept boxes,
        highest score first.

    Raises:
        ValueError: bad shapes or lengths, or thresholds out of range.
    """
    _check_range(iou_threshold, "iou_threshold", 0.0, 1.0)
    boxes, scores, max_output_size, score_threshold = _nms_inputs(
        boxes, scores, max_output_size, score_threshold
    )
    # TF documents [y1, x1, y2, x2], but IoU is unchanged by swapping the x and y axes, so xyxy
    # boxes go in as they are.
    return _hard_nms(boxes, scores, iou_threshold, max_output_size, score_threshold)


def soft_nms(boxes, scores, sigma=0.5, max_output_size=100, score_threshold=0.001):
    """Gaussian soft-NMS (Bodla et al., 2017, https://arxiv.org/abs/1704.04503).

    Repeatedly keeps the box with the highest current score and multiplies the score of every
    remaining box b by ``exp(-IoU(kept, b)**2 / sigma)``; boxes whose score falls to
    ``score_threshold`` or below are dropped. Nothing is removed by an IoU cut-off.

    Args:
        boxes: float Tensor ``[N, 4]``, xyxy, absolute pixels.
        scores: float Tensor ``[N]``.
        sigma: float > 0, the Gaussian's width (the paper's sigma; TF's ``soft_nms_sigma``
            is sigma / 2).
        max_output_size: int >= 0, the most indices returned.
        score_threshold: float >= 0 or None (keep every box).

    Returns:
        ``(indices, new_scores)``: int32 ``[K]`` indices into ``boxes`` and float32 ``[K]``
        decayed scores, K <= max_output_size, highest decayed score first.

    Raises:
        ValueError: bad shapes or lengths, ``sigma`` <= 0, or thresholds out of range.
    """
    _check_range(sigma, "sigma", 0.0, low_inclusive=False)
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
        boxes: float Tensor ``[N, 4]``, xyxy, absolute pixels.
        scores: float Tensor ``[N]``.
        classes: int Tensor ``[N]``, any integer labels (-1 padding included).
        iou_threshold: float in [0, 1]; used by hard NMS only (ignored when
            ``soft_nms_sigma > 0``, where the Gaussian decay replaces the cut-off).
        max_output_size: int >= 0, the most indices returned over all classes.
        score_threshold: float >= 0 or None; boxes with (decayed) ``score <= score_threshold``
            are dropped. None keeps every box.
        soft_nms_sigma: float >= 0. 0 is hard NMS; > 0 is Gaussian soft-NMS with this
            sigma, as in `soft_nms`.
        return_scores: also return the kept boxes' scores.

    Returns:
        int32 Tensor ``[K]`` of indices into ``boxes``, highest (decayed) score first; with
        ``return_scores=True``, ``(indices, kept_scores)`` where ``kept_scores`` is float32
        ``[K]`` (the decayed scores under soft-NMS, ``scores[indices]`` otherwise).

    Raises:
        ValueError: bad shapes or lengths, or thresholds out of range.
    """
    _check_range(iou_threshold, "iou_threshold", 0.0, 1.0)
    _check_range(soft_nms_sigma, "soft_nms_sigma", 0.0)
    boxes, scores, max_output_size, score_threshold = _nms_inputs(
        boxes, scores, max_output_size, score_threshold
    )
    classes = _to_tensor(classes, "classes")
    _check_rank(classes, "classes", 1, "[N]")
    _check_same_length(classes, "classes", boxes)

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

    if _static_number(soft_nms_sigma, "soft_nms_sigma") == 0.0:
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
