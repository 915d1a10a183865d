"""Box formats and pairwise IoU.

Boxes are `xyxy` in absolute pixels with continuous coordinates (width = x2 - x1, no +1)
unless an argument says otherwise.
"""

import tensorflow as tf
from keras.utils import bounding_boxes as keras_bounding_boxes

from retinanet.ops._checks import check_boxes, check_range, is_scalar, to_tensor

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


def _check_format(name, argument):
    if not isinstance(name, str) or name.lower() not in BOX_FORMATS:
        raise ValueError(
            f"`{argument}` must be one of {', '.join(BOX_FORMATS)}; got {name!r}."
        )
    return name.lower()




def convert_format(boxes, source, target, height=None, width=None):
    """Converts boxes between Keras's box formats.

    Formats (case-insensitive), all in absolute pixels except the `rel_*` forms, which are
    fractions of the image size:

    - `xyxy`: (x1, y1, x2, y2); `yxyx`: (y1, x1, y2, x2); `xywh`: (x1, y1, w, h);
    - `center_xywh`: (cx, cy, w, h); `center_yxhw`: (cy, cx, h, w);
    - `rel_xyxy`, `rel_yxyx`, `rel_xywh`, `rel_center_xywh` (the YOLO label format).

    Args:
        boxes: float or int array/Tensor `[..., 4]` in the `source` format.
        source: the format of `boxes`, one of `BOX_FORMATS`.
        target: the format to return, one of `BOX_FORMATS`.
        height: image height in pixels; required when exactly one of `source` and
            `target` is relative, unused otherwise. A scalar, or a tensor that broadcasts
            against `boxes[..., :1]` (`[B, 1, 1]` for per-image sizes of `[B, N, 4]`).
        width: image width in pixels, as `height`.

    Returns:
        Tensor `[..., 4]` in the `target` format, with the float dtype of `boxes`
        (integer boxes become float32).

    Raises:
        ValueError: unknown format name, last dimension not 4, or `height`/`width`
            missing or not positive for a relative/absolute conversion.
    """
    source = _check_format(source, "source")
    target = _check_format(target, "target")
    boxes = to_tensor(boxes, "boxes")
    check_boxes(boxes, "boxes")
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)

    if source.startswith("rel_") != target.startswith("rel_"):
        for value, name in ((height, "height"), (width, "width")):
            if value is None:
                raise ValueError(
                    f"`{name}` is required to convert between relative and absolute formats "
                    f"(source={source!r}, target={target!r})."
                )
            if is_scalar(value):
                check_range(value, name, 0.0, low_inclusive=False)
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


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union.

    Args:
        boxes1: float Tensor `[N, 4]` or `[B, N, 4]`, xyxy, absolute pixels.
        boxes2: float Tensor `[M, 4]` or `[B, M, 4]`, xyxy, absolute pixels.
            Unbatched boxes pair with every image of a batched other argument.

    Returns:
        float32 Tensor `[N, M]` (both unbatched) or `[B, N, M]`, in [0, 1].
        Boxes of zero area, inverted boxes (x2 < x1 or y2 < y1) and padding rows (all -1)
        give 0 against everything, never NaN. Boxes off the image (negative coordinates)
        are ordinary boxes. Computed in float32 whatever the input dtype.

    Raises:
        ValueError: rank other than 2 or 3, last dimension not 4, or batch sizes differ.
    """
    boxes1 = to_tensor(boxes1, "boxes1", tf.float32)
    boxes2 = to_tensor(boxes2, "boxes2", tf.float32)
    check_boxes(boxes1, "boxes1", ranks=(2, 3))
    check_boxes(boxes2, "boxes2", ranks=(2, 3))
    if boxes1.shape.rank == 3 and boxes2.shape.rank == 3:
        batch1, batch2 = boxes1.shape[0], boxes2.shape[0]
        if batch1 is not None and batch2 is not None and batch1 != batch2:
            raise ValueError(
                f"`boxes1` and `boxes2` must have the same batch size, got {batch1} and {batch2}."
            )

    # [..., N, 1, 4] against [..., 1, M, 4] broadcasts to [..., N, M].
    return _iou(boxes1[..., :, None, :], boxes2[..., None, :, :])


def aligned_iou(boxes1, boxes2):
    """IoU of boxes paired row by row (e.g. each predicted box with its target).

    Args:
        boxes1, boxes2: float Tensor `[..., 4]`, xyxy, broadcastable shapes.

    Returns:
        float32 Tensor `[...]` in [0, 1]; zero-area, inverted and padding boxes give 0.
    """
    boxes1 = to_tensor(boxes1, "boxes1", tf.float32)
    boxes2 = to_tensor(boxes2, "boxes2", tf.float32)
    return _iou(boxes1, boxes2)


def _iou(b1, b2):
    """IoU of broadcastable xyxy `[..., 4]` boxes."""
    inter_w = tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0])
    inter_h = tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1])
    intersection = tf.maximum(inter_w, 0.0) * tf.maximum(inter_h, 0.0)
    union = _box_area(b1) + _box_area(b2) - intersection
    # Only zero-area pairs have union 0, and their IoU is defined as 0. No epsilon in the
    # denominator, so IoU(b, b) is exactly 1.
    return tf.math.divide_no_nan(intersection, union)


def _box_area(boxes):
    """Area of xyxy boxes `[..., 4]` -> `[...]`; inverted boxes have area 0."""
    widths = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    heights = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return widths * heights
