"""The box coder: boxes to regression deltas against anchors, and back."""

import math

import tensorflow as tf

from retinanet.ops._checks import check_boxes, check_broadcastable, check_weights, to_tensor

# Largest log-scale delta decode applies: a box grows at most 1000/16 = 62.5 times its anchor.
# Without it exp() of an untrained head's output overflows to inf (detectron2's value).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# Decoding clamps |t_x| and |t_y| here too: no real box is a million anchor widths away, and
# the clamp keeps absurd network outputs from overflowing to inf.
BBOX_SHIFT_CLIP = 1e6

# Widths and heights are clamped to this before encode divides and takes logs, so degenerate
# (zero-size) boxes and anchors encode to finite deltas.
_MIN_BOX_SIZE = 1e-6


def _centers_and_sizes(boxes):
    """xyxy `[..., 4]` -> (cx, cy, w, h), each `[...]`."""
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
        boxes: float Tensor `[..., 4]`, xyxy, absolute pixels (ground truth).
        anchors: float Tensor `[..., 4]`, xyxy, absolute pixels; broadcasts against `boxes`.
        weights: 4 positive floats (wx, wy, ww, wh).

    Returns:
        float32 Tensor `[..., 4]` of deltas (t_x, t_y, t_w, t_h), the broadcast shape.

    Raises:
        ValueError: last dimension not 4, shapes that do not broadcast, or bad `weights`.
    """
    boxes = to_tensor(boxes, "boxes", tf.float32)
    anchors = to_tensor(anchors, "anchors", tf.float32)
    check_boxes(boxes, "boxes")
    check_boxes(anchors, "anchors")
    check_broadcastable(boxes, "boxes", anchors, "anchors")
    weights = check_weights(weights)

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

    The deltas are divided by `weights`, then t_w and t_h are clamped from above at
    `BBOX_XFORM_CLIP` before `exp`, and t_x, t_y to `[-BBOX_SHIFT_CLIP, BBOX_SHIFT_CLIP]`,
    so any finite deltas on reasonable anchors give finite boxes.

    Args:
        deltas: float Tensor `[..., 4]` (t_x, t_y, t_w, t_h), as `encode_boxes` returns.
        anchors: float Tensor `[..., 4]`, xyxy, absolute pixels; broadcasts against `deltas`.
        weights: the 4 positive floats (wx, wy, ww, wh) the deltas were encoded with.

    Returns:
        float32 Tensor `[..., 4]`, xyxy, absolute pixels (not clipped to any image).

    Raises:
        ValueError: last dimension not 4, shapes that do not broadcast, or bad `weights`.
    """
    deltas = to_tensor(deltas, "deltas", tf.float32)
    anchors = to_tensor(anchors, "anchors", tf.float32)
    check_boxes(deltas, "deltas")
    check_boxes(anchors, "anchors")
    check_broadcastable(deltas, "deltas", anchors, "anchors")
    deltas = deltas / check_weights(weights)

    anchor_cx, anchor_cy, anchor_w, anchor_h = _centers_and_sizes(anchors)
    shifts = tf.clip_by_value(deltas[..., :2], -BBOX_SHIFT_CLIP, BBOX_SHIFT_CLIP)
    center_x = shifts[..., 0] * anchor_w + anchor_cx
    center_y = shifts[..., 1] * anchor_h + anchor_cy
    half_w = 0.5 * tf.exp(tf.minimum(deltas[..., 2], BBOX_XFORM_CLIP)) * anchor_w
    half_h = 0.5 * tf.exp(tf.minimum(deltas[..., 3], BBOX_XFORM_CLIP)) * anchor_h
    return tf.stack(
        [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1
    )
