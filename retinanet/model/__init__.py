"""The RetinaNet network and its parts."""

from retinanet.model.backbone import BACKBONES, build_backbone, build_simple_backbone
from retinanet.model.fpn import FeaturePyramid
from retinanet.model.heads import RetinaNetHead
from retinanet.model.postprocess import DetectionPostprocessor
from retinanet.model.retinanet import RetinaNet

__all__ = [
    "BACKBONES",
    "DetectionPostprocessor",
    "FeaturePyramid",
    "RetinaNet",
    "RetinaNetHead",
    "build_backbone",
    "build_simple_backbone",
]
