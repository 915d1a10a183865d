"""Experiment configs: the schema every config file starts from, its files and its checks.

A config file (a recipe in `configs/`, installed as `retinanet.configs`, or your own)
defines `get_config()` returning `default_config()` with its own values; absl's
`config_flags` loads it and lets any field be overridden on the command line
(`--config.train.epochs=3`). `resolve_config_file` turns a recipe's name into its file. `retinanet.training.builders` turns a config into the
package's own objects and `retinanet.training.datasets` into datasets and pipelines.

Sections (see `default_config` for every field and its meaning):

- `model`: backbone, FPN and head widths, `anchors`, `matching`, `postprocess`.
- `data`: `format` (shapes, coco, voc, yolo, csv, tfds), `train` / `val` paths, resizing
  and augmentation, batch size, the built-in `shapes` set.
- `train`: epochs, optimiser and learning-rate schedule, loss weights, evaluation cadence.
- `eval`: which metrics and thresholds `retinanet evaluate` reports.

Errors are `ConfigError` (a ValueError) and name the field, e.g. `config.data.train: path not
found: /data/train.json`.
"""

from __future__ import annotations

import json
import os

import ml_collections

from retinanet import atomic

DATA_FORMATS = ("shapes", "coco", "voc", "yolo", "csv", "tfds")
OPTIMIZERS = ("adam", "adamw", "sgd", "reference")
BOX_LOSSES = ("smooth_l1", "giou", "diou", "ciou")
CLASSIFICATION_LOSSES = ("focal", "quality_focal")
MATCHING_METHODS = ("iou", "atss")
SCHEDULES = ("constant", "cosine", "step")


class ConfigError(ValueError):
    """A config field has a wrong value; the message names the field."""


def default_config() -> ml_collections.ConfigDict:
    """The full schema with general-purpose defaults; config files change what they need.

    The defaults are not the paper's recipe (that is the `retinanet_r50_coco` recipe): Adam
    1e-4 with a constant learning rate, a 640 px square and a ResNet50 from random weights.

    Returns:
        An unlocked ConfigDict; `from_dict` and `load_json` return it locked, so a misspelt
        field is an error rather than silently ignored.
    """
    config = ml_collections.ConfigDict()
    config.name = "retinanet"
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        # A name in retinanet.model.backbone.BACKBONES (keras.applications), or "simple": a
        # small residual CNN for training from scratch on a CPU (see
        # retinanet.model.build_simple_backbone).
        backbone="resnet50",
        backbone_weights="",  # "" (random init), "imagenet" or a .weights.h5 path
        # Start from a whole detector: a keras-hub preset name or directory, or a .keras file
        # (retinanet.model.pretrained). Its architecture and anchors replace backbone, widths
        # and anchors above; the class subnet's last layer is new when the classes differ.
        init_from="",
        # The resize and padding rules of the model's inputs (retinanet.preprocess): "retinanet"
        # or "torchvision" (torchvision's transform, which its COCO detectors expect). Unset:
        # init_from's own rules, else "retinanet".
        preprocessing=ml_collections.config_dict.placeholder(str),
        freeze_backbone=False,
        # None (unset) follows the weights: frozen when the backbone starts from pretrained
        # weights (backbone_weights or a pretrained detector), trainable from scratch; an
        # explicit true/false always wins.
        frozen_batchnorm=ml_collections.config_dict.placeholder(bool),
        frozen_early_stages=ml_collections.config_dict.placeholder(bool),  # strides 2 and 4
        fpn_filters=256,
        head_convs=4,
        head_filters=256,
        use_group_norm=False,
        # Backbone BatchNormalization momentum; 0 keeps the application's (0.999 in
        # MobileNetV3, whose moving statistics then lag far behind a short from-scratch run).
        batchnorm_momentum=0.0,
        # TF's fused kernel where statistics train: R50 step 1.4x, RetinaNet 1.16x (CPU, batch 2).
        fused_batchnorm=True,
        # Recompute the backbone's activations in the backward pass instead of keeping them:
        # less memory, a slower step (model/recompute.py; figures in BENCHMARKS.md).
        recompute_backbone=False,
        # predict and evaluate also detect on the mirrored images and fuse both views
        # (model/flip.py): about twice the inference time; see docs/LEARNING.md for its AP.
        test_time_flip=False,
        # With several replicas (mirrored, multi-worker), compute the backbone's trainable
        # batch statistics over the global batch, so every replica keeps the same moving
        # statistics (Keras' BatchNormalization(synchronized=True)).
        sync_batchnorm=True,
        # backbone="simple": channels of the five stride-2 stages (C3, C4, C5 are the last
        # three) and residual blocks per stage after the first.
        simple_widths=(16, 32, 64, 96, 128),
        simple_blocks=1,
    ))
    # Levels P3..P{max_level}; the base anchor is anchor_size * stride on each level.
    config.model.anchors = ml_collections.ConfigDict(dict(
        max_level=7,
        anchor_size=4.0,
        scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios=(0.5, 1.0, 2.0),  # height / width
    ))
    config.model.matching = ml_collections.ConfigDict(dict(
        # "iou": the paper's thresholds below; "atss": adaptive (per-object mean + std of
        # the IoUs of the atss_top_k anchors per level nearest its centre).
        method="iou",
        positive_iou=0.5,
        negative_iou=0.4,
        allow_low_quality_matches=True,
        atss_top_k=9,
    ))
    config.model.postprocess = ml_collections.ConfigDict(dict(
        score_threshold=0.05,
        pre_nms_topk_per_level=1000,
        iou_threshold=0.5,
        max_detections=100,
    ))

    config.data = ml_collections.ConfigDict(dict(
        format="shapes",
        # Paths by format: coco = instances JSON (images in train_images, default its folder);
        # voc = devkit year folder or folder with annotations/ and images/; yolo = folder with
        # images/ and labels/; csv = CSV file (images in train_images, default its folder);
        # tfds = dataset name, optionally with ":split" ("voc/2007:train").
        train="",
        val="",
        train_images="",
        val_images="",
        train_split="",  # voc ImageSets/Main/<split>.txt, yolo subfolder, tfds split
        val_split="",
        val_fraction=0.0,  # without `val`: hold out this share of `train` for validation
        # Train and val may share images (same file or same bytes); off: `train` refuses.
        allow_overlap=False,
        class_names="",  # comma-separated; "" = from the data
        skip_invalid=False,  # skip and count bad images/boxes instead of stopping
        check_images="header",
        # Images whose header claims more pixels are refused before decoding (a 64 KB PNG can
        # claim 23000 x 23000); retinanet.data.image_header.DEFAULT_MAX_IMAGE_PIXELS.
        max_image_pixels=100_000_000,
        tfds_data_dir="",
        tfds_download=False,
        image_size=640,  # S: fixed S x S canvas; 0: use min_side / max_side
        min_side=800,
        max_side=1333,
        max_boxes=100,
        batch_size=16,  # global, over all replicas and workers
        eval_batch_size=8,
        horizontal_flip=True,
        scale_range=(0.8, 1.25),
        color_jitter=0.0,  # 0-1: random brightness, contrast, saturation, hue; 0 = off
        mosaic=0.0,  # probability that 4 training images become one 2 x 2 mosaic; 0 = off
        cache=False,
        shapes=ml_collections.ConfigDict(dict(
            num_train=1000,
            num_val=200,
            size=256,  # the generated images' side
            min_size=12.0,
            max_size=0.0,  # 0: half the image side
            max_objects=6,
            background="textured",
            train_seed=0,
            val_seed=1,
        )),
    ))

    config.train = ml_collections.ConfigDict(dict(
        epochs=12,
        steps_per_epoch=0,  # 0: one pass over the training images
        optimizer="adam",  # adam, adamw, sgd, or "reference" (the paper's SGD recipe)
        learning_rate=1e-4,
        schedule="constant",  # constant, cosine or step (sgd/adam/adamw)
        warmup_steps=0,
        warmup_factor=0.001,  # learning rate at step 0, as a share of learning_rate
        decay_boundaries=(2 / 3, 8 / 9),  # "step": shares of the total steps
        decay_factor=0.1,
        cosine_alpha=0.01,  # "cosine": final learning rate as a share of learning_rate
        momentum=0.9,
        weight_decay=0.0,
        clipnorm=10.0,  # 0: no clipping
        box_loss_weight=1.0,
        # "focal" (the paper's) or "quality_focal": the class score learns its box's IoU
        # (Generalized Focal Loss), so NMS keeps the best-placed box.
        classification_loss="focal",
        focal_alpha=0.25,
        focal_gamma=2.0,
        quality_focal_beta=2.0,
        smooth_l1_beta=1 / 9,
        # smooth_l1 (the paper's, on the encoded deltas; smooth_l1_beta=0 is L1), or an IoU
        # loss on the decoded boxes: giou (torchvision's v2), diou or ciou.
        box_loss="smooth_l1",
        # > 0: keep an exponential moving average of the weights with this momentum (Keras'
        # `use_ema`); evaluation, checkpoints and the final model use the average.
        ema_momentum=0.0,
        jit_compile=False,
        steps_per_execution=1,
        eval_every_n_epochs=1,  # 0: only at the end
        deterministic=False,  # reproducible data order (also across resumes)
        # > 0: train as many steps as fit in this many minutes (epochs is then ignored) and
        # fit the learning-rate schedule to them; see retinanet.training.budget.
        time_budget_minutes=0.0,
    ))

    config.eval = ml_collections.ConfigDict(dict(
        voc_iou_threshold=0.5,
        voc_method="all_points",
    ))
    return config


# Fields renamed since earlier releases: (section, old name) -> new name, so that the
# config.json of an older run still loads.
RENAMED_FIELDS = {("config.data.shapes", "image_size"): "size"}


def _merge(target: ml_collections.ConfigDict, values: dict, path: str):
    for key, value in values.items():
        key = RENAMED_FIELDS.get((path, key), key)
        name = f"{path}.{key}"
        if key not in target:
            raise ConfigError(f"{name}: unknown field (known: {', '.join(sorted(target))})")
        if isinstance(target[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a section, got {value!r}")
            _merge(target[key], value, name)
            continue
        if isinstance(target[key], tuple) and isinstance(value, list):
            value = tuple(value)  # JSON has lists only
        try:
            target[key] = value
        except TypeError as error:
            raise ConfigError(f"{name}: {error}") from None


def from_dict(values: dict) -> ml_collections.ConfigDict:
    """`default_config()` updated with a (JSON) dict; unknown fields raise ConfigError."""
    config = default_config()
    _merge(config, values, "config")
    config.lock()
    return config


def load_json(path: str) -> ml_collections.ConfigDict:
    """Reads a config saved by `save` (`config.json`)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as file:
        try:
            values = json.load(file)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: invalid JSON ({error})") from None
    return from_dict(values)


def to_dict(config) -> dict:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(config.to_json())


def recipes() -> dict:
    """The shipped recipes (`retinanet.configs`): name -> the first line of its docstring."""
    import ast
    import importlib.resources

    summaries = {}
    for entry in sorted(importlib.resources.files("retinanet.configs").iterdir(),
                        key=lambda entry: entry.name):
        name, suffix = os.path.splitext(entry.name)
        if suffix == ".py" and not name.startswith("_"):
            docstring = ast.get_docstring(ast.parse(entry.read_text(encoding="utf-8"))) or ""
            summaries[name] = (docstring.strip().splitlines() or [""])[0]
    return summaries


def resolve_config_file(value: str) -> str:
    """`--config`'s value as a file path: a recipe's name, or a path taken as it is.

    A value with a path separator or ending in `.py` is a path (`./shapes.py`,
    `configs/shapes.py`), so a stray file in the working directory can't take a recipe's
    name; any other value names a shipped recipe (`scratch_cpu`). An argument for
    `get_config` may follow a colon (`NAME:ARG`), as absl's config flags allow.

    Raises:
        ConfigError: an unknown recipe name; the message lists the known ones.
    """
    head, colon, argument = value.partition(":")
    if "/" in head or os.sep in head or head.endswith(".py") or not head:
        return value
    known = recipes()
    if head not in known:
        raise ConfigError(f"--config={value}: no recipe named {head!r} (recipes: "
                          f"{', '.join(known)}); give a file as a path, e.g. ./{head}.py")
    import importlib.resources

    return str(importlib.resources.files("retinanet.configs") / f"{head}.py") + colon + argument


def save(config, directory: str):
    """Writes `config.json` and `config.py` (loadable with `--config=`) into directory."""
    os.makedirs(directory, exist_ok=True)
    text = json.dumps(to_dict(config), indent=2, sort_keys=True)
    atomic.write_text(os.path.join(directory, "config.json"), text + "\n")
    module = (
        '"""Config saved by `retinanet train`; use it as --config=<this file> and override\n'
        'fields on the command line (--config.train.epochs=...)."""\n\n'
        "import json\n\nfrom retinanet.config import from_dict\n\n"
        f"CONFIG_JSON = {text!r}\n\n\n"
        "def get_config():\n    return from_dict(json.loads(CONFIG_JSON))\n"
    )
    atomic.write_text(os.path.join(directory, "config.py"), module)


def check_choice(field: str, value, choices):
    """Returns `value` if it is one of `choices`; else raises ConfigError naming `field`."""
    if value not in choices:
        raise ConfigError(f"{field}: unknown {field.rsplit('.', 1)[-1]} {value!r}; expected one of "
                          f"{', '.join(map(str, choices))}")
    return value


def validate(config):
    """Checks the fields the builders cannot check themselves; raises ConfigError naming one."""
    from retinanet.preprocess import PREPROCESSING, check_image_size

    try:
        known = default_config()
        _merge(known, to_dict(config), "config")
    except AttributeError as error:  # a ConfigDict that is not built on default_config
        raise ConfigError(str(error)) from None
    data = config.data
    check_choice("config.data.format", data.format, DATA_FORMATS)
    check_choice("config.train.optimizer", config.train.optimizer, OPTIMIZERS)
    check_choice("config.train.schedule", config.train.schedule, SCHEDULES)
    check_choice("config.train.box_loss", config.train.box_loss, BOX_LOSSES)
    check_choice("config.train.classification_loss", config.train.classification_loss,
                 CLASSIFICATION_LOSSES)
    check_choice("config.model.matching.method", config.model.matching.method, MATCHING_METHODS)
    if config.model.preprocessing is not None:
        check_choice("config.model.preprocessing", config.model.preprocessing, PREPROCESSING)
    for field, value in (("config.train.epochs", config.train.epochs),
                         ("config.data.batch_size", data.batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field}: must be a positive int, got {value!r}")
    if data.image_size < 0:
        raise ConfigError(f"config.data.image_size: must be >= 0, got {data.image_size}")
    try:
        check_image_size(image_size(config), "image_size")
    except ValueError as error:
        field = "config.data.image_size" if data.image_size else "config.data.min_side/max_side"
        raise ConfigError(f"{field}: {error}") from None
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"config.data.val_fraction: must be in [0, 1), got {data.val_fraction}")


def image_size(config):
    """The resize rule of `retinanet.preprocess`: an int S, or (min_side, max_side) when
    `data.image_size` is 0."""
    d = config.data
    return d.image_size if d.image_size else (d.min_side, d.max_side)


def class_names(config):
    """`data.class_names` as a list, or None when it is empty (names come from the data)."""
    names = [name.strip() for name in config.data.class_names.split(",") if name.strip()]
    return names or None


def changed_fields(old: dict, new: dict, prefix: str = "config"):
    """Yields the dotted names of the fields whose values differ between two config dicts."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from changed_fields(a, b, f"{prefix}.{key}")
        elif a != b:
            yield f"{prefix}.{key}"
