"""RetinaNet object detection for TensorFlow and Keras 3."""

from retinanet import losses, ops
from retinanet.anchors import AnchorGenerator
from retinanet.matching import LabelEncoder
from retinanet.model import DetectionPostprocessor, RetinaNet

__version__ = "0.1.0"

__all__ = [
    "AnchorGenerator",
    "DetectionPostprocessor",
    "LabelEncoder",
    "RetinaNet",
    "losses",
    "ops",
]
