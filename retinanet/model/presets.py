"""torchvision's COCO-trained RetinaNets, imported from keras-hub presets into `RetinaNet`.

keras-hub ports torchvision's `retinanet_resnet50_fpn` (preset
`retinanet_resnet50_fpn_coco`) and `retinanet_resnet50_fpn_v2` (preset
`retinanet_resnet50_fpn_v2_coco`). `from_keras_hub` rebuilds the same network as a
`retinanet.RetinaNet` (torchvision-layout ResNet50, P6 from P5 or C5, GroupNorm heads for v2,
torchvision's anchors and input normalisation) and copies every weight across, so the model
then trains, evaluates, saves and exports like any other `RetinaNet`. keras-hub is imported
only here, and only when a preset is loaded: a converted `.keras` file loads without it.

The COCO heads have 91 logits, torchvision's layout: logit `i` is COCO category id `i`;
0 (`"__background__"`) and the ten unused ids (`"N/A"`) are never trained as positives.
"""

import os

import keras
import numpy as np

from retinanet.model.torchvision_detector import (  # noqa: F401  (COCO names re-exported)
    BACKBONE, COCO_CATEGORIES, COCO_CLASS_NAMES, build_torchvision_retinanet)

KERAS_HUB_PRESETS = ("retinanet_resnet50_fpn_coco", "retinanet_resnet50_fpn_v2_coco")



def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "Loading a keras-hub preset needs keras-hub: pip install 'retinanet[pretrained]'."
        ) from error
    return keras_hub


def load_keras_hub_detector(preset):
    """keras-hub's `RetinaNetObjectDetector` for a preset name (downloads) or directory.

    Raises:
        ValueError: `preset` is neither a known preset name nor an existing directory.
    """
    if preset not in KERAS_HUB_PRESETS and not os.path.isdir(preset):
        raise ValueError(
            f"`preset` must be one of {KERAS_HUB_PRESETS} or a keras-hub preset directory, "
            f"got {preset!r}."
        )
    keras_hub = _import_keras_hub()
    return keras_hub.models.RetinaNetObjectDetector.from_preset(preset)


def _check(condition, what):
    if not condition:
        raise ValueError(f"Unsupported keras-hub RetinaNet: {what}.")


def _normalisation(detector):
    """(mean, std) of RGB in 0-1 from the preset's image converter, else ImageNet's."""
    from retinanet.model.torchvision_resnet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    converter = getattr(getattr(detector, "preprocessor", None), "image_converter", None)
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    if scale is None or offset is None:
        return IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    # The converter computes x * scale + offset = (x / 255 - mean) / std.
    scale = np.broadcast_to(np.asarray(scale, "float64"), (3,))
    offset = np.broadcast_to(np.asarray(offset, "float64"), (3,))
    std = 1.0 / (255.0 * scale)
    return tuple(-offset * std), tuple(std)


def _architecture(detector):
    """Our constructor arguments for a keras-hub detector; ValueError where we cannot hold it."""
    backbone = detector.backbone
    encoder = backbone.image_encoder
    _check(
        getattr(encoder, "block_type", None) == "bottleneck_block"
        and not encoder.use_pre_activation
        and list(encoder.input_conv_filters) == [64]
        and list(encoder.input_conv_kernel_sizes) == [7]
        and list(encoder.stackwise_num_filters) == [64, 128, 256, 512]
        and list(encoder.stackwise_num_blocks) == [3, 4, 6, 3]
        and list(encoder.stackwise_num_strides) == [1, 2, 2, 2],
        "the image encoder must be keras-hub's ResNet50 (ResNetBackbone, bottleneck blocks "
        "3-4-6-3, no pre-activation)",
    )
    pyramid = backbone.feature_pyramid
    _check(
        (backbone.min_level, backbone.max_level) == (3, 7),
        f"pyramid levels must be 3..7, got {backbone.min_level}..{backbone.max_level}",
    )
    _check(not pyramid.use_batch_norm, "the FPN must not use batch norm")
    heads = (detector.classification_head, detector.box_head)
    for head in heads:
        _check(head.num_conv_layers == heads[0].num_conv_layers, "both heads need equal depth")
        _check(head.num_filters == heads[0].num_filters, "both heads need equal widths")
    generator = detector.anchor_generator
    group_norm_epsilon = 1e-3
    if detector.use_prediction_head_norm:
        group_norm_epsilon = float(heads[0].group_norm_layers[0].epsilon)
    return {
        "num_classes": int(detector.num_classes),
        # keras-hub's `use_p5=True` feeds its *input* P5, i.e. C5, to the P6 conv.
        "p6_input": "c5" if pyramid.use_p5 else "p5",
        "fpn_filters": int(pyramid.num_filters),
        "head_convs": int(heads[0].num_conv_layers),
        "head_filters": int(heads[0].num_filters),
        "use_group_norm": bool(detector.use_prediction_head_norm),
        "group_norm_epsilon": group_norm_epsilon,
        "anchors": dict(
            min_level=int(generator.min_level),
            max_level=int(generator.max_level),
            anchor_size=float(generator.anchor_size),
            scales=[2 ** (i / generator.num_scales) for i in range(generator.num_scales)],
            aspect_ratios=[float(r) for r in generator.aspect_ratios],
            convention="torchvision",
        ),
    }


def _copy_layer(source, target, what):
    """Copies a keras-hub layer's weights into ours, by variable name, checking shapes.

    A target bias the source lacks (keras-hub's GroupNorm heads have bias-free convs) is
    set to zero, which computes the same.
    """
    sources = {variable.name: variable for variable in source.weights}
    targets = {variable.name: variable for variable in target.weights}
    for name, variable in targets.items():
        if name not in sources:
            if name == "bias":
                variable.assign(np.zeros(variable.shape, variable.dtype))
                continue
            raise ValueError(f"Cannot convert {what}: keras-hub's layer has no {name!r}.")
        value = keras.ops.convert_to_numpy(sources[name])
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Cannot convert {what} ({name}): keras-hub's shape {tuple(value.shape)} "
                f"does not match {tuple(variable.shape)}."
            )
        variable.assign(value)
    extra = set(sources) - set(targets)
    if extra:
        raise ValueError(f"Cannot convert {what}: no place for keras-hub's {sorted(extra)}.")


def _copy_head(source, target, what, copy_output=True):
    _check(len(source.conv_layers) == len(target.convs), f"{what} depth differs")
    for index, conv in enumerate(source.conv_layers):
        _copy_layer(conv, target.convs[index], f"{what} conv {index} ({conv.name})")
    for index, norm in enumerate(source.group_norm_layers):
        _copy_layer(norm, target.norms[index], f"{what} group norm {index} ({norm.name})")
    if copy_output:
        _copy_layer(source.prediction_layer, target.output_conv, f"{what} output layer")


def from_keras_hub(detector, num_classes=None, torchvision_rules=True):
    """Converts a keras-hub `RetinaNetObjectDetector` into a `retinanet.RetinaNet`.

    keras-hub ported torchvision's weights into a model that is not torchvision's: its P6
    and P7 convs pad "same" (0 before, 1 after on the even inputs they get) where torchvision
    pads 1 on each side, and its GroupNorm epsilon is 1e-3 where torchvision's is 1e-5. With
    `torchvision_rules` (the default) the converted model is torchvision's detector (see
    `build_torchvision_retinanet`); without, it is keras-hub's model exactly.

    Args:
        detector: a `keras_hub.models.RetinaNetObjectDetector` on keras-hub's ResNet50
            (as in its two COCO presets).
        num_classes: None keeps the detector's classes (91 COCO logits, with
            `model.class_names` = `COCO_CLASS_NAMES`); an int K gives a new, prior-initialised
            last layer of the class subnet with K outputs and keeps every other weight.

    Returns:
        A `retinanet.RetinaNet` whose `model(images)` on raw RGB 0-255 images equals the
        detector's outputs on its preprocessed images (anchor order and box deltas agree).

    Raises:
        ValueError: an architecture `RetinaNet` cannot hold, or a weight whose shape differs
            (naming the layer).
    """
    architecture = _architecture(detector)
    source_classes = architecture.pop("num_classes")
    new_classes = num_classes is not None
    if new_classes and int(num_classes) < 1:
        raise ValueError(f"`num_classes` must be at least 1, got {num_classes}.")
    class_names = None
    if not new_classes and source_classes == len(COCO_CLASS_NAMES):
        class_names = list(COCO_CLASS_NAMES)
    mean, std = _normalisation(detector)
    if torchvision_rules:
        architecture["group_norm_epsilon"] = 1e-5
    else:
        architecture.update(extra_padding="same", max_detections=100, preprocessing="retinanet")
    model = build_torchvision_retinanet(
        int(num_classes) if new_classes else source_classes,
        mean=mean, std=std, class_names=class_names, **architecture,
    )
    encoder = detector.backbone.image_encoder
    features = model.backbone.get_layer(f"{BACKBONE}_features")
    for layer in encoder.layers:
        if not layer.weights:
            continue
        try:
            target = features.get_layer(layer.name)
        except ValueError as error:
            raise ValueError(
                f"Cannot convert backbone layer {layer.name!r}: not in ours."
            ) from error
        _copy_layer(layer, target, f"backbone layer {layer.name!r}")
    pyramid = detector.backbone.feature_pyramid
    for index, level in enumerate(("P3", "P4", "P5")):
        _copy_layer(pyramid.lateral_conv_layers[level], model.fpn.lateral_convs[index],
                    f"FPN lateral conv {level}")
        _copy_layer(pyramid.output_conv_layers[level], model.fpn.output_convs[index],
                    f"FPN output conv {level}")
    for index, level in enumerate(range(6, model.anchor_generator.max_level + 1)):
        _copy_layer(pyramid.output_conv_layers[f"P{level}"], model.fpn.extra_convs[index],
                    f"FPN conv P{level}")
    _copy_head(detector.box_head, model.box_head, "box head")
    _copy_head(detector.classification_head, model.classification_head, "classification head",
               copy_output=not new_classes)
    return model
