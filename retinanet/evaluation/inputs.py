"""Checking and normalising what `update` receives, shared by both evaluators.

Both evaluators take the same per-image arguments (see `check_image`). Boxes are `xyxy` in
absolute pixels of the original image with continuous coordinates (width = x2 - x1), classes are
0-based. Arrays may be numpy arrays, lists or eager tensors; they are copied to float64/int64
numpy so the metrics never see float32 rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image's ground truth and detections, checked.

    Attributes:
        image_id: the caller's id (str, int ...), bytes decoded to str.
        gt_boxes: float64 [N, 4] xyxy pixels.
        gt_classes: int64 [N], 0-based.
        gt_iscrowd: bool [N].
        gt_difficult: bool [N].
        det_boxes: float64 [D, 4] xyxy pixels.
        det_scores: float64 [D].
        det_classes: int64 [D], 0-based.
    """

    image_id: Hashable
    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    gt_iscrowd: np.ndarray
    gt_difficult: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_classes: np.ndarray


def normalize_image_id(image_id: Any) -> Hashable:
    """Turns a str / bytes / int / numpy or tensor scalar id into a hashable Python value."""
    if hasattr(image_id, "numpy"):  # eager tensor
        image_id = image_id.numpy()
    if isinstance(image_id, np.ndarray):
        if image_id.ndim != 0:
            raise ValueError(f"image_id must be a scalar, got an array of shape {image_id.shape}")
        image_id = image_id.item()
    if isinstance(image_id, np.generic):
        image_id = image_id.item()
    if isinstance(image_id, bytes):
        image_id = image_id.decode("utf-8")
    if isinstance(image_id, float) or image_id is None:
        raise ValueError(f"image_id must be a str or an int, got {image_id!r}")
    try:
        hash(image_id)
    except TypeError:
        kind = type(image_id).__name__
        raise ValueError(f"image_id must be a str or an int, got {kind}") from None
    return image_id


def _as_array(value, name: str, image_id) -> np.ndarray:
    if hasattr(value, "numpy"):
        value = value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"image {image_id!r}: {name} is not array-like ({error})") from None


def _boxes(value, name: str, image_id) -> np.ndarray:
    array = _as_array(value, name, image_id)
    if array.size == 0:
        return np.zeros((0, 4), np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"image {image_id!r}: {name} must have shape [N, 4], got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(
            f"image {image_id!r}: {name} must be real numbers, got dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"image {image_id!r}: {name} contains NaN or infinite coordinates")
    bad = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if np.any(bad):
        row = int(np.argmax(bad))
        raise ValueError(
            f"image {image_id!r}: {name}[{row}] = {array[row].tolist()} has x2 < x1 or y2 < y1 "
            "(expected xyxy boxes)"
        )
    return array


def _vector(value, name: str, image_id, length: int, length_of: str) -> np.ndarray:
    array = _as_array(value, name, image_id)
    if array.size == 0 and length == 0:
        return array.reshape(0)
    if array.ndim != 1:
        raise ValueError(f"image {image_id!r}: {name} must have shape [N], got {array.shape}")
    if array.shape[0] != length:
        raise ValueError(
            f"image {image_id!r}: {name} has {array.shape[0]} entries but {length_of} has {length}"
        )
    return array


def _classes(value, name, image_id, length, length_of, num_classes) -> np.ndarray:
    array = _vector(value, name, image_id, length, length_of)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"image {image_id!r}: {name} must be integers, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"image {image_id!r}: {name} must be whole numbers")
    array = array.astype(np.int64)
    if np.any(array < 0):
        raise ValueError(
            f"image {image_id!r}: {name} has negative classes "
            f"{np.unique(array[array < 0]).tolist()} "
            "(drop padding before update)"
        )
    if num_classes is not None and np.any(array >= num_classes):
        raise ValueError(
            f"image {image_id!r}: {name} has classes "
            f"{np.unique(array[array >= num_classes]).tolist()}"
            f" outside [0, {num_classes})"
        )
    return array


def _flags(value, name, image_id, length, length_of) -> np.ndarray:
    if value is None:
        return np.zeros((length,), bool)
    array = _vector(value, name, image_id, length, length_of)
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.isin(array, (0, 1))):
            raise ValueError(f"image {image_id!r}: {name} must be booleans (or 0/1)")
    return array.astype(bool)


def check_image(
    image_id,
    gt_boxes,
    gt_classes,
    det_boxes,
    det_scores,
    det_classes,
    gt_iscrowd=None,
    gt_difficult=None,
    num_classes: int | None = None,
) -> ImageRecord:
    """Validates one image's arguments to `update` and returns them as an `ImageRecord`.

    Args:
        image_id: str, bytes, int, or a scalar array/tensor of those.
        gt_boxes: [N, 4] xyxy absolute pixels (an empty array of any shape means no gt).
        gt_classes: [N] 0-based ints.
        det_boxes: [D, 4] xyxy absolute pixels.
        det_scores: [D] finite floats.
        det_classes: [D] 0-based ints.
        gt_iscrowd, gt_difficult: optional bool [N].
        num_classes: when known, classes must lie in [0, num_classes).

    Raises:
        ValueError naming the image id: wrong shapes, mismatched lengths, NaN/inf values,
        x2 < x1 or y2 < y1, negative or out-of-range classes.
    """
    image_id = normalize_image_id(image_id)
    gt_boxes = _boxes(gt_boxes, "gt_boxes", image_id)
    num_gt = gt_boxes.shape[0]
    gt_classes = _classes(gt_classes, "gt_classes", image_id, num_gt, "gt_boxes", num_classes)
    gt_iscrowd = _flags(gt_iscrowd, "gt_iscrowd", image_id, num_gt, "gt_boxes")
    gt_difficult = _flags(gt_difficult, "gt_difficult", image_id, num_gt, "gt_boxes")

    det_boxes = _boxes(det_boxes, "det_boxes", image_id)
    num_det = det_boxes.shape[0]
    det_scores = _vector(det_scores, "det_scores", image_id, num_det, "det_boxes")
    if not np.issubdtype(det_scores.dtype, np.number) or det_scores.dtype == bool:
        raise ValueError(f"image {image_id!r}: det_scores must be floats, got {det_scores.dtype}")
    det_scores = det_scores.astype(np.float64)
    if not np.all(np.isfinite(det_scores)):
        raise ValueError(f"image {image_id!r}: det_scores contains NaN or infinite scores")
    det_classes = _classes(det_classes, "det_classes", image_id, num_det, "det_boxes", num_classes)
    return ImageRecord(
        image_id=image_id,
        gt_boxes=gt_boxes,
        gt_classes=gt_classes,
        gt_iscrowd=gt_iscrowd,
        gt_difficult=gt_difficult,
        det_boxes=det_boxes,
        det_scores=det_scores,
        det_classes=det_classes,
    )


def class_name(class_index: int, class_names) -> str:
    """The display/key name of a 0-based class: `class_names[i]`, or `str(i)` without names."""
    if class_names is not None:
        return str(class_names[class_index])
    return str(class_index)


class ImageAccumulator:
    """Shared `update`/`reset` bookkeeping: one checked `ImageRecord` per distinct image id."""

    def __init__(self, class_names=None, num_classes: int | None = None):
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if len(set(class_names)) != len(class_names):
                raise ValueError(f"class_names has duplicates: {class_names}")
            if num_classes is not None and num_classes != len(class_names):
                raise ValueError(
                    f"class_names has {len(class_names)} names but {num_classes} classes were given"
                )
            num_classes = len(class_names)
        self.class_names = class_names
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forgets every image added so far."""
        self._records: list[ImageRecord] = []
        self._seen_ids: set = set()

    @property
    def num_images(self) -> int:
        return len(self._records)

    def update(
        self,
        image_id,
        gt_boxes,
        gt_classes,
        det_boxes,
        det_scores,
        det_classes,
        gt_iscrowd=None,
        gt_difficult=None,
    ) -> None:
        """Adds one image.

        Args:
            image_id: str / bytes / int (or scalar tensor), unique across updates.
            gt_boxes: float [N, 4] xyxy, absolute pixels of the original image.
            gt_classes: int [N], 0-based.
            det_boxes: float [D, 4] xyxy, absolute pixels of the original image.
            det_scores: float [D].
            det_classes: int [D], 0-based.
            gt_iscrowd: optional bool [N] (COCO `iscrowd`).
            gt_difficult: optional bool [N] (VOC `difficult`).

        Raises:
            ValueError naming the image id on malformed input or a repeated image id.
        """
        record = check_image(
            image_id, gt_boxes, gt_classes, det_boxes, det_scores, det_classes,
            gt_iscrowd=gt_iscrowd, gt_difficult=gt_difficult, num_classes=self.num_classes,
        )
        if record.image_id in self._seen_ids:
            raise ValueError(f"image {record.image_id!r} was already added to this evaluator")
        self._seen_ids.add(record.image_id)
        self._records.append(record)

    def _class_indices(self) -> list[int]:
        """All classes when their number is known, else the classes seen in gt or detections."""
        if self.num_classes is not None:
            return list(range(self.num_classes))
        seen: set[int] = set()
        for record in self._records:
            seen.update(record.gt_classes.tolist())
            seen.update(record.det_classes.tolist())
        return sorted(seen)

    def _name(self, class_index: int) -> str:
        return class_name(class_index, self.class_names)
