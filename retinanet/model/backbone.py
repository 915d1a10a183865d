"""Backbones: raw RGB images to the features at strides 8, 16 and 32 (C3, C4, C5).

`build_backbone` cuts a `keras.applications` network; `build_simple_backbone` is a small CNN
for training from scratch on a CPU.
"""

import keras
import numpy as np

from retinanet import _keras_compat
from retinanet.model import torchvision_resnet
from retinanet.model.fused_batchnorm import FusedBatchNormalization, fuse_batchnorm
from retinanet.model.recompute import layer_nodes

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="retinanet")
class CaffePreprocessing(keras.layers.Layer):
    """`keras.applications.resnet.preprocess_input` as a layer: RGB to BGR, minus the ImageNet mean.

    Input: float `[B, H, W, 3]` RGB in 0-255. Output: the same shape, BGR, mean-centred.
    """

    def call(self, images):
        bgr = images[..., ::-1]
        return bgr - keras.ops.cast(np.array(IMAGENET_MEAN_BGR, "float32"), bgr.dtype)


def _resnet(app):
    def build(weights, size=None):
        inputs = keras.Input((size, size, 3), name="images")
        model = app(include_top=False, weights=weights, input_shape=(size, size, 3))
        return inputs, model, CaffePreprocessing(name="caffe_preprocessing")(inputs)

    return build


def _self_normalising(app):
    """Applications that rescale 0-255 input themselves (MobileNetV3, EfficientNet)."""

    def build(weights, size=None):
        inputs = keras.Input((size, size, 3), name="images")
        model = app(include_top=False, weights=weights, input_shape=(size, size, 3))
        return inputs, model, inputs

    return build


BACKBONES = {
    "resnet50": _resnet(keras.applications.ResNet50),
    "resnet101": _resnet(keras.applications.ResNet101),
    "resnet152": _resnet(keras.applications.ResNet152),
    "mobilenet_v3_small": _self_normalising(keras.applications.MobileNetV3Small),
    "mobilenet_v3_large": _self_normalising(keras.applications.MobileNetV3Large),
    "efficientnet_b0": _self_normalising(keras.applications.EfficientNetB0),
    "efficientnet_b3": _self_normalising(keras.applications.EfficientNetB3),
}
# torchvision's ResNet50 ("v1.5", stride on the 3x3 conv, torchvision's normalisation), as in
# its COCO RetinaNets; built by `torchvision_resnet.build_torchvision_resnet`, random init only.
BACKBONES.update(dict.fromkeys(torchvision_resnet.RESNET_BLOCKS))

_PROBE_SIZE = 64


def _last_layer_at_stride(name):
    """{stride: index into `model.layers` of the last layer at that output stride}.

    keras.applications names some layers with global counters (`activation_17`), so layers
    are found by position, probing a fixed-size build once.
    """
    _, probe, _ = BACKBONES[name](None, _PROBE_SIZE)
    last_at_stride = {}
    for index, layer in enumerate(probe.layers):
        shape = layer.output.shape
        if len(shape) == 4 and shape[1]:
            last_at_stride[_PROBE_SIZE // shape[1]] = index
    return last_at_stride


_LAYER_CACHE = {}


def follow_weights(flag, pretrained: bool) -> bool:
    """A freezing flag: an explicit True/False wins; None follows the weights.

    Frozen batch norm and early stages suit a backbone that starts from pretrained weights
    (their statistics and edge filters are already good); from random weights they cripple
    training, so None means "frozen exactly when `pretrained`".
    """
    return bool(pretrained) if flag is None else bool(flag)


def build_backbone(name="resnet50", weights=None, frozen_batchnorm=None,
                   frozen_early_stages=None, trainable=True, fused_batchnorm=True):
    """Builds a feature extractor from raw images to `[C3, C4, C5]`.

    Args:
        name: one of `BACKBONES`.
        weights: None (random init), `"imagenet"` (Keras's own download, needs network), or
            the path of a `.weights.h5` file of the same application without its top.
        frozen_batchnorm: run every BatchNormalization layer in inference mode with fixed
            statistics, as detectors fine-tuned from ImageNet do. None (default): frozen
            when `weights` is given, trainable from random weights.
        frozen_early_stages: freeze the layers at strides 2 and 4 (for ResNets the stem and
            res2, as Detectron's FREEZE_AT=2 and torchvision's default do). They hold generic
            edge filters, and skipping their gradients saves about 15 % of a ResNet50
            RetinaNet's training step on a CPU. None (default): frozen when `weights` is
            given, trainable from random weights.
        trainable: False freezes the whole backbone.
        fused_batchnorm: compute batch norm in training mode with TensorFlow's fused kernel
            (`retinanet.model.fused_batchnorm`): the same results, a faster training step
            when the statistics train. The weights (ImageNet or a `.weights.h5` file of the
            plain application) are loaded into Keras's layers first, then the layers are
            swapped, so pretrained files keep loading.

    Returns:
        A functional `keras.Model`: float `[B, H, W, 3]` RGB 0-255 to a list of three feature
        maps at strides 8, 16 and 32. The input normalisation of the application is inside.
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown `backbone` {name!r}; expected one of {sorted(BACKBONES)}.")
    frozen_batchnorm = follow_weights(frozen_batchnorm, weights is not None)
    frozen_early_stages = follow_weights(frozen_early_stages, weights is not None)
    if name in torchvision_resnet.RESNET_BLOCKS:
        if weights == "imagenet":
            raise ValueError(f"`backbone_weights='imagenet'` is not available for {name!r}.")
        return torchvision_resnet.build_torchvision_resnet(
            name, weights, frozen_batchnorm, frozen_early_stages, trainable,
            fused_batchnorm=fused_batchnorm,
        )
    file_weights = None
    if weights not in (None, "imagenet"):
        import os

        if not os.path.isfile(weights):
            raise ValueError(f"`backbone_weights` file not found: {weights}")
        file_weights, weights = weights, None
    if name not in _LAYER_CACHE:
        _LAYER_CACHE[name] = _last_layer_at_stride(name)
    last_at_stride = _LAYER_CACHE[name]
    inputs, application, preprocessed = BACKBONES[name](weights)
    if file_weights:
        application.load_weights(file_weights)
    # Layers by name: the fused copy need not list its layers in the same order.
    endpoint_names = [application.layers[last_at_stride[stride]].name for stride in (8, 16, 32)]
    # Input layers are renamed by the copy (and have nothing to freeze).
    early_names = [layer.name for layer in application.layers[: last_at_stride[4] + 1]
                   if not isinstance(layer, keras.layers.InputLayer)]
    if fused_batchnorm:
        application = fuse_batchnorm(application)
    endpoints = [application.get_layer(n).output for n in endpoint_names]
    extractor = keras.Model(application.inputs, endpoints, name=f"{name}_features")
    if frozen_early_stages:
        for layer_name in early_names:
            application.get_layer(layer_name).trainable = False
    if frozen_batchnorm:
        for layer in extractor.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    extractor.trainable = trainable
    return keras.Model(inputs, extractor(preprocessed), name=name)


def build_simple_backbone(widths=(16, 32, 64, 96, 128), blocks=1, name="simple_backbone",
                          fused_batchnorm=True):
    """A small residual CNN from raw images to `[C3, C4, C5]`, for training from scratch.

    Five stages, each a stride-2 3x3 conv (BatchNorm, ReLU) followed, from the second stage
    on, by `blocks` basic residual blocks (two 3x3 convs); C3, C4, C5 are the outputs of
    stages 3, 4, 5 (strides 8, 16, 32). Plain convolutions train faster per CPU second than
    the depthwise ones of MobileNet, and from random init converge in minutes on the shapes
    set. Input: float `[B, H, W, 3]` RGB 0-255 (rescaled to [-1, 1] inside).
    `fused_batchnorm`: `FusedBatchNormalization` layers (TensorFlow's fused kernel in
    training mode) instead of Keras's `BatchNormalization`; the same results, faster.
    """
    if len(widths) != 5 or any(int(w) < 1 for w in widths):
        raise ValueError(f"`widths` must be five positive channel counts, got {tuple(widths)}")
    if int(blocks) < 0:
        raise ValueError(f"`blocks` must be >= 0, got {blocks}")
    layers = keras.layers
    batchnorm = FusedBatchNormalization if fused_batchnorm else layers.BatchNormalization

    def conv_bn(x, filters, strides=1, relu=True):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = batchnorm(momentum=0.9)(x)
        return layers.ReLU()(x) if relu else x

    inputs = keras.Input((None, None, 3), name="images")
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    features = []
    for stage, filters in enumerate(int(w) for w in widths):
        x = conv_bn(x, filters, strides=2)
        for _ in range(int(blocks) if stage else 0):
            y = conv_bn(conv_bn(x, filters), filters, relu=False)
            x = layers.ReLU()(layers.Add()([x, y]))
        if stage >= 2:
            features.append(x)
    return keras.Model(inputs, features, name=name)


def set_redundant_biases(backbone):
    """Makes each convolution bias that a batch norm cancels non-trainable, and the others
    trainable again.

    A bias added just before a batch norm that normalises by the batch's statistics (a
    trainable one, in training) is subtracted again with the batch mean: its gradient is
    zero (float32 noise in practice). keras.applications' ResNets have such a bias on every
    convolution; not training them skips their gradients in the convolutions' backward pass
    and their optimizer updates (4.5 % of a ResNet50 RetinaNet's step by CPU time). With the
    batch norm frozen the bias does shift the output, and trains. Called by `RetinaNet` on
    construction and in `compile`, so it follows the freezing flags set before compiling.
    """
    for model in _keras_compat.all_layers(backbone):  # itself and nested models
        if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
            continue
        try:
            nodes = layer_nodes(model)
        except ValueError:  # a layer shared within the graph: leave its biases as they are
            continue
        readers = {}
        for node in nodes.values():
            for tensor in node.input_tensors:
                readers.setdefault(id(tensor), []).append(node.operation)
        for layer, node in nodes.items():
            if not (isinstance(layer, keras.layers.Conv2D) and layer.use_bias):
                continue
            consumers = readers.get(id(node.output_tensors[0]), [])
            cancelled = (len(consumers) == 1
                         and isinstance(consumers[0], keras.layers.BatchNormalization)
                         and consumers[0].trainable)
            # Keras 3 keeps the flag per variable: a frozen layer's bias stays frozen.
            layer.bias.trainable = layer.trainable and not cancelled

