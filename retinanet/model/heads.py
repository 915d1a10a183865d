"""The RetinaNet class and box subnets: one head class, shared across pyramid levels."""

import math

import keras

from retinanet.model import group_norm

# The heads' GroupNorm: Keras's layer with cheaper statistics, same variables and config, so
# checkpoints load either way; 4-6 % off the scratch recipe's train step (issue 30).
# benchmarks/precision_step.py's +fastgn / +kerasgn settings swap it.
GroupNormalization = group_norm.FastGroupNormalization


@keras.saving.register_keras_serializable(package="retinanet")
class RetinaNetHead(keras.layers.Layer):
    """`num_convs` 3x3 conv + ReLU layers, then a 3x3 conv to A * outputs per location.

    The same weights run on every pyramid level. Conv kernels start from N(0, 0.01). With
    `prior_probability` set (the class subnet), the final bias starts at
    `-log((1 - p) / p)` so every anchor initially predicts foreground with probability p,
    which keeps the focal loss stable in the first iterations.

    `use_group_norm` puts GroupNorm(32) between each conv and its ReLU, where torchvision's
    RetinaNet v2 has it; `group_norm_epsilon` defaults to Keras's 1e-3 (torchvision's
    GroupNorm uses 1e-5, keras-hub's port of it keeps 1e-3).

    Input: a list of `[B, H_l, W_l, C]` feature maps.
    Output: float32 `[B, sum_l H_l * W_l * A, outputs_per_anchor]`, ordered by level, row,
    column, anchor (the order of `retinanet.AnchorGenerator`).
    """

    def __init__(
        self,
        outputs_per_anchor,
        num_anchors_per_location=9,
        num_convs=4,
        filters=256,
        prior_probability=None,
        use_group_norm=False,
        group_norm_epsilon=1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.outputs_per_anchor = outputs_per_anchor
        self.num_anchors_per_location = num_anchors_per_location
        self.num_convs = num_convs
        self.filters = filters
        self.prior_probability = prior_probability
        self.use_group_norm = use_group_norm
        self.group_norm_epsilon = float(group_norm_epsilon)
        kernel_init = keras.initializers.RandomNormal(stddev=0.01)
        self.convs = [
            keras.layers.Conv2D(
                filters, 3, padding="same", kernel_initializer=kernel_init,
                name=f"conv{i}", dtype=self.dtype_policy,
            )
            for i in range(num_convs)
        ]
        self.norms = (
            [
                GroupNormalization(
                    groups=32, epsilon=self.group_norm_epsilon, name=f"gn{i}",
                    dtype=self.dtype_policy,
                )
                for i in range(num_convs)
            ]
            if use_group_norm
            else []
        )
        bias_init = (
            keras.initializers.Constant(-math.log((1 - prior_probability) / prior_probability))
            if prior_probability
            else "zeros"
        )
        self.output_conv = keras.layers.Conv2D(
            num_anchors_per_location * outputs_per_anchor, 3, padding="same",
            kernel_initializer=kernel_init, bias_initializer=bias_init,
            name="output", dtype=self.dtype_policy,
        )

    def build(self, input_shapes):
        shape = tuple(input_shapes[0])
        for i, conv in enumerate(self.convs):
            conv.build(shape)
            shape = shape[:-1] + (self.filters,)
            if self.norms:
                self.norms[i].build(shape)
        self.output_conv.build(shape)

    def _run(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = self.norms[i](x)
            x = keras.ops.relu(x)
        return self.output_conv(x)

    def call(self, features):
        outputs = []
        for feature in features:
            x = self._run(feature)  # [B, H, W, A * outputs]
            batch = keras.ops.shape(x)[0]
            # -> [B, H * W * A, outputs]: location-major, then anchor, like the anchors.
            outputs.append(keras.ops.reshape(x, (batch, -1, self.outputs_per_anchor)))
        # Losses and decoding run in float32 under mixed precision.
        return keras.ops.cast(keras.ops.concatenate(outputs, axis=1), "float32")

    def get_config(self):
        return {
            **super().get_config(),
            "outputs_per_anchor": self.outputs_per_anchor,
            "num_anchors_per_location": self.num_anchors_per_location,
            "num_convs": self.num_convs,
            "filters": self.filters,
            "prior_probability": self.prior_probability,
            "use_group_norm": self.use_group_norm,
            "group_norm_epsilon": self.group_norm_epsilon,
        }
