"""Anchor boxes over the levels of a feature pyramid."""

import math

import keras
import numpy as np
import tensorflow as tf

# "centered": anchors centred on feature cells, exact sizes (this package's default).
# "torchvision": torchvision's `AnchorGenerator` (and keras-hub's, which copies it).
ANCHOR_CONVENTIONS = ("centered", "torchvision")


@keras.saving.register_keras_serializable(package="retinanet")
class AnchorGenerator:
    """Generates the anchors of every pyramid level for an image size.

    On level `l` the stride is `2**l` and the base size is `anchor_size * 2**l`
    (32 to 512 px for levels 3 to 7 with the default `anchor_size=4`). Each location gets
    `len(scales) * len(aspect_ratios)` anchors, centred at `((x + 0.5) * stride,
    (y + 0.5) * stride)`.

    The aspect ratio is **height / width**: ratio 2.0 gives a tall anchor. An anchor of
    base size `s`, scale `k` and ratio `r` has area `(s * k)**2`, width
    `s * k / sqrt(r)` and height `s * k * sqrt(r)`.

    Example: level 3 of a 16x16 image is a 2x2 grid with stride 8; its first anchor
    (scale 1, ratio 0.5) is centred at (4, 4) with width 32 * sqrt(2) and height
    32 / sqrt(2), i.e. `[-18.63, -7.31, 26.63, 15.31]`.

    With `convention="torchvision"` the anchors are torchvision's (and keras-hub's, which
    ports them): centres at `(x * stride, y * stride)`, sizes truncated to whole pixels
    (`int(s * k)`: 32, 40, 50 on level 3) and each half width and half height rounded
    half-to-even to a whole pixel, as `torchvision.models.detection.anchor_utils.
    AnchorGenerator.generate_anchors` does in float32. Its anchor order (ratio major, scale
    minor) is the same as ours. The torchvision RetinaNets of `RetinaNet.from_preset` need it.
    torchvision pads images to a multiple of 32 only (`stride_multiple`), and the stride of
    each level is then `image side // grid side` per axis, which is `2**l` on a canvas that
    is a multiple of `2**l` but not above (an 800 x 1088 canvas gives P7 a 7 x 9 grid with
    strides 114 and 120); this convention does the same.

    Args:
        min_level, max_level: the pyramid levels, inclusive.
        anchor_size: base anchor size in units of the level's stride.
        scales: multipliers of the base size at every location.
        aspect_ratios: height / width ratios at every location.
        convention: one of `ANCHOR_CONVENTIONS`: `"centered"` (default) or `"torchvision"`.
    """

    def __init__(
        self,
        min_level=3,
        max_level=7,
        anchor_size=4.0,
        scales=(2**0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios=(0.5, 1.0, 2.0),
        convention="centered",
    ):
        if not 1 <= min_level <= max_level:
            raise ValueError(
                f"`min_level` and `max_level` need 1 <= min_level <= max_level, "
                f"got {min_level} and {max_level}."
            )
        if anchor_size <= 0:
            raise ValueError(f"`anchor_size` must be positive, got {anchor_size}.")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"`scales` must be positive numbers, got {scales}.")
        if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"`aspect_ratios` must be positive numbers, got {aspect_ratios}.")
        if convention not in ANCHOR_CONVENTIONS:
            raise ValueError(
                f"`convention` must be one of {ANCHOR_CONVENTIONS}, got {convention!r}."
            )
        self.convention = convention
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.anchor_size = float(anchor_size)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)

    @property
    def levels(self):
        return list(range(self.min_level, self.max_level + 1))

    @property
    def num_anchors_per_location(self):
        return len(self.scales) * len(self.aspect_ratios)

    @property
    def stride_multiple(self):
        """Canvas sides are padded to multiples of this: `2**max_level`, so that every level
        tiles the image exactly; 32 in the torchvision convention (its `size_divisible`)."""
        return 32 if self.convention == "torchvision" else 2**self.max_level

    def _anchor_shapes(self, level):
        """[num_anchors_per_location, 2] (width, height), ordered ratio-major."""
        base = self.anchor_size * 2**level
        if self.convention == "torchvision":
            # torchvision: sizes int(x * 2**(k/3)); h_ratios = sqrt(r), w_ratios = 1 / h_ratios;
            # ws = (w_ratios[:, None] * sizes[None, :]).view(-1), all in float32; then
            # round(ws / 2). np.round, like torch.round, rounds halves to even.
            sizes = np.array([int(base * scale) for scale in self.scales], np.float32)
            h_ratios = np.sqrt(np.array(self.aspect_ratios, np.float32))
            w_ratios = np.float32(1) / h_ratios
            half_w = np.round((w_ratios[:, None] * sizes[None, :]).reshape(-1) / 2)
            half_h = np.round((h_ratios[:, None] * sizes[None, :]).reshape(-1) / 2)
            return tf.constant(np.stack([half_w, half_h], axis=1) * 2, tf.float32)
        shapes = []
        for ratio in self.aspect_ratios:
            for scale in self.scales:
                size = base * scale
                shapes.append((size / math.sqrt(ratio), size * math.sqrt(ratio)))
        return tf.constant(shapes, tf.float32)

    def feature_size(self, size, level):
        """Side of the level-`level` feature map for an image side of `size`."""
        stride = 2**level
        return (size + stride - 1) // stride

    def anchors_per_level(self, height, width):
        """A list of `[H_l * W_l * num_anchors_per_location, 4]` xyxy tensors, one per level."""
        result = []
        for level in self.levels:
            rows = self.feature_size(height, level)
            cols = self.feature_size(width, level)
            if self.convention == "torchvision":
                offset = 0.0
                # torchvision's `image_size // grid_size`, per axis.
                stride_y = tf.floor(tf.cast(height, tf.float32) / tf.cast(rows, tf.float32))
                stride_x = tf.floor(tf.cast(width, tf.float32) / tf.cast(cols, tf.float32))
            else:
                offset, stride_y = 0.5, float(2**level)
                stride_x = stride_y
            centers_y = (tf.cast(tf.range(rows), tf.float32) + offset) * stride_y
            centers_x = (tf.cast(tf.range(cols), tf.float32) + offset) * stride_x
            grid_y, grid_x = tf.meshgrid(centers_y, centers_x, indexing="ij")
            # [rows, cols, 1, 2] centres against [num_anchors, 2] half sizes.
            centers = tf.stack([grid_x, grid_y], axis=-1)[:, :, None, :]
            half_sizes = self._anchor_shapes(level)[None, None] / 2.0
            boxes = tf.concat([centers - half_sizes, centers + half_sizes], axis=-1)
            result.append(tf.reshape(boxes, [-1, 4]))
        return result

    def __call__(self, height, width):
        """All anchors for an image of `height` x `width` pixels.

        Args:
            height, width: Python ints or scalar int tensors.

        Returns:
            float32 Tensor `[A, 4]`, xyxy absolute pixels, ordered by level, then row (y),
            then column (x), then anchor (aspect ratio major, scale minor).
        """
        return tf.concat(self.anchors_per_level(height, width), axis=0)

    def num_anchors(self, height, width):
        """The number of anchors `A` for an image size, as a Python int."""
        return self.num_anchors_per_location * sum(
            self.feature_size(height, level) * self.feature_size(width, level)
            for level in self.levels
        )

    def get_config(self):
        return {
            "convention": self.convention,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "anchor_size": self.anchor_size,
            "scales": list(self.scales),
            "aspect_ratios": list(self.aspect_ratios),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
