"""Validation shared by the readers: image probing, box checks and the skip/raise policy.

Every reader parses its annotations eagerly in Python, then runs each image and box through
the helpers here. A problem either raises `ValueError("<file>: <problem>")` at once, or, with
`skip_invalid=True`, skips the image or box and counts it; `Problems.finish` then logs all
the counts in one warning line. Nothing is dropped silently.

Images are probed by `retinanet.data.image_files`; see it for what a corrupt or oversized
image is.

Clipping: a box partly outside its image is clipped to it and kept. One that reaches more
than `CLIP_TOLERANCE` pixels outside is counted (`Problems.clipped`) and the count goes into
the reader's one DataWarning and `DetectionDataset.clipped`, skip_invalid or not.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

from retinanet.data.image_files import TOO_LARGE_IMAGE, ImageProblem, probe_image
from retinanet.data.image_header import (DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError,
                                         check_image_pixels)

CHECK_IMAGES_CHOICES = ("header", "decode", "none")

# Problem kinds, used both in error messages and in the skip counts.
UNPARSABLE = "unparsable annotation"
UNKNOWN_CLASS = "unknown class"
EMPTY_BOX = "box with x2 <= x1 or y2 <= y1"
OUTSIDE_BOX = "box outside the image"
NON_FINITE_BOX = "box with non-finite coordinates"
DUPLICATE_IMAGE_ID = "duplicate image id"
BAD_CLASS_NAME = "invalid class name"

# Boxes reaching at most this many pixels outside the image are clipped without being counted:
# YOLO's rounded normalised values and VOC's 0-based strays (xmin 0 -> x1 -1) land here.
CLIP_TOLERANCE = 1.0


# At most this many "<file>: <detail>" entries are kept per problem kind.
MAX_NAMED_FILES = 100


class SkipCounts(dict):
    """The skip counts dict, `{"images": {kind: n}, "boxes": {kind: n}}`, plus `files`.

    `files` is `{kind: ["<file>: <detail>", ...]}` (capped at `MAX_NAMED_FILES` per kind).
    It is an attribute, not a key, so the dict compares and serialises as before.
    """

    files: dict = {}


class DataWarning(UserWarning):
    """The one warning a reader emits when it skipped invalid input."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq on numpy fields would be ambiguous
class Record:
    """The parsed annotations of one image, available without decoding the image.

    Attributes:
        image_id: str, unique within the dataset (COCO: the numeric id as a string; VOC, CSV,
            YOLO: the file name without extension; shapes: the index).
        path: str or None, the image file (None for generated or TFDS images).
        height, width: int, the image size in pixels (read from the image header).
        boxes: float32 [N, 4], xyxy, absolute pixels, clipped to the image.
        classes: int32 [N], 0-based into the dataset's class_names.
        is_crowd: bool [N] (COCO iscrowd; False elsewhere).
        difficult: bool [N] (VOC difficult; False elsewhere).
    """

    image_id: str
    path: str | None
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    is_crowd: np.ndarray
    difficult: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclasses.dataclass
class RawObject:
    """One object as a reader parsed it, before validation.

    box is xyxy in continuous absolute pixel coordinates, already converted from the file's
    convention (VOC 1-based, COCO xywh, YOLO normalised); `where` locates it for messages;
    `shown`, where set, quotes the box as the file writes it (e.g. "xmin=20 ymin=1 xmax=10
    ymax=10"), for messages, instead of the converted xyxy.
    """

    label: object
    box: Sequence[float]
    where: str
    is_crowd: bool = False
    difficult: bool = False
    shown: str | None = None


class Problems:
    """Raises on the first problem, or counts skipped images and boxes when skip_invalid.

    Args:
        reader: str, names the call in the warning, e.g. "from_voc('data/raccoon')".
        skip_invalid: bool, skip and count instead of raising.
    """

    def __init__(self, reader: str, skip_invalid: bool):
        self.reader = reader
        self.skip_invalid = bool(skip_invalid)
        self.images: collections.Counter = collections.Counter()
        self.boxes: collections.Counter = collections.Counter()
        self.clipped = 0  # boxes clipped by more than CLIP_TOLERANCE, kept
        # {kind: ["<file>: <detail>", ...]}, the first MAX_NAMED_FILES of each kind, so that
        # diagnostics can name the culprits and not only count them.
        self.files: dict = collections.defaultdict(list)

    def image(self, file: str, kind: str, detail: str = "") -> None:
        """Reports a problem that invalidates a whole image (which is then skipped)."""
        self._report(self.images, file, kind, detail)

    def box(self, file: str, kind: str, detail: str = "") -> None:
        """Reports a problem with one box (which is then skipped)."""
        self._report(self.boxes, file, kind, detail)

    def clip(self) -> None:
        """Counts a box that was clipped to its image (kept, never raises)."""
        self.clipped += 1

    def _report(self, counter, file, kind, detail):
        if not self.skip_invalid:
            raise ValueError(f"{file}: {kind}" + (f": {detail}" if detail else "")
                             + " (pass skip_invalid=True to skip such input and count it)")
        counter[kind] += 1
        if len(self.files[kind]) < MAX_NAMED_FILES:
            self.files[kind].append(f"{file}: {detail}" if detail else file)

    @property
    def counts(self) -> "SkipCounts":
        """{"images": {kind: n}, "boxes": {kind: n}} of what was skipped.

        A `SkipCounts`: a plain dict of the counts whose `files` attribute holds the named
        culprits per kind (see `Problems.files`).
        """
        counts = SkipCounts(images=dict(self.images), boxes=dict(self.boxes))
        counts.files = {kind: list(names) for kind, names in self.files.items()}
        return counts

    def finish(self, num_images: int, source: str) -> None:
        """Logs the one warning (skips and clipped boxes), and raises if no image is left."""
        parts = []
        for name, counter in (("images", self.images), ("boxes", self.boxes)):
            if counter:
                detail = ", ".join(f"{n} {kind}" for kind, n in sorted(counter.items()))
                parts.append(f"{sum(counter.values())} {name} ({detail})")
        sentences = []
        if parts:
            sentences.append(f"skipped {' and '.join(parts)} because skip_invalid=True")
        if self.clipped:
            sentences.append(f"clipped {self.clipped} boxes to their image (each reached "
                             f"more than {CLIP_TOLERANCE:g} pixel outside it)")
        if sentences:
            warnings.warn(f"{self.reader}: {'; '.join(sentences)}", DataWarning,
                          stacklevel=3)
        if num_images == 0:
            skipped = sum(self.images.values())
            reason = f" ({skipped} images skipped as invalid)" if skipped else ""
            raise ValueError(f"{source}: empty dataset, no images found{reason}")


def validate_check_images(check_images: str) -> str:
    if check_images not in CHECK_IMAGES_CHOICES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES_CHOICES}, "
                         f"got {check_images!r}")
    return check_images


def make_record(image_id: str, path: str | None, height: int, width: int,
                objects: Iterable[RawObject], class_index: Mapping, file: str,
                problems: Problems) -> Record:
    """Validates and clips the objects of one image and builds its Record.

    Per object: an unknown label, non-finite coordinates, x2 <= x1 or y2 <= y1, or a box with
    no overlap with the image (clipped width or height 0) is a problem; a box partly outside
    is clipped to [0, width] x [0, height], and counted in `problems.clipped` when it reached
    more than CLIP_TOLERANCE pixels outside.

    Args:
        class_index: maps each raw label to its 0-based class id.
        file: the annotation file named in messages.
    """
    boxes, classes, crowd, difficult = [], [], [], []
    for obj in objects:
        class_id = class_index.get(obj.label)
        if class_id is None:
            problems.box(file, UNKNOWN_CLASS, f"{obj.where}: {obj.label!r} is not one of "
                         f"{_short_list(list(class_index))}")
            continue
        x1, y1, x2, y2 = (float(v) for v in obj.box)
        coords = obj.shown or f"xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            problems.box(file, NON_FINITE_BOX, f"{obj.where}: {coords}")
            continue
        if x2 <= x1 or y2 <= y1:
            problems.box(file, EMPTY_BOX, f"{obj.where}: {coords}")
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 <= cx1 or cy2 <= cy1:
            problems.box(file, OUTSIDE_BOX, f"{obj.where}: {coords} does not overlap "
                         f"the {width}x{height} image")
            continue
        if max(-x1, -y1, x2 - width, y2 - height) > CLIP_TOLERANCE:
            problems.clip()
        boxes.append((cx1, cy1, cx2, cy2))
        classes.append(class_id)
        crowd.append(bool(obj.is_crowd))
        difficult.append(bool(obj.difficult))
    return Record(
        image_id=str(image_id), path=path, height=int(height), width=int(width),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        classes=np.asarray(classes, np.int32).reshape(-1),
        is_crowd=np.asarray(crowd, bool).reshape(-1),
        difficult=np.asarray(difficult, bool).reshape(-1))


def _short_list(items, limit=10):
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def check_image(path: str, file: str, check_images: str, problems: Problems,
                annotated_size=None, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """probe_image, reporting failures to `problems`; returns (height, width) or None.

    With check_images="none" the size comes from the annotation (`annotated_size`, as
    (height, width)) and is held to `max_image_pixels`; where the annotation lacks it the
    header is read anyway. (The pipeline then checks the header against that size before
    decoding, see `DetectionDataset.decode`.)
    """
    try:
        if check_images == "none" and not _valid_size(annotated_size):
            return probe_image(path, "header", max_image_pixels)
        size = probe_image(path, check_images, max_image_pixels)
        if size is None:
            size = tuple(int(v) for v in annotated_size)
            try:
                check_image_pixels(*size, max_image_pixels, f"{path} (size from the "
                                   "annotation)")
            except ImageTooLargeError as error:
                raise ImageProblem(TOO_LARGE_IMAGE, str(error)) from None
    except ImageProblem as problem:
        problems.image(file, problem.kind, problem.detail)
        return None
    return size


def _valid_size(size) -> bool:
    try:
        return size is not None and all(int(v) > 0 for v in size)
    except (TypeError, ValueError):
        return False


def check_box_counts(records, max_boxes: int, drop_crowd: bool = False):
    """Raises a ValueError naming the first image with more than `max_boxes` boxes.

    The same limit fails inside the graph (`pipeline._pad_boxes`) too, but only once a batch reaches
    that image, and as a TensorFlow error; the records answer before any graph runs.

    Args:
        records: the `Record`s of a dataset.
        max_boxes: M of the pipeline.
        drop_crowd: count crowd boxes out, as training does.
    """
    counts = [len(r) - (int(r.is_crowd.sum()) if drop_crowd else 0) for r in records]
    over = [i for i, count in enumerate(counts) if count > max_boxes]
    if over:
        first, most = records[over[0]], max(counts[i] for i in over)
        raise ValueError(
            f"max_boxes={max_boxes}: image {first.path or first.image_id} has "
            f"{counts[over[0]]} boxes ({len(over)} images have more than {max_boxes}, the "
            f"most {most}); raise max_boxes to {most}")
