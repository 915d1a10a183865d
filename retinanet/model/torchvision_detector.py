"""torchvision's RetinaNet architecture as a `RetinaNet`, and COCO's class names.

Both routes to torchvision's detectors build on this: keras-hub presets
(`retinanet.model.presets`) and torchvision state dicts (`retinanet.model.torchvision_import`)
fill its weights; `retinanet.model.pretrained.load_pretrained` is the one entry point.
"""

from retinanet.anchors import AnchorGenerator
from retinanet.model.fpn import FeaturePyramid
from retinanet.model.heads import RetinaNetHead
from retinanet.model.postprocess import DetectionPostprocessor
from retinanet.model.retinanet import RetinaNet
from retinanet.model.torchvision_resnet import (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB,
                                                build_torchvision_resnet)

BACKBONE = "torchvision_resnet50"

# torchvision's `_COCO_CATEGORIES`: index = COCO category id.
COCO_CLASS_NAMES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# {COCO category id: name} for the 80 real categories (ids 1..90).
COCO_CATEGORIES = {
    index: name
    for index, name in enumerate(COCO_CLASS_NAMES)
    if name not in ("__background__", "N/A")
}


# torchvision's `detections_per_img`.
TORCHVISION_MAX_DETECTIONS = 300


def build_torchvision_retinanet(
    num_classes,
    p6_input="p5",
    use_group_norm=False,
    group_norm_epsilon=1e-5,
    fpn_filters=256,
    head_convs=4,
    head_filters=256,
    anchors=None,
    mean=None,
    std=None,
    class_names=None,
    extra_padding="symmetric",
    max_detections=TORCHVISION_MAX_DETECTIONS,
    preprocessing="torchvision",
):
    """A randomly initialised `RetinaNet` with torchvision's RetinaNet architecture.

    torchvision v1 (`retinanet_resnet50_fpn`) is `p6_input="p5"`; v2
    (`retinanet_resnet50_fpn_v2`) is `p6_input="c5", use_group_norm=True`. The defaults are
    torchvision's rules: P6 and P7 padded 1 on every side, GroupNorm epsilon 1e-5, anchors
    in its convention (canvases padded to 32, strides `side // grid`), up to 300 detections,
    and its transform's resizing and padding (`preprocessing`, see `retinanet.preprocess`).

    Args:
        num_classes: logits per anchor (91 for torchvision's COCO models).
        p6_input: `"p5"` or `"c5"`, see `retinanet.model.FeaturePyramid`.
        use_group_norm, group_norm_epsilon: GroupNorm(32) in both subnets.
        fpn_filters, head_convs, head_filters: widths and depth of the FPN and subnets.
        anchors: `retinanet.AnchorGenerator` keyword arguments; default torchvision's.
        mean, std: the input normalisation (default ImageNet's, on RGB in 0-1).
        class_names: optional names of the classes, stored on the model.
        extra_padding: the P6/P7 convs' padding (`FeaturePyramid`); keras-hub's port uses
            `"same"`.
        max_detections: detections kept per image.
        preprocessing: the inputs' resize and padding rules; keras-hub's port uses
            `"retinanet"`'s black padding.

    Returns:
        A built `retinanet.RetinaNet` on the `"torchvision_resnet50"` backbone.
    """
    anchor_generator = AnchorGenerator(**(anchors or {"convention": "torchvision"}))
    num_anchors = anchor_generator.num_anchors_per_location
    head = dict(
        num_anchors_per_location=num_anchors, num_convs=head_convs, filters=head_filters,
        use_group_norm=use_group_norm, group_norm_epsilon=group_norm_epsilon,
    )
    return RetinaNet(
        num_classes,
        backbone=build_torchvision_resnet(
            BACKBONE, mean=mean or IMAGENET_MEAN_RGB, std=std or IMAGENET_STD_RGB,
            # The preset's pretrained weights are set afterwards: freeze as for pretrained.
            frozen_batchnorm=True, frozen_early_stages=True,
        ),
        anchor_generator=anchor_generator,
        fpn=FeaturePyramid(
            fpn_filters, anchor_generator.max_level, p6_input=p6_input,
            extra_padding=extra_padding, name="fpn"
        ),
        classification_head=RetinaNetHead(
            num_classes, prior_probability=0.01, name="classification_head", **head
        ),
        box_head=RetinaNetHead(4, name="box_head", **head),
        postprocessor=DetectionPostprocessor(
            anchor_generator=anchor_generator, max_detections=max_detections,
            name="postprocessor"),
        class_names=class_names,
        preprocessing=preprocessing,
    )
