"""COCO instances JSON reader.

COCO boxes are [x, y, width, height] in continuous absolute pixels; we convert them to
xyxy = [x, y, x + width, y + height]. Categories are remapped to contiguous 0-based ids in
increasing category-id order; `DetectionDataset.category_ids[i]` is the COCO id of class i.
"""

from __future__ import annotations

import json
import os

from retinanet.data.dataset import DetectionDataset, validate_class_names
from retinanet.data.image_files import MISSING_IMAGE
from retinanet.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, validate_max_image_pixels
from retinanet.data.validation import (DUPLICATE_IMAGE_ID, UNKNOWN_CLASS, UNPARSABLE, Problems,
                                       RawObject, check_image, make_record,
                                       validate_check_images)


def _short(value, limit=80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_images(entries, annotation_file, problems):
    """{image id: {"file_name", "objects", "size"}} and the set of duplicated ids.

    An image id used by two entries is a problem naming both file names; with
    skip_invalid, every entry with that id is dropped (its annotations are ambiguous).
    """
    images, duplicated = {}, {}
    for index, image in enumerate(entries):
        where = f"image entry {index}"
        if not isinstance(image, dict):
            problems.image(annotation_file, UNPARSABLE,
                           f"{where} is not an object: {_short(image)}")
            continue
        if "id" not in image or "file_name" not in image:
            problems.image(annotation_file, UNPARSABLE,
                           f"{where} {_short(image)} lacks 'id' or 'file_name'")
            continue
        image_id, file_name = image["id"], image["file_name"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            problems.image(annotation_file, UNPARSABLE,
                           f"{where}: 'id' must be an int or str, got {_short(image_id)}")
            continue
        if not isinstance(file_name, str) or not file_name:
            problems.image(annotation_file, UNPARSABLE,
                           f"{where} (id {image_id!r}): 'file_name' must be a non-empty "
                           f"str, got {_short(file_name)}")
            continue
        if image_id in images or image_id in duplicated:
            first = images.pop(image_id, None)
            names = duplicated.setdefault(image_id, [first["file_name"]] if first else [])
            names.append(file_name)
            # Raises here without skip_invalid; else counts this entry (and the first).
            problems.image(annotation_file, DUPLICATE_IMAGE_ID,
                           f"{where}: image id {image_id!r} is used by "
                           f"{' and '.join(repr(n) for n in names)}")
            if first is not None:
                problems.images[DUPLICATE_IMAGE_ID] += 1
            continue
        images[image_id] = {"file_name": file_name, "objects": [],
                            "size": (image.get("height"), image.get("width"))}
    return images, set(duplicated)


def from_coco(annotation_file: str, image_dir: str, *, skip_invalid: bool = False,
              check_images: str = "header",
              max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> DetectionDataset:
    """Reads a COCO instances JSON file (e.g. instances_val2017.json).

    Args:
        annotation_file: the JSON file with "images", "annotations" and "categories".
        image_dir: folder that the images' "file_name" values are relative to.
        skip_invalid: skip and count invalid images and boxes instead of raising ValueError.
        check_images: "header", "decode" or "none" (trust the JSON width/height).
        max_image_pixels: int or None; images whose header (or, with check_images="none",
            the JSON) claims more pixels are refused before any decode (decompression bombs).

    Returns:
        DetectionDataset with class_names from the categories sorted by id, category_ids the
        COCO ids, image_id the COCO image id as a string, is_crowd from "iscrowd". Images
        without annotations are kept (no boxes).
    Raises:
        ValueError naming the file: bad JSON structure (or nesting too deep to parse), a
        missing, corrupt or too large image, two images with one id, an annotation naming an
        unknown image id or category, w or h <= 0, a box outside the image, an empty dataset.
    """
    check_images = validate_check_images(check_images)
    max_image_pixels = validate_max_image_pixels(max_image_pixels)
    annotation_file = os.fspath(annotation_file)
    image_dir = os.fspath(image_dir)
    try:
        with open(annotation_file, encoding="utf-8") as file:
            coco = json.load(file)
    except FileNotFoundError:
        raise ValueError(f"annotation_file {annotation_file!r} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotation_file}: invalid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{annotation_file}: JSON nested too deeply to read (arrays or "
                         "objects inside each other thousands of levels deep)") from None
    if not isinstance(coco, dict) or not all(
            isinstance(coco.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{annotation_file}: expected a COCO instances object with "
                         "'images' and 'categories' lists")
    if not isinstance(coco.get("annotations", []), list):
        raise ValueError(f"{annotation_file}: 'annotations' must be a list, got "
                         f"{type(coco['annotations']).__name__}")
    problems = Problems(f"from_coco({annotation_file!r})", skip_invalid)

    try:
        categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in categories]
        class_names = [str(c["name"]) for c in categories]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{annotation_file}: each category needs an int 'id' and a 'name' "
                         f"({error!r})") from None
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"{annotation_file}: duplicate category ids")
    validate_class_names(class_names, f"{annotation_file}: category names")
    class_index = {cid: i for i, cid in enumerate(category_ids)}

    images, duplicated = _parse_images(coco["images"], annotation_file, problems)

    for index, annotation in enumerate(coco.get("annotations", [])):
        if not isinstance(annotation, dict):
            problems.box(annotation_file, UNPARSABLE,
                         f"annotation at index {index} is not an object: {_short(annotation)}")
            continue
        where = f"annotation {_short(annotation.get('id', index), 30)}"
        image_id = annotation.get("image_id")
        try:
            image = images.get(image_id)
            if image is None and image_id in duplicated:
                problems.box(annotation_file, DUPLICATE_IMAGE_ID,
                             f"{where} names image_id {image_id!r}, used by several images")
                continue
        except TypeError:  # an unhashable image_id (a list or object)
            image = None
        if image is None:
            # An annotation naming an image absent from "images": its file is unknown.
            problems.box(annotation_file, MISSING_IMAGE,
                         f"{where} names image_id {_short(image_id, 30)}, which is not "
                         "in 'images'")
            continue
        try:
            x, y, width, height = (float(v) for v in annotation["bbox"])
            category = int(annotation["category_id"])
        except (KeyError, TypeError, ValueError):
            problems.box(annotation_file, UNPARSABLE, f"{where}: needs 'bbox' [x, y, w, h] "
                         "and 'category_id'")
            continue
        if category not in class_index:
            problems.box(annotation_file, UNKNOWN_CLASS,
                         f"{where}: category_id {category} is not in 'categories'")
            continue
        image["objects"].append(RawObject(category, (x, y, x + width, y + height), where,
                                          is_crowd=bool(annotation.get("iscrowd", 0)),
                                          shown=f"bbox [x, y, w, h] = [{x:g}, {y:g}, "
                                                f"{width:g}, {height:g}]"))

    records = []
    for image_id, image in images.items():
        path = os.path.join(image_dir, image["file_name"])
        size = check_image(path, f"{annotation_file} (image id {image_id})", check_images,
                           problems, image["size"], max_image_pixels)
        if size is None:
            continue
        records.append(make_record(str(image_id), path, size[0], size[1], image["objects"],
                                   class_index, f"{annotation_file} (image {path})",
                                   problems))
    problems.finish(len(records), annotation_file)
    return DetectionDataset(class_names, records, category_ids=category_ids,
                            name=f"coco:{annotation_file}", skipped=problems.counts,
                            clipped=problems.clipped)
