"""The one resize-and-pad rule, shared by the data pipeline and the exported models.

An `image_size` is the resize rule, for an image of height H and width W:

- None: scale 1 (native size);
- an int S: scale = S / max(H, W), on an S x S canvas (TF Model Garden's fixed square);
- (min_side, max_side): scale = min(min_side / min(H, W), max_side / max(H, W))
  (detectron2's ResizeShortestEdge), on a canvas of the resized size.

The resized image is round(H * scale) x round(W * scale) and boxes are multiplied by the one
`scale`. The canvas is rounded up to a multiple of `size_multiple` (the anchor
generator's `stride_multiple`, `2**max_level`, so every pyramid level tiles the image
exactly), and images are padded bottom/right, which leaves pixel coordinates unchanged.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

# `AnchorGenerator().stride_multiple` with the default max_level 7.
DEFAULT_SIZE_MULTIPLE = 128


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


def resize_scale_and_canvas(height, width, image_size, size_multiple=DEFAULT_SIZE_MULTIPLE):
    """The resize factor and the padded canvas of an image (see the module docstring).

    Args:
        height, width: int32 scalar tensors, the original size.
        image_size: None, int or (min_side, max_side), as returned by `check_image_size`.
        size_multiple: the canvas sides are rounded up to multiples of it.

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
        canvas = tf.cast(tf.round(tf.stack([h, w]) * scale), tf.int32)
    return scale, round_up(tf.cast(canvas, tf.int32), size_multiple)


def resized_size(size, scale):
    """`round(size * scale)`, at least 1 pixel: int32 `[2]` from int32 `[2]` (h, w)."""
    scaled = tf.round(tf.cast(size, tf.float32) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)


def resize_and_pad(images, image_size, size_multiple=DEFAULT_SIZE_MULTIPLE):
    """Resizes and pads a batch of images that share one size, as evaluation batches are.

    Args:
        images: uint8 or float `[B, H, W, 3]` (uint8 is resized without a float copy).
        image_size: the resize rule (see `check_image_size`).
        size_multiple: canvas multiple.

    Returns:
        `(padded float32 [B, Hc, Wc, 3], scale float32 scalar)`; boxes found on the padded
        images divided by `scale` are in the input's pixels.
    """
    shape = tf.shape(images)
    scale, canvas = resize_scale_and_canvas(shape[1], shape[2], image_size, size_multiple)
    size = resized_size(shape[1:3], scale)
    resized = tf.image.resize(images, size, method="bilinear")
    padded = tf.pad(resized, [[0, 0], [0, canvas[0] - size[0]], [0, canvas[1] - size[1]],
                              [0, 0]])
    return padded, scale
