"""Feature pyramid network (Lin et al., 2017) as used by RetinaNet."""

import keras


@keras.saving.register_keras_serializable(package="retinanet")
class FeaturePyramid(keras.layers.Layer):
    """Turns backbone features `[C3, C4, C5]` into pyramid levels `[P3, ..., P7]`.

    - P3-P5: 1x1 lateral convs on C3-C5, a top-down path with nearest-neighbour 2x
      upsampling and addition, then a 3x3 output conv on each level.
    - P6 (when `max_level >= 6`): a 3x3 stride-2 conv on C5 (`p6_input="c5"`, the
      paper's and torchvision v2's) or on the FPN's P5 output (`p6_input="p5"`, torchvision
      v1's). P7 and above: a 3x3 stride-2 conv on ReLU of the level below.

    `extra_padding` pads those stride-2 convs: `"same"` (Keras's: on an even input 0 rows
    and columns before, 1 after) or `"symmetric"` (1 on every side, as PyTorch's
    `padding=1` and so torchvision's P6 and P7; with "same" instead, torchvision's weights
    see their input shifted by one pixel of that level: 32 image pixels at P6, 96 at P7).

    Input: a list of three float tensors `[B, H/8, W/8, c3]`, `[B, H/16, W/16, c4]`,
    `[B, H/32, W/32, c5]` with H and W multiples of `2**max_level`.
    Output: a list of `max_level - 2` tensors `[B, H/2**l, W/2**l, filters]`, l = 3..max_level
    (`max_level` 5 gives P3-P5 only).
    """

    def __init__(self, filters=256, max_level=7, p6_input="c5", extra_padding="same",
                 **kwargs):
        super().__init__(**kwargs)
        if max_level < 5:
            raise ValueError(f"`max_level` must be at least 5, got {max_level}.")
        if p6_input not in ("c5", "p5"):
            raise ValueError(f"`p6_input` must be 'c5' or 'p5', got {p6_input!r}.")
        if extra_padding not in ("same", "symmetric"):
            raise ValueError(f"`extra_padding` must be 'same' or 'symmetric', got "
                             f"{extra_padding!r}.")
        self.p6_input = p6_input
        self.extra_padding = extra_padding
        self.filters = filters
        self.max_level = max_level
        conv = dict(filters=filters, padding="same", dtype=self.dtype_policy)
        self.lateral_convs = [
            keras.layers.Conv2D(kernel_size=1, name=f"lateral_c{level}", **conv)
            for level in (3, 4, 5)
        ]
        self.output_convs = [
            keras.layers.Conv2D(kernel_size=3, name=f"output_p{level}", **conv)
            for level in (3, 4, 5)
        ]
        symmetric = extra_padding == "symmetric"
        self.extra_convs = [
            keras.layers.Conv2D(kernel_size=3, strides=2, name=f"p{level}",
                                **{**conv, "padding": "valid" if symmetric else "same"})
            for level in range(6, max_level + 1)
        ]
        # The FPN's own policy, not the global one: a checkpoint trained under mixed precision
        # and loaded under another global policy would otherwise add bf16 to float32.
        self.extra_pad = keras.layers.ZeroPadding2D(1, dtype=self.dtype_policy) \
            if symmetric else None
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest",
                                                  dtype=self.dtype_policy)

    def build(self, input_shapes):
        input_shapes = [tuple(shape) for shape in input_shapes]
        for conv, shape in zip(self.lateral_convs, input_shapes):
            conv.build(shape)
        for conv, shape in zip(self.output_convs, input_shapes):
            conv.build(shape[:-1] + (self.filters,))
        p5_shape = input_shapes[-1][:-1] + (self.filters,)
        for index, conv in enumerate(self.extra_convs):
            shape = input_shapes[-1] if index == 0 and self.p6_input == "c5" else p5_shape
            conv.build(shape if self.extra_pad is None else
                       (shape[0], None, None, shape[-1]))

    def call(self, features):
        c3, c4, c5 = features
        p5 = self.lateral_convs[2](c5)
        p4 = self.lateral_convs[1](c4) + self.upsample(p5)
        p3 = self.lateral_convs[0](c3) + self.upsample(p4)
        outputs = [conv(p) for conv, p in zip(self.output_convs, (p3, p4, p5))]
        extra = c5 if self.p6_input == "c5" else outputs[-1]
        for index, conv in enumerate(self.extra_convs):
            extra = extra if index == 0 else keras.ops.relu(extra)
            extra = conv(extra if self.extra_pad is None else self.extra_pad(extra))
            outputs.append(extra)
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "max_level": self.max_level,
            "p6_input": self.p6_input,
            "extra_padding": self.extra_padding,
        }
