"""DetectionDataset: class names, parsed annotations and a tf.data of per-image examples.

Each example is the dict of docs/CONTRACTS.md:
  "image"     uint8 [H, W, 3] (grayscale and RGBA decoded to 3 channels)
  "boxes"     float32 [N, 4], xyxy, absolute pixels of that image, clipped to it
  "classes"   int32 [N], 0-based into class_names
  "image_id"  string scalar
  "is_crowd"  bool [N] (COCO iscrowd; False elsewhere)
  "difficult" bool [N] (VOC difficult; False elsewhere)
"""

from __future__ import annotations

import collections
import unicodedata
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from retinanet.data.image_header import encoded_image_size

EXAMPLE_KEYS = ("image", "boxes", "classes", "image_id", "is_crowd", "difficult")

# Far above any real label set (COCO 80, LVIS 1203, Objects365 365), far below what a
# careless file (a CSV with the file-name and class columns swapped) produces.
MAX_CLASSES = 100_000
MAX_CLASS_NAME_LENGTH = 256


def class_name_problem(name) -> str | None:
    """Why `name` cannot be a class name, or None when it can.

    A class name is a non-empty str of at most MAX_CLASS_NAME_LENGTH characters without
    control characters (NUL, newline, tab, ...: they break reports, CSV and JSON files).
    """
    if not isinstance(name, str):
        return f"must be a str, got {type(name).__name__} {_clip(repr(name))}"
    if not name:
        return "must be non-empty"
    if len(name) > MAX_CLASS_NAME_LENGTH:
        return (f"has {len(name):,} characters, over {MAX_CLASS_NAME_LENGTH}: "
                f"{_clip(repr(name))}")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return f"holds the control character {control!r}: {_clip(repr(name))}"
    return None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def validate_class_names(class_names, argument: str = "class_names") -> list:
    """Returns class_names as a list of unique valid names (see `class_name_problem`).

    Raises:
        ValueError naming `argument`: not a list, empty, over MAX_CLASSES names, an invalid
        name, duplicates.
    """
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise ValueError(f"{argument} must be a list of str, got {type(class_names).__name__}")
    names = list(class_names)
    if not names:
        raise ValueError(f"{argument} is empty")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{argument} has {len(names):,} names, over the limit of "
                         f"{MAX_CLASSES:,}")
    for index, name in enumerate(names):
        problem = class_name_problem(name)
        if problem:
            raise ValueError(f"{argument}[{index}] {problem}")
    counts = collections.Counter(names)
    duplicates = sorted(n for n, c in counts.items() if c > 1)
    if duplicates:
        raise ValueError(f"{argument} has duplicates: {duplicates}")
    return names


class DetectionDataset:
    """A detection dataset: class names, per-image records and a tf.data of examples.

    Readers (`from_coco`, `from_voc`, `from_yolo`, `from_csv`, `from_tfds`, `shapes`) build it;
    `retinanet.data.pipeline` turns it into batches.

    Attributes:
        class_names: list of str; class id i is class_names[i].
        category_ids: list of int or None; the dataset's own id of each class (COCO category
            ids), so evaluation can report them. None where the format has no such ids.
        records: list of Record, the parsed annotations (boxes xyxy in absolute pixels), usable
            without decoding any image. For TFDS datasets it is built lazily by one pass over the
            split's annotations (images are not decoded, only their headers parsed).
        skipped: {"images": {problem: n}, "boxes": {problem: n}}, what skip_invalid skipped.
        clipped: int, boxes the reader clipped to their image because they reached more than
            `validation.CLIP_TOLERANCE` pixels outside it (kept, not in `skipped`).
        examples: tf.data.Dataset of the per-image dicts above, in records order.

    Args:
        class_names: list of str.
        records: list of Record with `path` set, or with `images` given.
        images: optional uint8 array [len(records), H, W, 3] of in-memory images (the
            generated shapes set); when given, records' paths are ignored.
        category_ids: optional list of int, one per class.
        name: str for messages and repr.
        skipped: the reader's skip counts.
        clipped: the reader's count of clipped boxes.
    """

    def __init__(self, class_names, records, *, images=None, category_ids=None,
                 name: str = "dataset", skipped=None, clipped: int = 0):
        self.class_names = validate_class_names(class_names)
        self.name = name
        self.skipped = skipped or {"images": {}, "boxes": {}}
        self.clipped = int(clipped)
        self.category_ids = None if category_ids is None else [int(i) for i in category_ids]
        if self.category_ids is not None and len(self.category_ids) != len(self.class_names):
            raise ValueError(f"category_ids has {len(self.category_ids)} ids for "
                             f"{len(self.class_names)} class_names")
        records = list(records)
        if not records:
            raise ValueError(f"{name}: records is empty")
        if images is not None:
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or \
                    images.shape[0] != len(records):
                raise ValueError(f"images must be uint8 [{len(records)}, H, W, 3], got "
                                 f"{images.dtype} {images.shape}")
        elif any(r.path is None for r in records):
            raise ValueError(f"{name}: every record needs a path when images is not given")
        num_classes = len(self.class_names)
        for record in records:
            if record.classes.size and (record.classes.min() < 0 or
                                        record.classes.max() >= num_classes):
                raise ValueError(f"{name}: record {record.image_id!r} has class ids outside "
                                 f"[0, {num_classes})")
        self._records = records
        self._records_fn = None
        self.source_holds_images = False  # source() yields paths or indices: cheap to shuffle
        self._images = images
        self._length = len(records)
        self._source = None
        self._decode = None
        self._examples = None

    @classmethod
    def from_stream(cls, class_names, source: tf.data.Dataset, decode: Callable,
                    length: int, records_fn: Callable[[], list], *, category_ids=None,
                    name: str = "dataset"):
        """A dataset whose annotations stream from tf.data (TFDS), not from Python records.

        Args:
            source: tf.data of light elements (encoded image bytes and annotations).
            decode: maps a source element to an example dict.
            length: number of images.
            records_fn: builds the Record list on first access of `.records`.
        """
        self = cls.__new__(cls)
        self.class_names = validate_class_names(class_names)
        self.name = name
        self.skipped = {"images": {}, "boxes": {}}
        self.clipped = 0
        self.category_ids = None if category_ids is None else [int(i) for i in category_ids]
        self._records = None
        self._records_fn = records_fn
        self.source_holds_images = True  # encoded images: shuffle with a bounded buffer
        self._images = None
        self._length = int(length)
        self._source = source
        self._decode = decode
        self._examples = None
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streamed(self) -> bool:
        """True while the records are not built yet (TFDS): reading them is a full pass."""
        return self._records is None

    @property
    def records(self) -> list:
        if self._records is None:
            self._records = list(self._records_fn())
        return self._records

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return (f"DetectionDataset(name={self.name!r}, images={len(self)}, "
                f"classes={self.class_names!r})")

    @property
    def examples(self) -> tf.data.Dataset:
        """tf.data of per-image example dicts (see the module docstring), in records order."""
        if self._examples is None:
            self._examples = self.source().map(self.decode,
                                               num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True)
        return self._examples

    def source(self) -> tf.data.Dataset:
        """The light per-image elements before decoding (file path or index, annotations).

        The pipeline shuffles these, which is cheap, and decodes after.
        """
        if self._source is None:
            self._source = self._build_source()
        return self._source

    def decode(self, *element) -> dict:
        """Maps a `source()` element to an example dict (reads and decodes the image)."""
        if self._decode is None:
            self._decode = self._build_decode()
        return self._decode(*element)

    def _build_source(self) -> tf.data.Dataset:
        records = self._records
        row_lengths = np.array([len(r) for r in records], np.int64)

        def ragged(values, inner_shape, dtype):
            values = [np.asarray(v, dtype).reshape((-1,) + inner_shape) for v in values]
            flat = np.concatenate(values) if values else np.zeros((0,) + inner_shape, dtype)
            return tf.RaggedTensor.from_row_lengths(flat, row_lengths)

        elements = {
            "image_id": np.array([r.image_id for r in records], dtype=object),
            "height": np.array([r.height for r in records], np.int32),
            "width": np.array([r.width for r in records], np.int32),
            "boxes": ragged([r.boxes for r in records], (4,), np.float32),
            "classes": ragged([r.classes for r in records], (), np.int32),
            "is_crowd": ragged([r.is_crowd for r in records], (), bool),
            "difficult": ragged([r.difficult for r in records], (), bool),
        }
        if self._images is None:
            elements["path"] = np.array([r.path for r in records], dtype=object)
        else:
            elements["index"] = np.arange(len(records), dtype=np.int64)
        return tf.data.Dataset.from_tensor_slices(elements)

    def _build_decode(self) -> Callable:
        if self._images is not None:
            # Made eagerly (init_scope) so the map function captures it rather than
            # embedding a constant of the whole image array in its graph.
            with tf.init_scope():
                images = tf.constant(self._images)

            def load(element):
                return tf.gather(images, element["index"])
        else:
            def load(element):
                encoded = tf.io.read_file(element["path"])
                # The size read at load time passed the pixel limit; a file whose header now
                # claims another size (replaced since, or a size trusted from the annotation
                # with check_images="none") must not reach the decoder: it may be a bomb.
                expected = tf.stack([element["height"], element["width"]])
                header = encoded_image_size(encoded)
                header_ok = tf.debugging.Assert(
                    tf.reduce_all(tf.equal(header, expected)),
                    [tf.strings.join([element["path"], ": decoded size differs from the "
                                      "size read at load time (its header, read before "
                                      "decoding, says height, width):"]), header, expected])
                with tf.control_dependencies([header_ok]):
                    encoded = tf.identity(encoded)
                image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
                # The boxes were validated against the header size: insist the pixels agree.
                tf.debugging.Assert(
                    tf.reduce_all(tf.equal(tf.shape(image)[:2], expected)),
                    [tf.strings.join([element["path"], ": decoded size differs from the "
                                      "size read at load time (height, width):"]),
                     tf.shape(image)[:2], expected])
                return image

        def decode(element):
            image = load(element)
            image.set_shape([None, None, 3])
            return {
                "image": image,
                "boxes": tf.reshape(element["boxes"], [-1, 4]),
                "classes": element["classes"],
                "image_id": element["image_id"],
                "is_crowd": element["is_crowd"],
                "difficult": element["difficult"],
            }

        return decode
