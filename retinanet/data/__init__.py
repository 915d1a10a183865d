"""Detection data: readers for COCO, Pascal VOC, YOLO, CSV, TFDS and a synthetic shapes set,
all giving a DetectionDataset, and `pipeline` turning one into training or evaluation batches.

Formats are those of docs/CONTRACTS.md: boxes are xyxy in absolute pixels.
"""

from retinanet.data.coco import from_coco
from retinanet.data.csv_reader import from_csv
from retinanet.data.dataset import EXAMPLE_KEYS, DetectionDataset
from retinanet.data.pipeline import pipeline, to_keras_cv
from retinanet.data.shapes import SHAPE_CLASSES, shapes
from retinanet.data.tfds import from_tfds
from retinanet.data.validation import DataWarning, Record
from retinanet.data.voc import VOC_CLASSES, from_voc
from retinanet.data.yolo import from_data_yaml, from_yolo

__all__ = [
    "DataWarning", "DetectionDataset", "EXAMPLE_KEYS", "Record", "SHAPE_CLASSES", "VOC_CLASSES",
    "from_coco", "from_csv", "from_data_yaml", "from_tfds", "from_voc", "from_yolo", "pipeline", "shapes",
    "to_keras_cv",
]
