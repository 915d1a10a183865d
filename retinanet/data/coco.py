"""COCO instances JSON reader.

COCO boxes are [x, y, width, height] in continuous absolute pixels; we convert them to
xyxy = [x, y, x + width, y + height]. Categories are remapped to contiguous 0-based ids in
increasing category-id order; `DetectionDataset.category_ids[i]` is the COCO id of class i.
"""

from __future__ import annotations

import json
import os

from retinanet.data.dataset import DetectionDataset
from retinanet.data.validation import (MISSING_IMAGE, UNKNOWN_CLASS, UNPARSABLE, Problems,
                                       RawObject, check_image, make_record,
                                       validate_check_images)


def from_coco(annotation_file: str, image_dir: str, *, skip_invalid: bool = False,
              check_images: str = "header") -> DetectionDataset:
    """Reads a COCO instances JSON file (e.g. instances_val2017.json).

    Args:
      annotation_file: the JSON file with "images", "annotations" and "categories".
      image_dir: folder that the images' "file_name" values are relative to.
      skip_invalid: skip and count invalid images and boxes instead of raising ValueError.
      check_images: "header", "decode" or "none" (trust the JSON width/height).

    Returns:
      DetectionDataset with class_names from the categories sorted by id, category_ids the
      COCO ids, image_id the COCO image id as a string, is_crowd from "iscrowd". Images
      without annotations are kept (no boxes).
    Raises:
      ValueError naming the file: bad JSON structure, a missing or corrupt image, an
      annotation naming an unknown image id or category, w or h <= 0, a box outside the
      image, an empty dataset.
    """
    check_images = validate_check_images(check_images)
    annotation_file = os.fspath(annotation_file)
    image_dir = os.fspath(image_dir)
    try:
        with open(annotation_file, encoding="utf-8") as file:
            coco = json.load(file)
    except FileNotFoundError:
        raise ValueError(f"annotation_file {annotation_file!r} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{annotation_file}: invalid JSON ({error})") from None
    if not isinstance(coco, dict) or not all(
            isinstance(coco.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{annotation_file}: expected a COCO instances object with "
                         "'images' and 'categories' lists")
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
    class_index = {cid: i for i, cid in enumerate(category_ids)}

    images = {}
    for image in coco["images"]:
        try:
            images[image["id"]] = {"file_name": image["file_name"], "objects": [],
                                   "size": (image.get("height"), image.get("width"))}
        except (KeyError, TypeError):
            problems.image(annotation_file, UNPARSABLE,
                           f"image entry {str(image)[:80]} lacks 'id' or 'file_name'")

    for index, annotation in enumerate(coco.get("annotations", [])):
        where = f"annotation {annotation.get('id', index)}"
        image = images.get(annotation.get("image_id"))
        if image is None:
            # An annotation naming an image absent from "images": its file is unknown.
            problems.box(annotation_file, MISSING_IMAGE,
                         f"{where} names image_id {annotation.get('image_id')!r}, which is "
                         "not in 'images'")
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
                                          is_crowd=bool(annotation.get("iscrowd", 0))))

    records = []
    for image_id, image in images.items():
        path = os.path.join(image_dir, image["file_name"])
        size = check_image(path, f"{annotation_file} (image id {image_id})", check_images,
                           problems, image["size"])
        if size is None:
            continue
        records.append(make_record(str(image_id), path, size[0], size[1], image["objects"],
                                   class_index, f"{annotation_file} (image {path})",
                                   problems))
    problems.finish(len(records), annotation_file)
    return DetectionDataset(class_names, records, category_ids=category_ids,
                            name=f"coco:{annotation_file}", skipped=problems.counts)
