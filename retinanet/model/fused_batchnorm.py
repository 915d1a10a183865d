"""Batch normalisation through TensorFlow's fused kernel, and a model rewrite to use it.

Keras 3's `BatchNormalization` computes the batch moments in training mode with separate
ops (a mean, a squared difference, another mean, then the normalisation), each a full pass
over the activations, and their gradients as many more. TensorFlow's `FusedBatchNormV3`
kernel does the forward in one op and the backward in one op; on a CPU this saves seconds
per training step of a ResNet50 at 512 px.
"""

import keras
import tensorflow as tf

from retinanet.model.recompute import recomputing

# `tf.compat.v1.nn.fused_batch_norm` silently raises a smaller epsilon to this (cuDNN's
# floor): below it the fused kernel would compute something else than Keras, so don't fuse.
_FUSED_MIN_EPSILON = 1.001e-5
_FUSED_DTYPES = ("float32", "float16", "bfloat16")


@keras.saving.register_keras_serializable(package="retinanet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed with TensorFlow's fused kernel.

    Same constructor, variables (`gamma`, `beta`, `moving_mean`, `moving_variance`) and
    config as Keras's layer (registered, so `.keras` files holding it load back).

    The fused path: training mode (`training=True` on a trainable layer), inputs and
    outputs `[B, H, W, C]` (NHWC, `axis=-1`) of float32, float16 or bfloat16 (the
    statistics in float32, as Keras's). Everything else is Keras's own computation:
    inference mode (as fast or faster there), other ranks or axes, `synchronized=True`
    (cross-replica moments), `renorm=True`, a mask, `epsilon` below 1.001e-5.

    The moving statistics are updated as Keras does,
    `moving = moving * momentum + batch * (1 - momentum)`, with Keras's *biased* batch
    variance (TensorFlow's kernel returns the Bessel-corrected one; undone here).
    A layer with `trainable=False` runs in inference mode, as in Keras 3.

    Keras 3's `.weights.h5` and `.keras` files key each layer's weights by its class
    name, so a weights file saved from a model with Keras's layer does not load into the
    same model built with this one (nor the reverse): load it into the plain model, then
    `fuse_batchnorm`. Legacy `.h5` weights (keras.applications' ImageNet files) go by
    layer name or order and load into either.
    """

    def call(self, inputs, training=None, mask=None):
        # Inference mode stays Keras's: measured on a CPU (ResNet50 at 512 px), the
        # kernel's inference mode was slower than Keras's multiply-add, 8% at batch 2
        # (forward alone, and a training step with frozen statistics), 2% at batch 8.
        if training and self.trainable and self._can_fuse(inputs, mask):
            return self._fused_training(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _can_fuse(self, inputs, mask):
        return (
            mask is None
            and len(inputs.shape) == 4
            and self.axis % 4 == 3
            and not self.synchronized
            and not self.renorm
            and self.epsilon >= _FUSED_MIN_EPSILON
            and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
        )

    def _scale_and_offset(self, channels):
        # The kernel wants float32 scale and offset whatever the input dtype (Keras also
        # keeps these variables in float32: autocast=False).
        scale = (tf.convert_to_tensor(self.gamma, tf.float32) if self.scale
                 else tf.ones([channels], tf.float32))
        offset = (tf.convert_to_tensor(self.beta, tf.float32) if self.center
                  else tf.zeros([channels], tf.float32))
        return scale, offset

    def _fused_training(self, inputs):
        channels = inputs.shape[-1]
        scale, offset = self._scale_and_offset(channels)
        outputs, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, epsilon=self.epsilon, data_format="NHWC",
            is_training=True)
        # The kernel's variance is sum / (n - 1) (n / max(n - 1, 1) at n = 1, where it
        # is 0 anyway); Keras's moving variance averages sum / n.
        shape = tf.shape(inputs)
        count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        batch_variance = batch_variance * (tf.maximum(count - 1.0, 1.0) / count)
        batch_mean = tf.stop_gradient(batch_mean)
        batch_variance = tf.stop_gradient(batch_variance)
        if recomputing():  # the forward pass already updated them (model/recompute.py)
            return tf.cast(outputs, self.compute_dtype)
        # Exactly Keras's update, assign included, so distribution strategies treat the
        # moving statistics as they do Keras's layer.
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        self.moving_mean.assign(
            moving_mean * self.momentum + batch_mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + batch_variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


def _is_plain_batchnorm(layer):
    # Exact class: a subclass of Keras's layer may compute something else.
    return type(layer) is keras.layers.BatchNormalization


def fuse_batchnorm(model):
    """A copy of `model` with every `keras.layers.BatchNormalization` replaced by a
    `FusedBatchNormalization` with the same config (trainable flag, dtype policy and name
    included) and the same weights; nested functional or sequential models are rewritten too.

    `model`: a built functional or sequential `keras.Model` (e.g. a
    `keras.applications.ResNet50`). The original is left unchanged and shares no
    variables with the copy. Raises ValueError for other kinds of model, and where a
    weight finds no counterpart of the same name and shape in the copy (a subclassed
    model nested inside, whose sublayers' generated names change when cloned).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}.")

    def clone_layer(layer):
        config = layer.get_config()
        if _is_plain_batchnorm(layer):
            return FusedBatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    try:
        fused = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except ValueError as error:  # Keras's answer to a subclassed model
        raise ValueError(f"`model` must be a functional or sequential keras.Model, got "
                         f"{type(model).__name__}: {error}") from error
    _copy_weights(model, fused)
    return fused


def _copy_weights(source, target):
    # Layers pair up by name (unique within a functional or sequential model), nested
    # models recursively, not by position: should the copy ever order its layers
    # differently, a copy by position would swap two same-shaped layers' weights silently.
    if len(source.weights) != len(target.weights):
        raise ValueError(f"`model` {source.name!r} has {len(source.weights)} weights, its "
                         f"copy {len(target.weights)}.")
    for source_layer in source.layers:
        if not source_layer.weights:
            continue  # nothing to copy (input layers, whose names change, among them)
        try:
            target_layer = target.get_layer(source_layer.name)
        except ValueError:
            raise ValueError(f"`model`'s layer {source_layer.name!r} has no "
                             f"counterpart in its copy.") from None
        if isinstance(source_layer, keras.Model):
            _copy_weights(source_layer, target_layer)
            continue
        source_weights, target_weights = source_layer.weights, target_layer.weights
        if ([(w.name, tuple(w.shape)) for w in source_weights]
                != [(w.name, tuple(w.shape)) for w in target_weights]):
            raise ValueError(f"`model`'s layer {source_layer.name!r} has weights "
                             f"{[w.name for w in source_weights]}, its copy "
                             f"{[w.name for w in target_weights]}.")
        for source_weight, target_weight in zip(source_weights, target_weights):
            target_weight.assign(source_weight)
