"""TensorFlow Datasets reader (coco/2017, voc/2007, voc/2012, and any TFDS detection set with
an "image" and "objects" {"bbox", "label"}).

TFDS boxes are normalised [ymin, xmin, ymax, xmax]; we convert to absolute xyxy with the
decoded image's size: x1 = xmin * width, y1 = ymin * height, x2 = xmax * width,
y2 = ymax * height, clipped to the image. "objects/is_crowd" (COCO) and
"objects/is_difficult" (VOC) map to is_crowd and difficult.

TFDS annotations stream from TFRecords, so they are not validated eagerly like the file
readers. A box with x2 <= x1 or y2 <= y1 (COCO has a few zero-width ones) fails the
iteration with tf.errors.InvalidArgumentError naming the image file, or with
skip_invalid=True is dropped in the graph and counted: `dataset.skipped` holds the running
count and one warning line is logged at the first skip (then at most once a minute).
`.records` makes one eager pass over the annotations (images are not decoded) and applies the
same rule with a ValueError.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf
from absl import logging

from retinanet.data.dataset import DetectionDataset
from retinanet.data.validation import EMPTY_BOX, Problems, Record

# COCO's 80 category ids, in the order of TFDS coco's 80 labels (sorted by id).
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)


class _SkipCounter:
    """Counts boxes dropped inside the graph (called through tf.py_function)."""

    def __init__(self, reader: str, skipped: dict):
        self.reader = reader
        self.skipped = skipped
        self.lock = threading.Lock()

    def add(self, count, filename):
        with self.lock:
            boxes = self.skipped["boxes"]
            boxes[EMPTY_BOX] = boxes.get(EMPTY_BOX, 0) + int(count)
            total = boxes[EMPTY_BOX]
        logging.log_every_n_seconds(
            logging.WARNING, "%s: skipped %d boxes so far (%s; latest in %s) because "
            "skip_invalid=True", 60, self.reader, total, EMPTY_BOX,
            filename.numpy().decode("utf-8", "replace"))
        return np.int32(0)


def _image_id(element, index):
    if "image/id" in element:
        return tf.strings.as_string(element["image/id"])
    if "image/filename" in element:
        return tf.strings.regex_replace(element["image/filename"], r"\.[^.]*$", "")
    return tf.strings.as_string(index)


def _filename(element, index):
    if "image/filename" in element:
        return element["image/filename"]
    return tf.strings.join(["example ", tf.strings.as_string(index)])


def _annotations(element, height, width):
    """Converts TFDS objects to absolute xyxy; returns (dict of per-box tensors, valid)."""
    objects = element["objects"]
    bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
    count = tf.shape(bbox)[0]
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(bbox, axis=1)
    boxes = tf.stack([tf.clip_by_value(xmin * width, 0.0, width),
                      tf.clip_by_value(ymin * height, 0.0, height),
                      tf.clip_by_value(xmax * width, 0.0, width),
                      tf.clip_by_value(ymax * height, 0.0, height)], axis=1)
    falses = tf.zeros([count], tf.bool)
    annotations = {
        "boxes": boxes,
        "classes": tf.cast(tf.reshape(objects["label"], [-1]), tf.int32),
        "is_crowd": tf.reshape(objects["is_crowd"], [-1]) if "is_crowd" in objects else falses,
        "difficult": (tf.reshape(objects["is_difficult"], [-1])
                      if "is_difficult" in objects else falses),
    }
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return annotations, valid


def from_tfds(name: str, split: str, data_dir: str | None = None, *,
              skip_invalid: bool = False, download: bool = False) -> DetectionDataset:
    """Loads a TFDS detection dataset, e.g. "coco/2017", "voc/2007", "voc/2012".

    Args:
        name: TFDS name, with optional version/config ("coco/2017", "voc/2012").
        split: TFDS split, e.g. "train", "validation", "test", "train[:10%]".
        data_dir: TFDS data folder; None for TFDS's default.
        skip_invalid: drop and count zero-area boxes instead of failing (see module docstring).
        download: run download_and_prepare first. False by default: nothing downloads unless
            asked, and a missing dataset raises ValueError.

    Returns:
        DetectionDataset; class_names from the "objects/label" feature, category_ids the COCO
        ids for coco/*, image_id "image/id" (COCO) or the file name without extension (VOC).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - TFDS raises various types
        raise ValueError(f"name {name!r}: not a TFDS dataset ({error})") from None
    if download:
        builder.download_and_prepare()
    features = builder.info.features
    objects = features["objects"] if "objects" in features else None
    if "image" not in features or objects is None or "bbox" not in objects.feature or \
            "label" not in objects.feature:
        raise ValueError(f"name {name!r}: not a detection dataset (needs features 'image' and "
                         "'objects' with 'bbox' and 'label')")
    class_names = list(objects["label"].names)
    category_ids = COCO_CATEGORY_IDS if name.split("/")[0] == "coco" and \
        len(class_names) == len(COCO_CATEGORY_IDS) else None
    try:
        source = builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
    except AssertionError as error:
        raise ValueError(f"{name} split {split!r} is not prepared under {builder.data_dir} "
                         f"(pass download=True to prepare it): {error}") from None
    source = source.enumerate()  # (index, element): index names examples without a filename

    length = _length(builder, split, source)
    reader = f"from_tfds({name!r}, {split!r})"
    skipped = {"images": {}, "boxes": {}}
    counter = _SkipCounter(reader, skipped)

    def decode(index, element):
        image = tf.io.decode_image(element["image"], channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        shape = tf.shape(image)
        annotations, valid = _annotations(element, shape[0], shape[1])
        filename = _filename(element, index)
        num_invalid = tf.reduce_sum(tf.cast(~valid, tf.int32))
        if skip_invalid:
            annotations = {k: tf.boolean_mask(v, valid) for k, v in annotations.items()}
            counted = tf.cond(num_invalid > 0,
                              lambda: tf.py_function(counter.add, [num_invalid, filename],
                                                     tf.int32),
                              lambda: tf.constant(0, tf.int32))
            with tf.control_dependencies([counted]):
                annotations["boxes"] = tf.identity(annotations["boxes"])
        else:
            tf.debugging.Assert(num_invalid == 0, [
                tf.strings.join([filename, f": {EMPTY_BOX} after converting the TFDS "
                                 "box to pixels (pass skip_invalid=True to skip such boxes "
                                 "and count them); number of such boxes:"]), num_invalid])
        return {"image": image, **annotations, "image_id": _image_id(element, index)}

    def records_fn():
        def light(index, element):
            encoded = element["image"]
            shape = tf.cond(tf.io.is_jpeg(encoded),
                            lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                            lambda: tf.shape(tf.io.decode_image(
                                encoded, channels=3, expand_animations=False))[:2])
            annotations, valid = _annotations(element, shape[0], shape[1])
            return {"image_id": _image_id(element, index), "filename": _filename(element, index),
                    "size": shape, "valid": valid, **annotations}

        problems = Problems(reader, skip_invalid)
        records = []
        for item in source.map(light, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
            filename = item["filename"].decode("utf-8", "replace")
            for i in np.flatnonzero(~item["valid"]):
                problems.box(f"{name} {split} {filename}", EMPTY_BOX,
                             f"box {i}: xyxy {item['boxes'][i].tolist()}")
            keep = item["valid"]
            records.append(Record(
                image_id=item["image_id"].decode("utf-8"), path=None,
                height=int(item["size"][0]), width=int(item["size"][1]),
                boxes=item["boxes"][keep].astype(np.float32).reshape(-1, 4),
                classes=item["classes"][keep].astype(np.int32),
                is_crowd=item["is_crowd"][keep].astype(bool),
                difficult=item["difficult"][keep].astype(bool)))
        problems.finish(len(records), f"{name} split {split!r}")
        return records

    dataset = DetectionDataset.from_stream(
        class_names, source, decode, length, records_fn, category_ids=category_ids,
        name=f"tfds:{name}:{split}")
    dataset.skipped = skipped  # the running count of boxes dropped while iterating
    return dataset


def _length(builder, split, source) -> int:
    cardinality = int(source.cardinality())
    if cardinality >= 0:
        return cardinality
    try:
        count = int(builder.info.splits[split].num_examples)
    except Exception:  # noqa: BLE001 - unknown split metadata (e.g. mocked data)
        count = 0
    if count > 0:
        return count
    return int(source.reduce(0, lambda n, _: n + 1))
