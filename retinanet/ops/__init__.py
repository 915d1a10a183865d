"""Pure box math: formats and pairwise IoU (`boxes`), the box coder (`coder`) and NMS (`nms`).

Boxes are `xyxy` in absolute pixels with continuous coordinates (width = x2 - x1, no +1)
unless an argument says otherwise. Every function accepts numpy arrays or tensors, returns
tensors, has no state and works eagerly and inside a `tf.function`.
"""

from retinanet.ops.boxes import BOX_FORMATS, aligned_iou, box_iou, convert_format
from retinanet.ops.coder import BBOX_SHIFT_CLIP, BBOX_XFORM_CLIP, decode_boxes, encode_boxes
from retinanet.ops.nms import batched_nms, nms, soft_nms

__all__ = [
    "BBOX_SHIFT_CLIP",
    "BBOX_XFORM_CLIP",
    "BOX_FORMATS",
    "aligned_iou",
    "batched_nms",
    "box_iou",
    "convert_format",
    "decode_boxes",
    "encode_boxes",
    "nms",
    "soft_nms",
]
