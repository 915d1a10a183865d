"""Pascal VOC XML reader.

Coordinate convention: VOC XML gives 1-based, inclusive pixel indices (the top-left pixel is
(1, 1); a box covering pixels 1..10 has xmin=1, xmax=10). We convert to continuous xyxy with
0 at the image's left edge:  x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax,
so width = xmax - xmin + 1 pixels, as VOC means it. A stray 0 (from tools that write 0-based
values) becomes -1 and is clipped to 0.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

from retinanet.data.dataset import (DetectionDataset, class_name_problem,
                                    validate_class_names)
from retinanet.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, validate_max_image_pixels
from retinanet.data.validation import (BAD_CLASS_NAME, UNPARSABLE, Problems, RawObject,
                                       check_image, make_record, validate_check_images)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def voc_box_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float):
    """VOC 1-based inclusive pixel indices -> continuous xyxy (see the module docstring)."""
    return xmin - 1.0, ymin - 1.0, xmax, ymax


def _layout(root: str):
    """(annotation_dir, image_dir) of a VOC devkit year folder or a flat folder."""
    for annotation_dir, image_dir in (("Annotations", "JPEGImages"), ("annotations", "images")):
        if os.path.isdir(os.path.join(root, annotation_dir)):
            return os.path.join(root, annotation_dir), os.path.join(root, image_dir)
    raise ValueError(f"root {root!r} has neither Annotations/ + JPEGImages/ (a VOC devkit "
                     "year folder) nor annotations/ + images/")


def _annotation_files(root: str, annotation_dir: str, split):
    if split is None:
        names = sorted(n for n in os.listdir(annotation_dir) if n.lower().endswith(".xml"))
        return [os.path.join(annotation_dir, n) for n in names]
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise ValueError(f"split {split!r}: {split_file} not found")
    with open(split_file, encoding="utf-8") as file:
        ids = [line.split()[0] for line in file if line.strip()]
    return [os.path.join(annotation_dir, f"{image_id}.xml") for image_id in ids]


def _parse(xml_file: str):
    """(image file name or None, (height, width) as str, [(name, (xmin, ymin, xmax, ymax) as
    str, difficult)])."""
    root = ElementTree.parse(xml_file).getroot()
    filename = root.findtext("filename")
    size = (root.findtext("size/height"), root.findtext("size/width"))
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        coords = None if box is None else tuple(
            box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "", "false")
        objects.append(((obj.findtext("name") or "").strip(), coords, difficult))
    return (filename.strip() if filename else None), size, objects


def from_voc(root: str, split: str | None = None, *, class_names=None,
             skip_invalid: bool = False, check_images: str = "header",
             max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> DetectionDataset:
    """Reads Pascal VOC XML annotations.

    Args:
        root: a VOC devkit year folder (Annotations/, JPEGImages/, ImageSets/Main/) or a flat
            folder with annotations/*.xml and images/.
        split: None for every XML file, or a name whose ImageSets/Main/<split>.txt lists the ids.
        class_names: list of str fixing the class ids; objects with other names are invalid.
            Default: the 20 VOC classes when every name found is one of them, else the sorted
            names found. Pass it explicitly to keep ids the same across splits.
        skip_invalid: skip and count invalid images and boxes instead of raising ValueError.
        check_images: "header", "decode" or "none" (trust the XML <size>), see validation.py.
        max_image_pixels: int or None; images whose header (or, with check_images="none",
            the XML <size>) claims more pixels are refused before any decode.

    Returns:
        DetectionDataset; boxes are continuous xyxy (x1 = xmin - 1, y1 = ymin - 1, x2 = xmax,
        y2 = ymax), `difficult` from <difficult>, image_id the XML file name without ".xml".
    Raises:
        ValueError naming the file: a missing, corrupt or too large image, an XML naming a
        missing image, an invalid class name, an unknown class, x2 <= x1 or y2 <= y1, a box
        outside the image, an empty dataset. Boxes in messages quote the XML's own values.
    """
    check_images = validate_check_images(check_images)
    max_image_pixels = validate_max_image_pixels(max_image_pixels)
    root = os.fspath(root)
    annotation_dir, image_dir = _layout(root)
    problems = Problems(f"from_voc({root!r})", skip_invalid)

    parsed = []
    for xml_file in _annotation_files(root, annotation_dir, split):
        image_id = os.path.splitext(os.path.basename(xml_file))[0]
        try:
            filename, annotated_size, objects = _parse(xml_file)
        except FileNotFoundError:
            problems.image(xml_file, UNPARSABLE, "annotation file not found")
            continue
        except ElementTree.ParseError as error:
            problems.image(xml_file, UNPARSABLE, f"invalid XML ({error})")
            continue
        except RecursionError:
            problems.image(xml_file, UNPARSABLE, "XML nested too deeply to read")
            continue
        parsed.append((xml_file, image_id, filename or f"{image_id}.jpg", objects,
                       annotated_size))

    if class_names is None:
        found = sorted({name for _, _, _, objects, _ in parsed for name, _, _ in objects
                        if not class_name_problem(name)})
        class_names = list(VOC_CLASSES) if found and set(found) <= set(VOC_CLASSES) and \
            os.path.isdir(os.path.join(root, "JPEGImages")) else found
    class_names = validate_class_names(class_names) if class_names else class_names
    class_index = {name: i for i, name in enumerate(class_names)}

    records = []
    for xml_file, image_id, filename, objects, annotated_size in parsed:
        path = os.path.join(image_dir, filename)
        size = check_image(path, xml_file, check_images, problems, annotated_size,
                           max_image_pixels)
        if size is None:
            continue
        raw = []
        for index, (name, coords, difficult) in enumerate(objects):
            problem = class_name_problem(name)
            if problem:
                problems.box(xml_file, BAD_CLASS_NAME,
                             f"object {index}: the <name> {problem}")
                continue
            where = f"object {index} ({name!r})"
            try:
                box = voc_box_to_xyxy(*(float(c) for c in coords))
            except (TypeError, ValueError):
                problems.box(xml_file, UNPARSABLE, f"{where}: bndbox {coords} is not 4 numbers")
                continue
            shown = "bndbox " + " ".join(
                f"{k}={c.strip()}" for k, c in zip(("xmin", "ymin", "xmax", "ymax"), coords))
            raw.append(RawObject(name, box, where, difficult=difficult, shown=shown))
        records.append(make_record(image_id, path, size[0], size[1], raw, class_index,
                                   xml_file, problems))
    problems.finish(len(records), root)
    if not class_names:
        raise ValueError(f"{root}: no objects found, so no class names; pass class_names")
    return DetectionDataset(class_names, records, name=f"voc:{root}", skipped=problems.counts,
                            clipped=problems.clipped)
