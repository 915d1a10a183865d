"""keras-hub RetinaNet presets built offline with random weights, for the tests.

`keras_hub_detector` builds the detector the way keras-hub's
``tools/checkpoint_conversion/convert_retinanet_checkpoints.py`` does (but with the ResNet50
from `ResNetBackbone` constructor arguments, as its ``from_preset`` downloads), and
`save_preset` writes it as a preset directory that `RetinaNet.from_preset`,
`--config.model.init_from` and `retinanet predict --checkpoint` read without a network.
"""

import keras
import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("v1", "v2")


def keras_hub_detector(architecture="v1", image_size=128, seed=1):
    """keras-hub's `RetinaNetObjectDetector` (91 COCO logits) with trained-looking outputs.

    Box deltas stay well inside torchvision's exp clamp, and class 1 (person) is the best
    class of every anchor, with its scores spread out, so decoders have detections to agree
    on.

    Args:
        architecture: `"v1"` (torchvision `retinanet_resnet50_fpn`) or `"v2"` (`_v2`).
        image_size: the square side of the preset's image converter.
        seed: the random seed of the weights.
    """
    import keras_hub
    from keras_hub.src.models.retinanet.retinanet_backbone import RetinaNetBackbone
    from keras_hub.src.models.retinanet.retinanet_image_converter import (
        RetinaNetImageConverter,
    )
    from keras_hub.src.models.retinanet.retinanet_object_detector_preprocessor import (
        RetinaNetObjectDetectorPreprocessor,
    )

    keras.utils.set_random_seed(seed)
    # `Backbone.from_preset("resnet_50_imagenet", load_weights=False)`'s config.
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
    )
    backbone = RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=architecture == "v2"
    )
    converter = RetinaNetImageConverter(
        image_size=(image_size, image_size),
        pad_to_aspect_ratio=True,
        crop_to_aspect_ratio=False,
        scale=[1.0 / 255.0 / s for s in STD],
        offset=[-m / s for m, s in zip(MEAN, STD)],
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=91,
        preprocessor=RetinaNetObjectDetectorPreprocessor(image_converter=converter),
        use_prediction_head_norm=architecture == "v2",
    )
    box_output = detector.box_head.prediction_layer
    box_output.kernel.assign(box_output.kernel * 0.02)
    box_output.bias.assign(np.zeros(box_output.bias.shape, "float32"))
    cls_output = detector.classification_head.prediction_layer
    cls_output.kernel.assign(cls_output.kernel * 0.05)
    bias = np.full((9, 91), -4.0, "float32")
    bias[:, 1] = 3.0
    cls_output.bias.assign(bias.reshape(-1))
    return detector


def save_preset(directory, architecture="v1", image_size=128):
    """Writes `keras_hub_detector(architecture, image_size)` as a preset; returns the detector."""
    detector = keras_hub_detector(architecture, image_size)
    detector.save_to_preset(str(directory))
    return detector
