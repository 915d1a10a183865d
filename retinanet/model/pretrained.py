"""Where a model's starting weights come from, through one entry point (`load_pretrained`).

`retinanet train --config.model.init_from=SOURCE` fine-tunes from one, and
`retinanet predict --checkpoint=SOURCE` detects with one. A SOURCE is

- a keras-hub preset name (`retinanet.model.presets.KERAS_HUB_PRESETS`; keras-hub downloads
  it from Kaggle once and caches it),
- a keras-hub preset directory (offline: a downloaded or `save_to_preset` copy, with its
  `metadata.json`),
- a torchvision RetinaNet state dict (`.safetensors` or `.npz`,
  `retinanet.model.torchvision_import`), or
- a `.keras` file saved by this package (a training run's checkpoint).

`RetinaNet.from_preset`, `RetinaNet.from_torchvision` and `init_from` all come here, so the
rule for the class layer is one: kept when `num_classes` is None or the source's, else new.

The COCO presets were trained at torchvision's input size: the short side resized to 800,
the long side at most 1333 (`PRESET_IMAGE_SIZE`, the pipeline's `(min_side, max_side)`).
"""

import copy
import os

from retinanet.model.presets import COCO_CLASS_NAMES, KERAS_HUB_PRESETS

PRESET_IMAGE_SIZE = (800, 1333)
_PRESET_METADATA = "metadata.json"  # keras-hub's `preset_utils.METADATA_FILE`


def is_preset(source):
    """True for a keras-hub preset name or a directory that holds a keras-hub preset."""
    source = os.fspath(source)
    return source in KERAS_HUB_PRESETS or os.path.isfile(os.path.join(source, _PRESET_METADATA))


def is_torchvision_file(source):
    """True for a path named like a torchvision state dict (`.safetensors`, `.npz`)."""
    return os.fspath(source).endswith((".safetensors", ".npz"))


def load_pretrained(source, num_classes=None, class_names=None):
    """A `RetinaNet` with the weights of a preset, a torchvision state dict or a `.keras`
    file (see the module).

    Args:
        source: a preset name, a preset directory, a torchvision RetinaNet state dict
            (`.safetensors` or `.npz`, `RetinaNet.from_torchvision`) or a `.keras` path.
        num_classes: None keeps the source's classes (and its `class_names`); an int K that
            differs from the source's gives a new, prior-initialised last layer of the class
            subnet (`with_num_classes`); every other weight is the source's.
        class_names: a torchvision state dict's class names (its file holds none).

    Returns:
        A built, uncompiled `retinanet.RetinaNet`.

    Raises:
        ValueError: `source` is none of these, or its model cannot be converted.
    """
    import keras

    source = os.fspath(source)
    if is_torchvision_file(source):
        from retinanet.model.torchvision_import import from_torchvision

        model = from_torchvision(source, class_names=class_names)
        if num_classes is None or int(num_classes) == model.num_classes:
            return model
        return with_num_classes(model, num_classes)
    if is_preset(source):
        from retinanet.model import presets

        detector = presets.load_keras_hub_detector(source)
        keep = num_classes is None or int(num_classes) == int(detector.num_classes)
        return presets.from_keras_hub(detector, num_classes=None if keep else num_classes)
    if not (source.endswith(".keras") and os.path.isfile(source)):
        raise ValueError(
            f"{source!r} is not a keras-hub preset name ({', '.join(KERAS_HUB_PRESETS)}), a "
            "keras-hub preset directory (with metadata.json) or a .keras file."
        )
    import retinanet  # noqa: F401  (registers the custom objects)

    check_keras_file(source)
    model = keras.saving.load_model(source, compile=False)
    if num_classes is None or int(num_classes) == model.num_classes:
        return model
    return with_num_classes(model, num_classes)


def check_keras_file(path):
    """Raises ValueError when the `.keras` file at `path` is not a whole zip archive (a copy
    cut short, a disk that filled up), which Keras would report as "File not found"."""
    import zipfile

    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        raise ValueError(f"{path}: not a readable .keras file ({size} bytes, not a complete "
                         "zip archive: truncated or corrupt)")


def with_num_classes(model, num_classes):
    """A copy of `model` with K classes: every weight whose shape fits is transferred.

    The architecture is `model`'s (same backbone, FPN, heads, anchors, decoding); only the
    last conv of the class subnet changes shape, and it keeps its fresh initialisation
    (kernel N(0, 0.01), bias at the 0.01 prior). `class_names` is dropped.

    Args:
        model: a built `retinanet.RetinaNet`.
        num_classes: K >= 1.

    Returns:
        A new built `retinanet.RetinaNet` with K classes.
    """
    from retinanet.model.retinanet import RetinaNet

    config = copy.deepcopy(model.get_config())
    config["num_classes"] = int(num_classes)
    config["class_names"] = None
    config["classification_head"]["config"]["outputs_per_anchor"] = int(num_classes)
    new = RetinaNet.from_config(config)
    # Same architecture, so the same variables in the same order; only shapes may differ.
    if len(new.weights) != len(model.weights):
        raise ValueError(
            f"Cannot rebuild the model with {num_classes} classes: {len(new.weights)} "
            f"weights, the source has {len(model.weights)}."
        )
    for target, source in zip(new.weights, model.weights):
        if tuple(target.shape) == tuple(source.shape):
            target.assign(source)
    return new


def model_classes(model):
    """`(class_names, category_ids)` a model carries, for predictions without a training run.

    Names are `model.class_names` (else `"0"`, `"1"`, ...), made unique by appending the index
    to repeats (torchvision's ten unused COCO ids are all `"N/A"`: `"N/A"`, `"N/A 26"`, ...).
    Category ids are COCO's for a model with torchvision's 91 COCO logits (logit `i` is
    category id `i`, see `retinanet.model.presets`), else None (ids are the 0-based classes).
    """
    names = model.class_names or [str(index) for index in range(model.num_classes)]
    seen = set()
    unique = []
    for index, name in enumerate(names):
        unique.append(f"{name} {index}" if name in seen else name)
        seen.add(name)
    ids = None
    if tuple(names) == COCO_CLASS_NAMES:
        ids = list(range(len(COCO_CLASS_NAMES)))
    return unique, ids
