"""Data health: unreadable, duplicate and empty images, bad and tiny boxes, class balance.

Works from a `DetectionDataset` read with `skip_invalid=True`: what the reader skipped
(missing or corrupt images, degenerate boxes, boxes outside the image, ...) comes from
`dataset.skipped` with the files it named (`retinanet.data.validation.SkipCounts`); the rest
comes from the records, with box sizes at the training size (`scaling.scaled_boxes`).
Duplicates are files with the same bytes (BLAKE2 hash); images held in memory or streamed
(the shapes set, TFDS) are not hashed.
"""

from __future__ import annotations

import collections

import numpy as np

from retinanet.data import image_files, validation
from retinanet.data.image_files import file_digest
from retinanet.diagnostics.scaling import scaled_boxes

MAX_NAMES = 20  # file names listed per problem; the count is always the total
TINY_BOX_SIZE = 4.0  # px at the training size
UNREADABLE_KINDS = (image_files.MISSING_IMAGE, image_files.CORRUPT_IMAGE,
                    image_files.TOO_LARGE_IMAGE)
DEGENERATE_KINDS = (validation.EMPTY_BOX, validation.NON_FINITE_BOX)
OUTSIDE_KINDS = (validation.OUTSIDE_BOX,)
# Box problems the readers skip: each is a wrong line in a label file.
LABEL_ERROR_KINDS = (validation.UNPARSABLE, validation.UNKNOWN_CLASS, *DEGENERATE_KINDS,
                     *OUTSIDE_KINDS)


def _named(count, names, max_names=MAX_NAMES, **extra) -> dict:
    """{"count": total, "files": the first max_names names, **extra}."""
    return {"count": int(count), "files": list(names)[:max_names], **extra}


def _record_name(record) -> str:
    return record.path or record.image_id


def _skipped(dataset, kinds, section):
    """(count, names) of what the reader skipped for some problem kinds."""
    counts = (dataset.skipped or {}).get(section, {})
    files = getattr(dataset.skipped, "files", {}) or {}
    count = sum(counts.get(kind, 0) for kind in kinds)
    names = [name for kind in kinds for name in files.get(kind, [])]
    return count, names


def data_health(dataset, image_size, max_boxes, *, tiny_box_size=TINY_BOX_SIZE,
                max_names=MAX_NAMES, scaled=None, progress=None) -> dict:
    """Counts and names the data problems of a dataset.

    Args:
        dataset: a `DetectionDataset`, best read with `skip_invalid=True` so that it loads
            despite bad input, which is then reported here.
        image_size: the pipeline's `image_size` (None, int S or (min_side, max_side)): tiny
            boxes are judged at the training size.
        max_boxes: the pipeline's `max_boxes`; images with more boxes fail in training.
        tiny_box_size: boxes under this many px wide or high at the training size are tiny.
        max_names: file names listed per problem.
        scaled: optional `coverage.ScaledBoxes` of the dataset for `image_size`.
        progress: optional callable, called with the number of records done so far.

    Returns:
        A JSON-ready dict. Each problem is `{"count": n, "files": [<= max_names names]}`
        (images: the image file, or image_id without a file; reader skips:
        `"<annotation file>: <detail>"`): `unreadable_images`, `duplicate_images`
        (count: images that repeat an earlier one; also `groups`, lists of files with the
        same bytes, and `num_groups`), `empty_images`, `degenerate_boxes`,
        `outside_boxes`, `tiny_boxes` (count: boxes; files: their images; also
        `min_size`), `too_many_boxes` (also `max_boxes` and `most_boxes`, the
        largest count in an image). Also `num_images`, `num_boxes`, `num_not_hashed`,
        `skipped` (the reader's counts, `{"images": {kind: n}, "boxes": {kind: n}}`)
        and `class_balance` (`{class name: {"boxes": n, "images": n}}`).
    """
    records = list(dataset.records)
    if scaled is None:
        scaled = scaled_boxes(records, image_size)

    unreadable_count, unreadable = _skipped(dataset, UNREADABLE_KINDS, "images")
    by_digest = collections.defaultdict(list)
    not_hashed = 0
    for index, record in enumerate(records):
        if record.path is None:
            not_hashed += 1
        else:
            try:
                by_digest[file_digest(record.path)].append(record.path)
            except OSError as error:
                unreadable_count += 1
                unreadable.append(f"{record.path}: {error.strerror or error}")
        if progress and (index % 16 == 15 or index == len(records) - 1):
            progress(index + 1)
    groups = [paths for paths in by_digest.values() if len(paths) > 1]

    counts = np.diff(scaled.box_offsets)
    empty = [_record_name(r) for r, n in zip(records, counts) if n == 0]

    # The readers drop degenerate and outside boxes; records built by hand may still hold them.
    degenerate_count, degenerate = _skipped(dataset, DEGENERATE_KINDS, "boxes")
    outside_count, outside = _skipped(dataset, OUTSIDE_KINDS, "boxes")
    for record in records:
        boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
        bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | \
            (boxes[:, 3] <= boxes[:, 1])
        off = ~bad & ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) |
                      (boxes[:, 0] >= record.width) | (boxes[:, 1] >= record.height))
        if bad.any():
            degenerate_count += int(bad.sum())
            degenerate.append(_record_name(record))
        if off.any():
            outside_count += int(off.sum())
            outside.append(_record_name(record))

    tiny = (scaled.widths < tiny_box_size) | (scaled.heights < tiny_box_size)
    tiny_images = np.unique(scaled.image_index[tiny])
    too_many = [_record_name(r) for r, n in zip(records, counts) if n > max_boxes]

    class_balance = {}
    for class_id, name in enumerate(dataset.class_names):
        mask = scaled.classes == class_id
        class_balance[name] = {"boxes": int(mask.sum()),
                               "images": int(np.unique(scaled.image_index[mask]).size)}

    files = getattr(dataset.skipped, "files", {}) or {}
    label_errors = [f"{name} ({kind})" for kind in LABEL_ERROR_KINDS
                    for name in files.get(kind, [])]
    skipped = dataset.skipped or {}
    return {
        "label_errors": _named(sum(skipped.get("boxes", {}).get(kind, 0)
                                   for kind in LABEL_ERROR_KINDS), label_errors, max_names),
        "num_images": len(records),
        "num_boxes": len(scaled),
        "skipped": {"images": dict(skipped.get("images", {})),
                    "boxes": dict(skipped.get("boxes", {}))},
        "unreadable_images": _named(unreadable_count, unreadable, max_names),
        "duplicate_images": _named(sum(len(g) - 1 for g in groups),
                                   [" = ".join(g) for g in groups], max_names,
                                   num_groups=len(groups), groups=groups[:max_names]),
        "num_not_hashed": not_hashed,
        "empty_images": _named(len(empty), empty, max_names),
        "degenerate_boxes": _named(degenerate_count, degenerate, max_names),
        "outside_boxes": _named(outside_count, outside, max_names),
        "tiny_boxes": _named(int(tiny.sum()), [_record_name(records[i]) for i in tiny_images],
                             max_names, min_size=float(tiny_box_size)),
        "too_many_boxes": _named(len(too_many), too_many, max_names, max_boxes=int(max_boxes),
                                 most_boxes=int(counts.max()) if counts.size else 0),
        "class_balance": class_balance,
    }
