"""CSV reader: one box per row, columns found by name in the header.

The common layout is `filename,width,height,class,xmin,ymin,xmax,ymax` (the raccoon set,
TensorFlow object-detection tutorials). Coordinates default to the VOC convention, 1-based
inclusive pixel indices (x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax), because such CSV
files are usually exported from VOC XML; then the CSV and XML forms of a dataset give the same
boxes. Pass one_based=False for continuous 0-based xyxy, used as given.

A row whose class and coordinates are all empty lists an image with no boxes.

The file is read with `csv.DictReader(strict=True)`, so a quote that never closes is an
error naming the line, not a field that swallows the rest of the file; a field over the csv
module's limit (131,072 characters) is an error naming the line too.
"""

from __future__ import annotations

import csv
import os

from retinanet.data.dataset import (DetectionDataset, class_name_problem,
                                    validate_class_names)
from retinanet.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, validate_max_image_pixels
from retinanet.data.validation import (BAD_CLASS_NAME, UNPARSABLE, Problems, RawObject,
                                       check_image, make_record, validate_check_images)
from retinanet.data.voc import voc_box_to_xyxy

# Accepted header names per field, compared case-insensitively.
COLUMN_ALIASES = {
    "filename": ("filename", "file_name", "file", "image", "image_path", "image_name", "path"),
    "class": ("class", "class_name", "label", "category", "name"),
    "xmin": ("xmin", "x_min", "x1", "left"),
    "ymin": ("ymin", "y_min", "y1", "top"),
    "xmax": ("xmax", "x_max", "x2", "right"),
    "ymax": ("ymax", "y_max", "y2", "bottom"),
}


def _columns(header, csv_file):
    lowered = {name.strip().lower(): name for name in header}
    columns = {}
    for field, aliases in COLUMN_ALIASES.items():
        match = next((lowered[a] for a in aliases if a in lowered), None)
        if match is None:
            raise ValueError(f"{csv_file}: no {field!r} column (accepted names: "
                             f"{', '.join(aliases)}); header is {list(header)}")
        columns[field] = match
    for field in ("width", "height"):
        columns[field] = lowered.get(field)
    return columns


def _read_rows(reader, csv_file, one_based, images, problems):
    """Fills `images` (filename -> {"line", "size", "objects"}) from the rows of `reader`."""
    if not reader.fieldnames:
        raise ValueError(f"{csv_file}: no header row")
    columns = _columns(reader.fieldnames, csv_file)
    for row in reader:
        line = reader.line_num
        filename = (row.get(columns["filename"]) or "").strip()
        if not filename:
            problems.image(f"{csv_file} line {line}", UNPARSABLE, "empty file name")
            continue
        entry = images.setdefault(filename, {
            "line": line, "objects": [],
            "size": tuple(row.get(columns[k]) if columns[k] else None
                          for k in ("height", "width"))})
        label = (row.get(columns["class"]) or "").strip()
        coords = [(row.get(columns[k]) or "").strip()
                  for k in ("xmin", "ymin", "xmax", "ymax")]
        if not label and not any(coords):
            continue  # an image without boxes
        where = f"line {line} ({filename})"
        problem = class_name_problem(label)
        if problem:
            problems.box(csv_file, BAD_CLASS_NAME, f"{where}: the class name {problem}")
            continue
        try:
            box = tuple(float(c) for c in coords)
        except ValueError:
            problems.box(csv_file, UNPARSABLE, f"{where}: box {coords} is not 4 numbers")
            continue
        if one_based:
            box = voc_box_to_xyxy(*box)
        shown = " ".join(f"{k}={c}" for k, c in zip(("xmin", "ymin", "xmax", "ymax"), coords))
        entry["objects"].append(RawObject(label, box, where, shown=shown))


def from_csv(csv_file: str, image_dir: str | None = None, *, class_names=None,
             one_based: bool = True, skip_invalid: bool = False,
             check_images: str = "header",
             max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> DetectionDataset:
    """Reads a CSV file with one box per row.

    Args:
        csv_file: the CSV file; its header names the columns (see COLUMN_ALIASES), e.g.
            filename,width,height,class,xmin,ymin,xmax,ymax.
        image_dir: folder the file names are relative to; default the CSV file's folder.
        class_names: list of str fixing the class ids; default the sorted names found. Pass it
            to keep ids the same across train and test files.
        one_based: coordinates are VOC-style 1-based inclusive pixel indices (default);
            False for continuous 0-based xyxy.
        skip_invalid: skip and count invalid images and boxes instead of raising ValueError.
        check_images: "header", "decode" or "none" (trust the width/height columns).
        max_image_pixels: int or None; images whose header (or, with check_images="none",
            the width/height columns) claims more pixels are refused before any decode.

    Returns:
        DetectionDataset; images in order of first appearance, image_id the file name without
        extension.
    Raises:
        ValueError naming the CSV file and line: missing columns, malformed CSV (an unbalanced
        quote, a field over 131,072 characters), a missing, corrupt or too large image, an
        invalid class name (control characters, over 256 characters), an unknown class,
        x2 <= x1 or y2 <= y1, a box outside the image, an empty dataset.
    """
    check_images = validate_check_images(check_images)
    max_image_pixels = validate_max_image_pixels(max_image_pixels)
    csv_file = os.fspath(csv_file)
    image_dir = os.path.dirname(csv_file) if image_dir is None else os.fspath(image_dir)
    if not os.path.isfile(csv_file):
        raise ValueError(f"csv_file {csv_file!r} not found")
    problems = Problems(f"from_csv({csv_file!r})", skip_invalid)

    images = {}  # filename -> {"line", "size", "objects"}, in order of first appearance
    with open(csv_file, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file, strict=True)
        try:
            _read_rows(reader, csv_file, one_based, images, problems)
        except csv.Error as error:
            hint = (" (a quote that never closes?)" if "unexpected end of data" in str(error)
                    or "expected after" in str(error) else "")
            # line_num still counts the lines of the last good record, so the bad one
            # starts on the next line (a quote that never closes runs on to the end).
            raise ValueError(f"{csv_file} line {reader.line_num + 1}: malformed CSV: "
                             f"{error}{hint}") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"{csv_file}: not UTF-8 text ({error})") from None

    if class_names is None:
        class_names = sorted({o.label for e in images.values() for o in e["objects"]})
        if not class_names and images:
            raise ValueError(f"{csv_file}: no boxes, so no class names; pass class_names")
    if class_names:
        class_names = validate_class_names(class_names)
    class_index = {name: i for i, name in enumerate(class_names)}

    records = []
    for filename, entry in images.items():
        path = filename if os.path.isabs(filename) else os.path.join(image_dir, filename)
        size = check_image(path, f"{csv_file} line {entry['line']}", check_images, problems,
                           entry["size"], max_image_pixels)
        if size is None:
            continue
        image_id = os.path.splitext(filename)[0]
        records.append(make_record(image_id, path, size[0], size[1], entry["objects"],
                                   class_index, csv_file, problems))
    problems.finish(len(records), csv_file)
    return DetectionDataset(class_names, records, name=f"csv:{csv_file}",
                            skipped=problems.counts, clipped=problems.clipped)
