"""The one resize-and-pad rule, shared by the data pipeline and the exported models.

An `image_size` is the resize rule, for an image of height H and width W:

- None: scale 1 (native size);
- an int S: scale = S / max(H, W), on an S x S canvas (TF Model Garden's fixed square);
- (min_side, max_side): scale = min(min_side / min(H, W), max_side / max(H, W))
  (detectron2's ResizeShortestEdge), on a canvas of the resized size.

Two sets of rules (`PREPROCESSING`) turn the scale into pixels:

- "retinanet" (the package's own): the resized image is round(H * scale) x round(W * scale),
  boxes are multiplied by the one `scale`, and the padding is black (0).
- "torchvision" (its `GeneralizedRCNNTransform`, which its COCO detectors were trained
  with): floor(H * scale) x floor(W * scale), with the float32 scale multiplied in float64
  as PyTorch's `interpolate` does; boxes are scaled per axis by resized / original side;
  the padding is the normalisation's mean colour, which is 0 once normalised (torchvision
  pads the normalised image with zeros).

The canvas is rounded up to a multiple of `size_multiple` (the anchor generator's
`stride_multiple`: `2**max_level` in the package's anchors, so every pyramid level tiles
the image exactly; 32 in torchvision's), and images are padded bottom/right, which leaves
pixel coordinates unchanged. Both rules clip detections to the resized image, not the
canvas.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

# `AnchorGenerator().stride_multiple` with the default max_level 7.
DEFAULT_SIZE_MULTIPLE = 128

PREPROCESSING = ("retinanet", "torchvision")
# The ImageNet mean of RGB in 0-255, which torchvision's COCO detectors normalise with.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)


def check_preprocessing(preprocessing, name="preprocessing"):
    """One of `PREPROCESSING`; raises ValueError naming `name` otherwise."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"`{name}` must be one of {PREPROCESSING}, got {preprocessing!r}")
    return preprocessing


def pad_color(preprocessing):
    """The padding's RGB colour in 0-255 under the rules `preprocessing`."""
    return IMAGENET_MEAN_255 if check_preprocessing(preprocessing) == "torchvision" \
        else (0.0, 0.0, 0.0)


def pad_images(images, paddings, color):
    """`tf.pad` of float images `[..., 3]` with an RGB `color` instead of 0."""
    if not any(color):
        return tf.pad(images, paddings)
    # Shifted so the padding is 0: the same trick lets padded_batch pad with a colour.
    color = tf.constant(color, images.dtype)
    return tf.pad(images - color, paddings) + color


def round_up(value, multiple):
    """`value` (int or int tensor) rounded up to a multiple of `multiple`."""
    return (value + multiple - 1) // multiple * multiple


def check_image_size(image_size, name="image_size"):
    """None, an int S >= 32, or (min_side, max_side) with 32 <= min_side <= max_side.

    Returns:
        The normalised value (None, int or a tuple of two ints).

    Raises:
        ValueError: naming `name`.
    """
    if image_size is None:
        return None
    usage = f"`{name}` must be None, an int or (min_side, max_side), got {image_size!r}"
    if isinstance(image_size, bool):
        raise ValueError(usage)
    if isinstance(image_size, numbers.Integral):
        if image_size < 32:
            raise ValueError(f"`{name}` must be >= 32, got {image_size}")
        return int(image_size)
    try:
        min_side, max_side = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(usage) from None
    if not 32 <= min_side <= max_side:
        raise ValueError(f"`{name}` (min_side, max_side) needs 32 <= min_side <= max_side, "
                         f"got {image_size!r}")
    return (min_side, max_side)


def resize_scale_and_canvas(height, width, image_size, size_multiple=DEFAULT_SIZE_MULTIPLE,
                            preprocessing="retinanet"):
    """The resize factor and the padded canvas of an image (see the module docstring).

    Args:
        height, width: int32 scalar tensors, the original size.
        image_size: None, int or (min_side, max_side), as returned by `check_image_size`.
        size_multiple: the canvas sides are rounded up to multiples of it.
        preprocessing: one of `PREPROCESSING`.

    Returns:
        `(scale, canvas)`: float32 scalar and int32 `[2]` (height, width).
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    if image_size is None:
        scale = tf.constant(1.0)
        canvas = tf.stack([height, width])
    elif isinstance(image_size, int):
        scale = image_size / tf.maximum(h, w)
        canvas = tf.constant([image_size, image_size])
    else:
        min_side, max_side = image_size
        scale = tf.minimum(min_side / tf.minimum(h, w), max_side / tf.maximum(h, w))
        canvas = resized_size(tf.stack([height, width]), scale, preprocessing)
    return scale, round_up(tf.cast(canvas, tf.int32), size_multiple)


def resized_size(size, scale, preprocessing="retinanet"):
    """The resized (h, w), at least 1 pixel: int32 `[2]` from int32 `[2]` and the float32
    scale; `round(size * scale)`, or torchvision's `floor(float64(size) * float64(scale))`."""
    if check_preprocessing(preprocessing) == "torchvision":
        scaled = tf.floor(tf.cast(size, tf.float64) * tf.cast(scale, tf.float64))
    else:
        scaled = tf.round(tf.cast(size, tf.float32) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)


def box_scale(size, resized, scale, preprocessing="retinanet"):
    """What boxes are multiplied by: float32 `[2]` (y, x) for an image resized from `size`
    to `resized` (int32 `[2]`) by `scale`; the one scale, or torchvision's resized / size."""
    if check_preprocessing(preprocessing) == "torchvision":
        return tf.cast(resized, tf.float32) / tf.cast(size, tf.float32)
    return tf.fill([2], tf.cast(scale, tf.float32))


def scale_boxes(boxes, scale_yx):
    """xyxy boxes `[..., 4]` times a (y, x) scale `[..., 2]`."""
    return boxes * tf.gather(scale_yx, [1, 0, 1, 0], axis=-1)


def resize_and_pad(images, image_size, size_multiple=DEFAULT_SIZE_MULTIPLE,
                   preprocessing="retinanet"):
    """Resizes and pads a batch of images that share one size, as evaluation batches are.

    Args:
        images: uint8 or float `[B, H, W, 3]` (uint8 is resized without a float copy).
        image_size: the resize rule (see `check_image_size`).
        size_multiple: canvas multiple.
        preprocessing: one of `PREPROCESSING`.

    Returns:
        `(padded float32 [B, Hc, Wc, 3], resized int32 [2] (h, w), scale float32 [2] (y, x))`;
        boxes found on the padded images divided by `scale` per axis are in the input's
        pixels.
    """
    shape = tf.shape(images)
    scale, canvas = resize_scale_and_canvas(shape[1], shape[2], image_size, size_multiple,
                                            preprocessing)
    size = resized_size(shape[1:3], scale, preprocessing)
    resized = tf.image.resize(images, size, method="bilinear")
    padded = pad_images(resized, [[0, 0], [0, canvas[0] - size[0]], [0, canvas[1] - size[1]],
                                  [0, 0]], pad_color(preprocessing))
    return padded, size, box_scale(shape[1:3], size, scale, preprocessing)
