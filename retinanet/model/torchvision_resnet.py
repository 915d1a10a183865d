"""ResNet50 "v1.5" in torchvision's layout, with torchvision's input normalisation.

`keras.applications.ResNet50` is ResNet v1: its bottlenecks stride on the first 1x1 conv and
its convs have biases. torchvision's (and keras-hub's `ResNetBackbone`, which torchvision's
COCO RetinaNets were ported into) stride on the 3x3 conv, have no conv biases and use batch
norm with epsilon 1e-5. Strided convs pad explicitly by `(kernel - 1) // 2` on every side,
as PyTorch does, rather than with TensorFlow's asymmetric `"same"`.

Layer names are keras-hub's (`conv1_conv`, `stack2_block0_2_conv`, ...), which is what
`retinanet.model.presets` maps weights by.
"""

import keras
import numpy as np

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# Blocks per stage (res2..res5) of the ResNets this module builds.
RESNET_BLOCKS = {"torchvision_resnet50": (3, 4, 6, 3)}

_BN_EPSILON = 1e-5  # torchvision's BatchNorm2d and FrozenBatchNorm2d


@keras.saving.register_keras_serializable(package="retinanet")
class TorchvisionNormalization(keras.layers.Layer):
    """torchvision's input normalisation: `(images / 255 - mean) / std` per RGB channel.

    Input: float `[B, H, W, 3]` RGB in 0-255. Output: the same shape, normalised.

    Args:
        mean, std: three floats each, for RGB values scaled to 0-1 (default: ImageNet's).
    """

    def __init__(self, mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB, **kwargs):
        super().__init__(**kwargs)
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(
                f"`mean` and `std` must be three numbers each, std positive; got {mean}, {std}."
            )
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):
        scale = np.array([1.0 / (255.0 * s) for s in self.std], "float32")
        offset = np.array([-m / s for m, s in zip(self.mean, self.std)], "float32")
        return images * keras.ops.cast(scale, images.dtype) + keras.ops.cast(offset, images.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


def _conv(x, filters, kernel_size, strides, name):
    layers = keras.layers
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False,
        name=f"{name}_conv",
    )(x)


def _batch_norm(x, name):
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=0.9, name=f"{name}_bn")(x)


def _bottleneck(x, filters, stride, projection, name):
    """torchvision's `Bottleneck`: 1x1, 3x3 (strided), 1x1 (4 * filters), plus a shortcut."""
    layers = keras.layers
    shortcut = x
    if projection:
        shortcut = _batch_norm(_conv(x, 4 * filters, 1, stride, f"{name}_0"), f"{name}_0")
    y = layers.ReLU(name=f"{name}_1_relu")(_batch_norm(_conv(x, filters, 1, 1, f"{name}_1"),
                                                      f"{name}_1"))
    y = layers.ReLU(name=f"{name}_2_relu")(_batch_norm(_conv(y, filters, 3, stride, f"{name}_2"),
                                                      f"{name}_2"))
    y = _batch_norm(_conv(y, 4 * filters, 1, 1, f"{name}_3"), f"{name}_3")
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def set_frozen_layers(extractor, frozen_batchnorm=True, frozen_early_stages=True):
    """Sets `trainable` on every layer of a torchvision-layout ResNet's features model.

    Args:
        extractor: the inner `f"{name}_features"` model of `build_torchvision_resnet`.
        frozen_batchnorm: batch norm with fixed statistics (torchvision's `FrozenBatchNorm2d`).
        frozen_early_stages: freeze the stem and res2 (torchvision's
            `trainable_backbone_layers=3`); False makes them trainable again.
    """
    for layer in extractor.layers:
        early = frozen_early_stages and layer.name.startswith(("conv1", "pool1", "stack0_"))
        norm = frozen_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not (early or norm)


def build_torchvision_resnet(
    name="torchvision_resnet50",
    weights=None,
    frozen_batchnorm=None,
    frozen_early_stages=None,
    trainable=True,
    mean=IMAGENET_MEAN_RGB,
    std=IMAGENET_STD_RGB,
    fused_batchnorm=True,
):
    """Builds a torchvision-layout ResNet from raw images to `[C3, C4, C5]`.

    Args:
        name: one of `RESNET_BLOCKS`.
        weights: None (random init) or the path of a `.weights.h5` file saved from the
            inner features model (`model.get_layer(f"{name}_features")`).
        frozen_batchnorm: batch norm with fixed statistics (torchvision's
            `FrozenBatchNorm2d`): the layers run in inference mode and do not train.
            None (default): frozen when `weights` is given, trainable from random weights
            (pass True when pretrained weights are loaded later, as presets do).
        frozen_early_stages: freeze the stem and res2 (torchvision's default
            `trainable_backbone_layers=3`). None: as `frozen_batchnorm`.
        trainable: False freezes the whole backbone.
        mean, std: the `TorchvisionNormalization` of the input.
        fused_batchnorm: swap the batch norm layers for `FusedBatchNormalization`
            (TensorFlow's fused kernel in training mode; faster when the statistics train,
            the same where they are frozen) after `weights` are loaded into Keras's layers.

    Returns:
        A functional `keras.Model` named `name`: float `[B, H, W, 3]` RGB 0-255 (H and W
        even at every stride, e.g. multiples of 32) to three feature maps `[B, H/8, W/8, 512]`,
        `[B, H/16, W/16, 1024]`, `[B, H/32, W/32, 2048]`.

    Raises:
        ValueError: an unknown `name` or a missing `weights` file.
    """
    if name not in RESNET_BLOCKS:
        raise ValueError(f"Unknown `backbone` {name!r}; expected one of {sorted(RESNET_BLOCKS)}.")
    # Both default to "follow the weights" (`retinanet.model.backbone.follow_weights`).
    frozen_batchnorm = weights is not None if frozen_batchnorm is None else frozen_batchnorm
    frozen_early_stages = weights is not None if frozen_early_stages is None \
        else frozen_early_stages
    layers = keras.layers
    normalised = keras.Input((None, None, 3), name="normalised_images")
    x = _batch_norm(_conv(normalised, 64, 7, 2, "conv1"), "conv1")
    x = layers.ReLU(name="conv1_relu")(x)
    # Zero padding equals torchvision's -inf padding here: the inputs are ReLU outputs (>= 0).
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features = []
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), RESNET_BLOCKS[name])):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _bottleneck(x, filters, stride, block == 0, f"stack{stage}_block{block}")
        features.append(x)
    extractor = keras.Model(normalised, features[1:], name=f"{name}_features")
    if weights is not None:
        import os

        if not os.path.isfile(weights):
            raise ValueError(f"`backbone_weights` file not found: {weights}")
        extractor.load_weights(weights)
    if fused_batchnorm:
        from retinanet.model.fused_batchnorm import fuse_batchnorm

        extractor = fuse_batchnorm(extractor)
    set_frozen_layers(extractor, frozen_batchnorm, frozen_early_stages)
    extractor.trainable = trainable
    images = keras.Input((None, None, 3), name="images")
    normalisation = TorchvisionNormalization(mean, std, name="torchvision_normalization")
    return keras.Model(images, extractor(normalisation(images)), name=name)
