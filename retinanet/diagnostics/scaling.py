"""Ground-truth boxes at the training size, from the parsed records (no image decoded).

Every box is scaled with the pipeline's own rule (`retinanet.preprocess`, as in evaluation:
no scale jitter or crop), and every image gets the padded canvas its anchors cover.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def records_and_names(data):
    """(records, class_names or None) from a DetectionDataset or a list of Records."""
    if hasattr(data, "records"):
        return list(data.records), list(data.class_names)
    return list(data), None


@dataclasses.dataclass
class ScaledBoxes:
    """Every box of a dataset at the training size (the evaluation-style resize).

    Attributes:
        boxes: float32 `[N, 4]`, xyxy, absolute pixels of the resized image.
        classes: int32 `[N]`.
        image_index: int `[N]`, the index of each box's record.
        box_offsets: int `[I + 1]`; the boxes of record `i` are
            `boxes[box_offsets[i]:box_offsets[i + 1]]`.
        image_scale: float32 `[I]`, the resize factor of each record.
        image_canvas: int `[I, 2]`, the padded (height, width) the anchors cover.
    """

    boxes: np.ndarray
    classes: np.ndarray
    image_index: np.ndarray
    box_offsets: np.ndarray
    image_scale: np.ndarray
    image_canvas: np.ndarray

    @property
    def widths(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]).astype(np.float64)

    @property
    def heights(self) -> np.ndarray:
        return (self.boxes[:, 3] - self.boxes[:, 1]).astype(np.float64)

    @property
    def areas(self) -> np.ndarray:
        return self.widths * self.heights

    @property
    def canvas(self) -> np.ndarray:
        """int `[N, 2]`, the canvas (height, width) of each box's image."""
        return self.image_canvas[self.image_index]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def training_sizes(records, image_size, size_multiple=None):
    """The resize factor and canvas of every record, by the pipeline's rule.

    Args:
        records: list of `retinanet.data.Record`.
        image_size: None, int S or (min_side, max_side), as the pipeline takes it.
        size_multiple: the canvas multiple, the anchor generator's `stride_multiple`
            (None: the default levels' 128).

    Returns:
        `(scale float32 [I], canvas int [I, 2] as (height, width))`.
    """
    import tensorflow as tf

    from retinanet.preprocess import (DEFAULT_SIZE_MULTIPLE, check_image_size,
                                      resize_scale_and_canvas)

    size_multiple = size_multiple or DEFAULT_SIZE_MULTIPLE
    image_size = check_image_size(image_size)
    cache = {}  # (height, width) -> (scale, canvas); datasets have few distinct sizes
    scales = np.zeros(len(records), np.float32)
    canvases = np.zeros((len(records), 2), np.int64)
    for index, record in enumerate(records):
        key = (int(record.height), int(record.width))
        if key not in cache:
            scale, canvas = resize_scale_and_canvas(
                tf.constant(key[0], tf.int32), tf.constant(key[1], tf.int32), image_size,
                size_multiple)
            cache[key] = (np.float32(scale.numpy()), canvas.numpy().astype(np.int64))
        scales[index], canvases[index] = cache[key]
    return scales, canvases


def scaled_boxes(records, image_size, size_multiple=None) -> ScaledBoxes:
    """The boxes of `records` at the training size; see `ScaledBoxes`.

    The boxes are multiplied by the image's scale in float32, as the pipeline does.
    """
    scales, canvases = training_sizes(records, image_size, size_multiple)
    counts = np.array([len(r) for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if offsets[-1]:
        boxes = np.concatenate([np.asarray(r.boxes, np.float32).reshape(-1, 4) * scales[i]
                                for i, r in enumerate(records)]).astype(np.float32)
        classes = np.concatenate([np.asarray(r.classes, np.int32).reshape(-1)
                                  for r in records])
    else:
        boxes, classes = np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
    return ScaledBoxes(boxes=boxes, classes=classes,
                       image_index=np.repeat(np.arange(len(records)), counts),
                       box_offsets=offsets, image_scale=scales, image_canvas=canvases)
