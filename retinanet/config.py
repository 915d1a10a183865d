"""Experiment configs: the schema every config file starts from, and builders of the real classes.

A config file (``configs/*.py``) defines ``get_config()`` returning `default_config()` with its
own values; absl's ``config_flags`` loads it and lets any field be overridden on the command
line (``--config.train.epochs=3``). The builders here turn a config into the package's own
objects (`RetinaNet`, `AnchorGenerator`, `LabelEncoder`, `DetectionPostprocessor`, the readers
of `retinanet.data`, `retinanet.data.pipeline`, the optimisers of `retinanet.training`); they
never reimplement them.

Sections (see `default_config` for every field and its meaning):

- ``model``: backbone, FPN and head widths, ``anchors``, ``matching``, ``postprocess``.
- ``data``: ``format`` (shapes, coco, voc, yolo, csv, tfds), ``train`` / ``val`` paths, resizing
  and augmentation, batch size, the built-in ``shapes`` set.
- ``train``: epochs, optimiser and learning-rate schedule, loss weights, evaluation cadence.
- ``eval``: which metrics and thresholds `retinanet evaluate` reports.

Errors are `ConfigError` (a ValueError) and name the field, e.g. ``config.data.train: path not
found: /data/train.json``.
"""

from __future__ import annotations

import json
import os

import ml_collections

from retinanet import atomic

DATA_FORMATS = ("shapes", "coco", "voc", "yolo", "csv", "tfds")
OPTIMIZERS = ("adam", "adamw", "sgd", "reference")
SCHEDULES = ("constant", "cosine", "step")


class ConfigError(ValueError):
    """A config field has a wrong value; the message names the field."""


def default_config() -> ml_collections.ConfigDict:
    """The full schema with the paper's defaults; config files change what they need.

    Returns:
        An unlocked ConfigDict; `load`/`from_dict` return it locked, so a misspelt field is an
        error rather than silently ignored.
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
        freeze_backbone=False,
        frozen_batchnorm=True,  # False to train a backbone from scratch
        frozen_early_stages=True,  # the layers at strides 2 and 4; False to train from scratch
        fpn_filters=256,
        head_convs=4,
        head_filters=256,
        use_group_norm=False,
        # Backbone BatchNormalization momentum; 0 keeps the application's (0.999 in
        # MobileNetV3, whose moving statistics then lag far behind a short from-scratch run).
        batchnorm_momentum=0.0,
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
        positive_iou=0.5,
        negative_iou=0.4,
        allow_low_quality_matches=True,
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
        class_names="",  # comma-separated; "" = from the data
        skip_invalid=False,  # skip and count bad images/boxes instead of stopping
        check_images="header",
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
        cache=False,
        shapes=ml_collections.ConfigDict(dict(
            num_train=1000,
            num_val=200,
            image_size=256,
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
        focal_alpha=0.25,
        focal_gamma=2.0,
        smooth_l1_beta=1 / 9,
        jit_compile=False,
        steps_per_execution=1,
        eval_every_n_epochs=1,  # 0: only at the end
        deterministic=False,  # reproducible data order (also across resumes)
    ))

    config.eval = ml_collections.ConfigDict(dict(
        voc_iou_threshold=0.5,
        voc_method="all_points",
    ))
    return config


# -- loading and saving -------------------------------------------------------------------


def _merge(target: ml_collections.ConfigDict, values: dict, path: str):
    for key, value in values.items():
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
    """Reads a config saved by `save` (``config.json``)."""
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


def save(config, directory: str):
    """Writes ``config.json`` and ``config.py`` (loadable with ``--config=``) into directory."""
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


def validate(config):
    """Checks the fields the builders cannot check themselves; raises ConfigError naming one."""
    try:
        known = default_config()
        _merge(known, to_dict(config), "config")
    except AttributeError as error:  # a ConfigDict that is not built on default_config
        raise ConfigError(str(error)) from None
    data = config.data
    if data.format not in DATA_FORMATS:
        raise ConfigError(f"config.data.format: unknown format {data.format!r}; expected one of "
                          f"{', '.join(DATA_FORMATS)}")
    if config.train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"config.train.optimizer: unknown optimizer {config.train.optimizer!r}; "
                          f"expected one of {', '.join(OPTIMIZERS)}")
    if config.train.schedule not in SCHEDULES:
        raise ConfigError(f"config.train.schedule: unknown schedule {config.train.schedule!r}; "
                          f"expected one of {', '.join(SCHEDULES)}")
    for name in ("epochs", "batch_size"):
        section = config.train if name == "epochs" else config.data
        value = section[name]
        if not isinstance(value, int) or value < 1:
            section_name = "train" if name == "epochs" else "data"
            raise ConfigError(f"config.{section_name}.{name}: must be a positive int, got {value!r}")
    if config.data.image_size < 0:
        raise ConfigError(f"config.data.image_size: must be >= 0, got {config.data.image_size}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"config.data.val_fraction: must be in [0, 1), got {data.val_fraction}")
    from retinanet.model.backbone import BACKBONES

    if config.model.backbone not in BACKBONES and config.model.backbone != "simple":
        raise ConfigError(f"config.model.backbone: unknown backbone {config.model.backbone!r}; "
                          f"expected one of {', '.join(sorted(BACKBONES))} or simple")


# -- model --------------------------------------------------------------------------------


def _call(field: str, factory, **kwargs):
    """factory(**kwargs), with a ValueError reworded to name the config section."""
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{field}: {error}") from None


def build_anchor_generator(config):
    from retinanet.anchors import AnchorGenerator

    anchors = config.model.anchors
    return _call("config.model.anchors", AnchorGenerator, min_level=3,
                 max_level=anchors.max_level, anchor_size=anchors.anchor_size,
                 scales=tuple(anchors.scales), aspect_ratios=tuple(anchors.aspect_ratios))


def build_label_encoder(config, anchor_generator=None):
    from retinanet.matching import LabelEncoder

    matching = config.model.matching
    return _call("config.model.matching", LabelEncoder,
                 anchor_generator=anchor_generator or build_anchor_generator(config),
                 positive_iou=matching.positive_iou, negative_iou=matching.negative_iou,
                 allow_low_quality_matches=matching.allow_low_quality_matches)


def build_postprocessor(config, anchor_generator, label_encoder):
    from retinanet.model.postprocess import DetectionPostprocessor

    post = config.model.postprocess
    return _call("config.model.postprocess", DetectionPostprocessor,
                 anchor_generator=anchor_generator, box_weights=label_encoder.box_weights,
                 score_threshold=post.score_threshold,
                 pre_nms_topk_per_level=post.pre_nms_topk_per_level,
                 iou_threshold=post.iou_threshold, max_detections=post.max_detections,
                 name="postprocessor")


def build_model(config, num_classes: int, num_replicas: int = 1):
    """A `RetinaNet` with the configured backbone, widths, anchors, matching and decoding.

    Args:
        config: the ConfigDict.
        num_classes: K.
        num_replicas: replicas of the distribution strategy the model is built under; above
            1, ``model.sync_batchnorm`` synchronises the backbone's batch statistics.
    """
    from retinanet.model.retinanet import RetinaNet

    model = config.model
    anchor_generator = build_anchor_generator(config)
    label_encoder = build_label_encoder(config, anchor_generator)
    weights = model.backbone_weights or None
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise ConfigError(f"config.model.backbone_weights: file not found: {weights}")
    if model.backbone == "simple":
        if weights:
            raise ConfigError("config.model.backbone_weights: the simple backbone has no "
                              "pretrained weights; leave it empty")
        from retinanet.model.backbone import build_simple_backbone

        backbone = _call("config.model (simple_widths, simple_blocks)", build_simple_backbone,
                         widths=tuple(model.simple_widths), blocks=model.simple_blocks)
        named = {}
    else:
        backbone = model.backbone
        named = {"backbone_weights": weights, "frozen_batchnorm": model.frozen_batchnorm,
                 "frozen_early_stages": model.frozen_early_stages}
    retinanet = _call(
        "config.model", RetinaNet,
        num_classes=num_classes, backbone=backbone, **named,
        freeze_backbone=model.freeze_backbone,
        fpn_filters=model.fpn_filters, head_convs=model.head_convs,
        head_filters=model.head_filters, use_group_norm=model.use_group_norm,
        anchor_generator=anchor_generator, label_encoder=label_encoder,
        postprocessor=build_postprocessor(config, anchor_generator, label_encoder),
    )
    import keras

    if model.batchnorm_momentum and not 0.0 < model.batchnorm_momentum < 1.0:
        raise ConfigError("config.model.batchnorm_momentum: must be in (0, 1), got "
                          f"{model.batchnorm_momentum}")
    for layer in retinanet.backbone._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            # Both are read at call time and saved by get_config().
            if model.batchnorm_momentum:
                layer.momentum = float(model.batchnorm_momentum)
            if num_replicas > 1 and model.sync_batchnorm:
                layer.synchronized = True
    return retinanet


def build_learning_rate(config, total_steps: int):
    """A float or a `LearningRateSchedule` over ``total_steps`` optimiser steps."""
    import keras

    from retinanet import training

    train = config.train
    rate = float(train.learning_rate)
    warmup = min(int(train.warmup_steps), max(total_steps - 1, 0))
    if train.schedule == "constant":
        if warmup:
            return training.WarmupStepDecay(rate, [], warmup_steps=warmup,
                                            warmup_factor=train.warmup_factor)
        return rate
    if train.schedule == "step":
        boundaries = [int(total_steps * share) for share in train.decay_boundaries]
        return _call("config.train", training.WarmupStepDecay, base_learning_rate=rate,
                     boundaries=boundaries, decay_factor=train.decay_factor,
                     warmup_steps=warmup, warmup_factor=train.warmup_factor)
    # cosine: linear warm-up from warmup_factor * rate, then cosine to cosine_alpha * rate.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=rate * (train.warmup_factor if warmup else 1.0),
        decay_steps=max(total_steps - warmup, 1), alpha=train.cosine_alpha,
        warmup_target=rate if warmup else None, warmup_steps=warmup)


def build_optimizer(config, total_steps: int):
    """The configured Keras optimiser; "reference" is `retinanet.training.reference_optimizer`."""
    import keras

    from retinanet import training

    train = config.train
    clipnorm = float(train.clipnorm) or None
    if train.optimizer == "reference":
        return training.reference_optimizer(total_steps, config.data.batch_size, clipnorm)
    learning_rate = build_learning_rate(config, total_steps)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=train.momentum,
                                    weight_decay=train.weight_decay or None, clipnorm=clipnorm)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=train.weight_decay,
                                      clipnorm=clipnorm)
    return keras.optimizers.Adam(learning_rate, weight_decay=train.weight_decay or None,
                                 clipnorm=clipnorm)


def compile_model(model, config, total_steps: int):
    """`model.compile` with the configured optimiser, losses and XLA setting."""
    from retinanet.losses import FocalLoss, SmoothL1Loss

    train = config.train
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        classification_loss=_call("config.train.focal_*", FocalLoss, alpha=train.focal_alpha,
                                  gamma=train.focal_gamma),
        box_loss=_call("config.train.smooth_l1_beta", SmoothL1Loss, beta=train.smooth_l1_beta),
        box_loss_weight=train.box_loss_weight,
        jit_compile=train.jit_compile,
        steps_per_execution=train.steps_per_execution,
    )
    return model


# -- data ---------------------------------------------------------------------------------


def _class_names(config):
    names = [n.strip() for n in config.data.class_names.split(",") if n.strip()]
    return names or None


def _require_path(field: str, path: str, kind: str = "any"):
    if not path:
        raise ConfigError(f"config.data.{field}: no path given (format "
                          f"{{format}} needs it)")
    exists = {"file": os.path.isfile, "dir": os.path.isdir}.get(kind, os.path.exists)
    if not exists(path):
        what = {"file": "file", "dir": "folder"}.get(kind, "path")
        raise ConfigError(f"config.data.{field}: {what} not found: {path}")


def _read(config, split: str, class_names=None):
    """One split ("train" or "val") as a DetectionDataset."""
    from retinanet import data as rdata

    d = config.data
    path = d[split]
    images = d[f"{split}_images"]
    split_name = d[f"{split}_split"] or None
    fmt = d.format
    try:
        if fmt == "coco":
            _require_path(split, path, "file")
            image_dir = images or os.path.dirname(os.path.abspath(path))
            _require_path(f"{split}_images", image_dir, "dir")
            return rdata.from_coco(path, image_dir, skip_invalid=d.skip_invalid,
                                   check_images=d.check_images)
        if fmt == "voc":
            _require_path(split, path, "dir")
            return rdata.from_voc(path, split_name, class_names=class_names,
                                  skip_invalid=d.skip_invalid, check_images=d.check_images)
        if fmt == "yolo":
            _require_path(split, path, "dir")
            return rdata.from_yolo(path, class_names, split=split_name,
                                   skip_invalid=d.skip_invalid,
                                   check_images=d.check_images)
        if fmt == "csv":
            _require_path(split, path, "file")
            if images:
                _require_path(f"{split}_images", images, "dir")
            return rdata.from_csv(path, images or None, class_names=class_names,
                                  skip_invalid=d.skip_invalid, check_images=d.check_images)
        if fmt == "tfds":
            if not path:
                raise ConfigError(f"config.data.{split}: no TFDS name given")
            name, _, inline_split = path.partition(":")
            tfds_split = inline_split or split_name or ("train" if split == "train"
                                                       else "validation")
            return rdata.from_tfds(name, tfds_split, d.tfds_data_dir or None,
                                   skip_invalid=d.skip_invalid, download=d.tfds_download)
    except ConfigError as error:
        raise ConfigError(str(error).replace("{format}", fmt)) from None
    raise ConfigError(f"config.data.format: unknown format {fmt!r}; expected one of "
                      f"{', '.join(DATA_FORMATS)}")


def _shapes(config, split: str):
    from retinanet import data as rdata

    s = config.data.shapes
    return _call("config.data.shapes", rdata.shapes,
                 num_images=s.num_train if split == "train" else s.num_val,
                 image_size=s.image_size, seed=s.train_seed if split == "train" else s.val_seed,
                 max_objects=s.max_objects, min_size=s.min_size,
                 max_size=s.max_size or None, background=s.background)


def _subset(dataset, records, name):
    from retinanet.data import DetectionDataset

    return DetectionDataset(dataset.class_names, records, category_ids=dataset.category_ids,
                            name=name, skipped=dataset.skipped)


def load_datasets(config, splits=("train", "val")) -> dict:
    """The configured DetectionDatasets, ``{"train": ..., "val": ...}`` for the splits asked.

    The val split reads with the train split's class names, so class ids agree. Without
    ``data.val`` the val split is ``data.val_fraction`` of train (held out, seeded) or, when
    that is 0, the train split itself (with a warning).
    """
    d = config.data
    if d.format not in DATA_FORMATS:
        raise ConfigError(f"config.data.format: unknown format {d.format!r}; expected one of "
                          f"{', '.join(DATA_FORMATS)}")
    if d.format == "shapes":
        return {split: _shapes(config, split) for split in splits}
    result = {}
    need_train = "train" in splits or not d.val
    if need_train:
        train = _read(config, "train", _class_names(config))
        if not d.val and d.val_fraction > 0:
            import numpy as np

            order = np.random.default_rng(config.seed).permutation(len(train.records))
            num_val = max(1, int(round(len(order) * d.val_fraction)))
            records = train.records
            val = _subset(train, [records[i] for i in sorted(order[:num_val])],
                          f"{train.name}[val {d.val_fraction:g}]")
            train = _subset(train, [records[i] for i in sorted(order[num_val:])],
                            f"{train.name}[train]")
        elif not d.val:
            import warnings

            warnings.warn("config.data.val is empty and val_fraction is 0: validating on the "
                          "training images", stacklevel=2)
            val = train
        else:
            val = None
        if "train" in splits:
            result["train"] = train
    if "val" in splits:
        if val is None:
            names = result["train"].class_names if "train" in result else _class_names(config)
            val = _read(config, "val", names)
        result["val"] = val
        if "train" in result and val.class_names != result["train"].class_names:
            raise ConfigError(
                f"config.data.val: its classes {val.class_names} differ from the train "
                f"split's {result['train'].class_names}")
    return result


def image_size(config):
    """The `pipeline` image_size: an int, or (min_side, max_side) when data.image_size is 0."""
    d = config.data
    return d.image_size if d.image_size else (d.min_side, d.max_side)


def train_pipeline(config, dataset, seed=None):
    """Repeated training batches (fit with ``steps_per_epoch``), see `retinanet.data.pipeline`."""
    from retinanet.data import pipeline

    d = config.data
    deterministic = bool(config.train.deterministic)
    data = _call("config.data", pipeline, dataset=dataset, mode="train",
                 batch_size=d.batch_size, image_size=image_size(config),
                 max_boxes=d.max_boxes, horizontal_flip=d.horizontal_flip,
                 scale_range=tuple(d.scale_range),
                 seed=config.seed if seed is None else seed,
                 deterministic=deterministic, cache=d.cache)
    return data.repeat()


def eval_pipeline(config, dataset):
    from retinanet.data import pipeline

    d = config.data
    return _call("config.data", pipeline, dataset=dataset, mode="eval",
                 batch_size=d.eval_batch_size, image_size=image_size(config),
                 max_boxes=d.max_boxes)


def steps_per_epoch(config, num_train_images: int) -> int:
    """Configured steps, or one pass over the training images (at least 1)."""
    if config.train.steps_per_epoch:
        return int(config.train.steps_per_epoch)
    return max(1, num_train_images // config.data.batch_size)


def total_steps(config, num_train_images: int) -> int:
    return steps_per_epoch(config, num_train_images) * config.train.epochs


__all__ = [
    "ConfigError", "DATA_FORMATS", "build_anchor_generator", "build_label_encoder",
    "build_learning_rate", "build_model", "build_optimizer", "build_postprocessor",
    "compile_model", "default_config", "eval_pipeline", "from_dict", "image_size",
    "load_datasets", "load_json", "save", "steps_per_epoch", "to_dict", "total_steps",
    "train_pipeline", "validate",
]
