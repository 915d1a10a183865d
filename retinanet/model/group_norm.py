"""GroupNorm with a hand-written gradient: Keras's `GroupNormalization`, same variables
(`gamma`, `beta` of shape [C]) and config, with fewer ops in the backward pass (issue 30).

Keras's layer differentiates its forward ops one by one (reshape, cast, moments, rsqrt,
scale, shift); the closed form below needs two reductions over each group for the input's
gradient. Statistics are in float32 under mixed precision, as in Keras's layer.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_NHWC = True


def group_norm(x, gamma, beta, epsilon: float):
    """Normalises each group of a [B, ..., G, C/G] float32 tensor over all axes but 0 and -2.

    Args:
        x: float32 [B, H, W, G, C/G] (any rank >= 3 with groups at -2).
        gamma, beta: float32 [G, C/G].
        epsilon: added to the variance.

    Returns:
        float32, x's shape: (x - mean) / sqrt(var + epsilon) * gamma + beta.
    """
    axes = [axis for axis in range(1, len(x.shape)) if axis != len(x.shape) - 2]
    outer = list(range(len(x.shape) - 2))  # the axes gamma and beta broadcast over

    @tf.custom_gradient
    def forward(x, gamma, beta):
        mean, variance = tf.nn.moments(x, axes, keepdims=True)
        inv = tf.math.rsqrt(variance + epsilon)
        scale = inv * gamma
        y = x * scale + (beta - mean * scale)  # two ops on the large tensor

        def grad(dy):
            x_hat = (x - mean) * inv
            d_gamma = tf.reduce_sum(dy * x_hat, outer)
            d_beta = tf.reduce_sum(dy, outer)
            g = dy * gamma
            # d/dx of the normalisation: inv * (g - mean(g) - x_hat * mean(g * x_hat)).
            dx = inv * (g - tf.reduce_mean(g, axes, keepdims=True)
                        - x_hat * tf.reduce_mean(g * x_hat, axes, keepdims=True))
            return dx, d_gamma, d_beta

        return y, grad

    return forward(x, gamma, beta)


def group_norm_nhwc(x, gamma, beta, groups: int, epsilon: float):
    """GroupNorm of a float32 [B, H, W, C] tensor without a 5-D reshape of it.

    The statistics reduce over H and W first (contiguous axes, one fast reduction per channel,
    [B, C]), then over each group's C/G channels on the small [B, G, C/G] tensor; a reduction
    over the non-adjacent axes (1, 2, 4) of [B, H, W, G, C/G] makes TensorFlow transpose.
    Two passes (mean, then the squared deviation), as `tf.nn.moments`. Autodiff gradient.

    Args:
        x: float32 [B, H, W, C]; gamma, beta: float32 [C]; groups divides C.

    Returns:
        float32 [B, H, W, C].
    """
    channels = x.shape[-1]

    def per_group_mean(per_channel):  # [B, C] -> [B, 1, 1, C], each channel its group's mean
        grouped = tf.reshape(per_channel, [-1, groups, channels // groups])
        mean = tf.reduce_mean(grouped, -1, keepdims=True)
        return tf.reshape(tf.broadcast_to(mean, tf.shape(grouped)), [-1, 1, 1, channels])

    mean = per_group_mean(tf.reduce_mean(x, [1, 2]))
    centred = x - mean
    variance = per_group_mean(tf.reduce_mean(tf.square(centred), [1, 2]))
    return centred * (tf.math.rsqrt(variance + epsilon) * gamma) + beta


class FastGroupNormalization(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization` for channels-last inputs with `group_norm`'s
    gradient; other settings (axis not last, no scale or centre) use Keras's own call.

    Input and output: [B, ..., C] in the layer's compute dtype.
    """

    def call(self, inputs):
        rank = len(inputs.shape)
        if self.axis not in (-1, rank - 1) or not (self.scale and self.center):
            return super().call(inputs)
        channels = inputs.shape[-1]
        if rank == 4 and _NHWC:
            y = group_norm_nhwc(tf.cast(inputs, "float32"), tf.cast(self.gamma, "float32"),
                                tf.cast(self.beta, "float32"), self.groups, self.epsilon)
            return tf.cast(y, self.compute_dtype)
        shape = tf.shape(inputs)
        grouped = tf.concat([shape[:-1], [self.groups, channels // self.groups]], 0)
        x = tf.reshape(tf.cast(inputs, "float32"), grouped)
        per_group = [self.groups, channels // self.groups]
        y = group_norm(x, tf.reshape(tf.cast(self.gamma, "float32"), per_group),
                       tf.reshape(tf.cast(self.beta, "float32"), per_group), self.epsilon)
        return tf.cast(tf.reshape(y, shape), self.compute_dtype)
