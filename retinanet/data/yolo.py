"""YOLO (Darknet / Ultralytics) txt reader.

Layout: root/images/**/<name>.<ext> and root/labels/**/<name>.txt (the same relative path),
one `class cx cy w h` line per box, all four normalised to [0, 1] by the image's own width and
height. We read each image's size from its header and convert:
    x1 = (cx - w / 2) * width,  y1 = (cy - h / 2) * height,
    x2 = (cx + w / 2) * width,  y2 = (cy + h / 2) * height,
in float64 and without rounding (YOLO files carry ~6 decimals, so boxes land within ~1e-3 px
of the pixel grid), then clip to the image. An image without a label file has no boxes.

data.yaml is read with a SafeLoader that refuses YAML whose aliases expand past
`MAX_YAML_EXPANSION` (scalar characters plus nodes, counted over the expanded tree): nine
levels of nine aliases in 318 bytes expand to a 2-billion-character "class name".
"""

from __future__ import annotations

import ast
import os
import re

from retinanet.data.dataset import DetectionDataset, validate_class_names
from retinanet.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, validate_max_image_pixels
from retinanet.data.image_files import MISSING_IMAGE, list_images
from retinanet.data.validation import (UNPARSABLE, Problems, RawObject, check_image, make_record,
                                       validate_check_images)

# A real data.yaml (paths, nc, a few thousand names at most) expands to well under 1 MB.
MAX_YAML_EXPANSION = 1_000_000


def yolo_box_to_xyxy(cx: float, cy: float, w: float, h: float, width: int, height: int):
    """Normalised YOLO (cx, cy, w, h) -> absolute xyxy for an image of width x height."""
    return ((cx - w / 2) * width, (cy - h / 2) * height,
            (cx + w / 2) * width, (cy + h / 2) * height)


def _scalar(text: str):
    text = text.strip()
    if text[:1] in "'\"":
        try:
            return str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            return text.strip("'\"")
    return text


def parse_yaml_names(text: str):
    """The `names:` of a YOLO data.yaml, in the forms YOLO tools write, without PyYAML.

    Handles `names: [a, b]` (flow list), a block list (`- a`) and a block mapping (`0: a`).
    Returns the list of names in id order, or None if there is no `names:` key.
    """
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^names\s*:\s*(.*?)\s*(#.*)?$", line)
        if not match:
            continue
        rest = match.group(1)
        if rest.startswith("["):
            inner = rest.strip("[]")
            return [_scalar(item) for item in re.findall(
                r"""'[^']*'|"[^"]*"|[^,]+""", inner) if item.strip()]
        if rest.startswith("{"):
            pairs = re.findall(r"""(\d+)\s*:\s*('[^']*'|"[^"]*"|[^,}]+)""", rest)
            return [_scalar(v) for _, v in sorted(pairs, key=lambda p: int(p[0]))]
        items, mapping = [], {}
        for block in lines[number + 1:]:
            if not block.strip() or block.lstrip().startswith("#"):
                continue
            if not block[:1].isspace():
                break
            entry = block.strip()
            if entry.startswith("- "):
                items.append(_scalar(entry[2:]))
            else:
                key, _, value = entry.partition(":")
                mapping[int(key)] = _scalar(value)
        return items or [mapping[k] for k in sorted(mapping)]
    return None


def _expanded_size(node, sizes: dict, limit: int) -> int:
    """Nodes plus scalar characters of `node` with every alias expanded, capped at limit + 1.

    Shared nodes (aliases) are measured once and counted at each use, so a bomb is measured
    without being expanded; a node still being measured when reached again (a recursive
    alias) counts as over the limit.
    """
    import yaml

    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = limit + 1  # in progress: a cycle through here is over the limit
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, limit) for child in node.value)
    else:  # MappingNode
        size = 1 + sum(_expanded_size(k, sizes, limit) + _expanded_size(v, sizes, limit)
                       for k, v in node.value)
    sizes[key] = min(size, limit + 1)
    return sizes[key]


def _bounded_yaml_loader(limit: int = MAX_YAML_EXPANSION):
    """A yaml.SafeLoader class that refuses documents expanding past `limit`."""
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        def compose_document(self):
            node = super().compose_document()
            if node is not None and _expanded_size(node, {}, limit) > limit:
                raise ValueError(f"its aliases expand to over {limit:,} characters and "
                                 "nodes (a YAML alias bomb?)")
            return node

    return BoundedSafeLoader


def _yaml_document(text: str) -> dict:
    """A data.yaml as a dict: PyYAML's bounded SafeLoader, or without PyYAML the top-level
    `key: value` scalars and `names`."""
    try:
        import yaml
    except ImportError:
        data = {m.group(1): _scalar(m.group(2)) for m in re.finditer(
            r"^(\w+)\s*:[ \t]*([^#\n]*?)\s*(?:#.*)?$", text, re.MULTILINE) if m.group(2)}
        data["names"] = parse_yaml_names(text)
        return data
    del yaml  # present: parse with the bounded SafeLoader (what yaml.load does, inlined)
    loader = _bounded_yaml_loader()(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    return data if isinstance(data, dict) else {}


def read_data_yaml(path: str) -> dict:
    """An ultralytics `data.yaml`: `{"root", "train", "val", "names"}`.

    `root` is its `path:` (relative to the file's folder; the folder itself when absent);
    `train` and `val` are lists of entries (folders of images or .txt lists of image paths,
    relative to `root`), empty when absent; `names` a list in id order (list or {id: name}
    form), or None.

    Raises:
        ValueError: naming the file, when it cannot be read or holds a wrong type.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = _yaml_document(file.read())
    except RecursionError:
        raise ValueError(f"{path}: cannot be read (nested too deeply)") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror})") from None
    except Exception as error:  # noqa: BLE001 - any parse failure names the file
        raise ValueError(f"{path}: cannot be read ({error})") from None
    folder = os.path.dirname(os.path.abspath(path))
    root = data.get("path") or folder
    if not isinstance(root, str):
        raise ValueError(f"{path}: 'path' must be a folder, got {root!r}")
    root = os.path.join(folder, root)
    entries = {}
    for split in ("train", "val"):
        value = data.get(split) or []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: '{split}' must be a folder, a .txt list of images or a "
                             f"list of them, got {data.get(split)!r}")
        entries[split] = [os.path.normpath(os.path.join(root, v)) for v in value]
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if names is not None and not isinstance(names, list):
        raise ValueError(f"{path}: 'names' must be a list or an {{id: name}} mapping, got "
                         f"{type(names).__name__}")
    if names is not None:
        names = [_name_as_str(n, i, path) for i, n in enumerate(names)]
    return {"root": os.path.normpath(root), **entries, "names": names}


def label_path(image_path: str) -> str:
    """Ultralytics' label file of an image: the last `/images/` of its path becomes
    `/labels/` and the extension `.txt`."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, found, tail = image_path.rpartition(images)
    swapped = head + labels + tail if found else image_path
    return os.path.splitext(swapped)[0] + ".txt"


def _listed_images(entry: str, source: str):
    """Image paths of one data.yaml entry: a folder (recursively) or a .txt list."""
    if os.path.isdir(entry):
        return [os.path.join(entry, relative) for relative in list_images(entry)]
    if os.path.isfile(entry) and entry.endswith(".txt"):
        folder = os.path.dirname(entry)
        with open(entry, encoding="utf-8") as file:
            return [os.path.normpath(os.path.join(folder, line.strip()))
                    for line in file if line.strip()]
    raise ValueError(f"{source}: {entry} is neither a folder nor a .txt list of images")


def _name_as_str(name, index: int, source: str) -> str:
    """A data.yaml class name as str: scalars (ints, floats) convert, containers do not."""
    if isinstance(name, (list, dict, set, tuple)) or name is None:
        raise ValueError(f"{source}: class name {index} is a {type(name).__name__}, "
                         "not a name")
    return str(name)


def _read_class_names(root: str):
    classes_txt = os.path.join(root, "classes.txt")
    if os.path.isfile(classes_txt):
        with open(classes_txt, encoding="utf-8") as file:
            return [line.strip() for line in file if line.strip()], classes_txt
    for name in ("data.yaml", "dataset.yaml"):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        names = read_data_yaml(path)["names"]
        if names:
            return names, path
    return None, None


def from_yolo(root: str, class_names=None, *, split: str | None = None,
              skip_invalid: bool = False, check_images: str = "header",
              max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> DetectionDataset:
    """Reads a YOLO txt dataset.

    Args:
        root: folder with images/ and labels/ (and classes.txt or data.yaml).
        class_names: list of str; default from root/classes.txt (one name per line) or the
            `names:` of root/data.yaml (list or {id: name} mapping).
        split: optional subfolder, i.e. images/<split>/ and labels/<split>/.
        skip_invalid: skip and count invalid images and boxes instead of raising ValueError.
        check_images: "header" or "decode" (see validation.py); the size always comes from
            the image itself.
        max_image_pixels: int or None; images whose header claims more pixels are refused
            before any decode (decompression bombs).

    Returns:
        DetectionDataset, image_id the image path under images/ without extension.
    Raises:
        ValueError naming the file: a label file without its image, a missing, corrupt or too
        large image, a malformed line, an unknown class id, w or h <= 0, a box outside the
        image, an empty dataset, no class names or invalid ones (a data.yaml alias bomb,
        control characters, over 256 characters).
    """
    max_image_pixels = validate_max_image_pixels(max_image_pixels)
    if validate_check_images(check_images) == "none":
        raise ValueError("check_images='none' does not apply to from_yolo: normalised boxes "
                         "need each image's size from its header; use 'header' or 'decode'")
    root = os.fspath(root)
    image_dir = os.path.join(root, "images", *([split] if split else []))
    label_dir = os.path.join(root, "labels", *([split] if split else []))
    if not os.path.isdir(image_dir):
        raise ValueError(f"root {root!r}: image folder {image_dir} not found")
    if class_names is None:
        class_names, source = _read_class_names(root)
        if class_names is None:
            raise ValueError(f"root {root!r}: no classes.txt or data.yaml with names; pass "
                             "class_names")
        class_names = validate_class_names(class_names, f"class names in {source}")
    else:
        class_names = validate_class_names(class_names)
    problems = Problems(f"from_yolo({root!r})", skip_invalid)

    images = list_images(image_dir)
    stems = {os.path.splitext(p)[0] for p in images}
    if os.path.isdir(label_dir):
        for directory, _, names in os.walk(label_dir):
            for name in sorted(names):
                label_file = os.path.join(directory, name)
                stem = os.path.splitext(os.path.relpath(label_file, label_dir))[0]
                if name.endswith(".txt") and stem not in stems:
                    problems.image(label_file, MISSING_IMAGE,
                                   f"no image {stem}.* under {image_dir}")

    images = [(os.path.splitext(relative)[0], os.path.join(image_dir, relative),
               os.path.join(label_dir, os.path.splitext(relative)[0] + ".txt"))
              for relative in images]
    records = _records(images, class_names, problems, check_images, max_image_pixels)
    problems.finish(len(records), image_dir)
    return DetectionDataset(class_names, records, name=f"yolo:{root}",
                            skipped=problems.counts, clipped=problems.clipped)


def from_data_yaml(path: str, split: str = "train", class_names=None, *,
                   skip_invalid: bool = False, check_images: str = "header",
                   max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> DetectionDataset:
    """One split of an ultralytics dataset described by its `data.yaml`.

    The split's entries (`read_data_yaml`: folders of images or .txt lists of image paths)
    give the images; each image's labels are ultralytics' (`label_path`: its path with the
    last `/images/` made `/labels/`, extension `.txt`). Image ids are paths relative to the
    yaml's `path`, without extension.

    Args:
        path: the data.yaml file.
        split: "train" or "val".
        class_names: default the yaml's `names`.
        skip_invalid, check_images, max_image_pixels: as in `from_yolo`.

    Raises:
        ValueError naming the file: no such split or names in the yaml, an entry that is
        not there, and everything `from_yolo` refuses.
    """
    path = os.fspath(path)
    described = read_data_yaml(path)
    if not described[split]:
        raise ValueError(f"{path}: no '{split}' images")
    names = validate_class_names(class_names if class_names is not None else
                                 described["names"] or [], f"class names in {path}")
    if not names:
        raise ValueError(f"{path}: no 'names'; pass class_names")
    problems = Problems(f"from_data_yaml({path!r}, {split!r})", skip_invalid)
    images = []
    for entry in described[split]:
        for image in _listed_images(entry, path):
            image_id = os.path.splitext(os.path.relpath(image, described["root"]))[0]
            images.append((image_id, image, label_path(image)))
    records = _records(images, names, problems, check_images, max_image_pixels)
    problems.finish(len(records), path)
    return DetectionDataset(names, records, name=f"yolo:{path}:{split}",
                            skipped=problems.counts, clipped=problems.clipped)


def _records(images, class_names, problems, check_images, max_image_pixels):
    """Records of `(image_id, image path, label path)` triples (no label file: no boxes)."""
    class_index = {i: i for i in range(len(class_names))}
    records = []
    for image_id, path, label_file in images:
        size = check_image(path, path, check_images, problems,
                           max_image_pixels=max_image_pixels)
        if size is None:
            continue
        height, width = size
        objects = []
        if os.path.isfile(label_file):
            with open(label_file, encoding="utf-8") as file:
                lines = file.read().splitlines()
            for number, line in enumerate(lines, start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"line {number}"
                try:
                    if len(fields) != 5:
                        raise ValueError
                    label = float(fields[0])
                    cx, cy, w, h = (float(v) for v in fields[1:])
                    if label != int(label):
                        raise ValueError
                except ValueError:
                    problems.box(label_file, UNPARSABLE,
                                 f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
                    continue
                objects.append(RawObject(int(label), yolo_box_to_xyxy(cx, cy, w, h, width,
                                                                      height), where,
                                         shown=f"cx cy w h = {' '.join(fields[1:])}"))
        records.append(make_record(image_id, path, height, width, objects, class_index,
                                   label_file, problems))
    return records
