"""The configured datasets and their tf.data pipelines, and the step arithmetic of training."""

from __future__ import annotations

import os
import warnings

from retinanet.config import ConfigError, check_choice, class_names, image_size
from retinanet.training.builders import build_anchor_generator, config_section


def _require_path(config, field: str, kind: str):
    """Checks that `config.data.<field>` names an existing file or folder; returns it."""
    path = config.data[field]
    if not path:
        raise ConfigError(f"config.data.{field}: no path given (format "
                          f"{config.data.format} needs it)")
    if not (os.path.isfile(path) if kind == "file" else os.path.isdir(path)):
        raise ConfigError(f"config.data.{field}: {'file' if kind == 'file' else 'folder'} "
                          f"not found: {path}")
    return path


def _data_yaml(config, split: str):
    """The ultralytics data.yaml that gives `split`, or None: `data.<split>` when it names
    one, and for val without a val path the train path's yaml when it lists val images."""
    from retinanet.data.yolo import read_data_yaml

    d = config.data
    if d.format != "yolo":
        return None
    field = split if d[split] or split == "train" else "train"
    source = d[field]
    if not source.endswith((".yaml", ".yml")):
        return None
    if not os.path.isfile(source):
        raise ConfigError(f"config.data.{field}: file not found: {source}")
    if field != split:
        with config_section(f"config.data.{field}"):
            if not read_data_yaml(source)["val"]:
                return None
    return source


def _read(config, split: str, names=None):
    """One split ("train" or "val") of a file or TFDS format as a DetectionDataset."""
    from retinanet import data as rdata

    d = config.data
    fmt = check_choice("config.data.format", d.format, ("coco", "voc", "yolo", "csv", "tfds"))
    split_name = d[f"{split}_split"] or None
    common = {"skip_invalid": d.skip_invalid}
    if fmt == "tfds":
        if not d[split]:
            raise ConfigError(f"config.data.{split}: no TFDS name given")
        name, _, inline_split = d[split].partition(":")
        tfds_split = inline_split or split_name or ("train" if split == "train" else "validation")
        return rdata.from_tfds(name, tfds_split, d.tfds_data_dir or None,
                               download=d.tfds_download, **common)
    common.update(check_images=d.check_images, max_image_pixels=d.max_image_pixels)
    if fmt == "coco":
        path = _require_path(config, split, "file")
        image_dir = _require_path(config, f"{split}_images", "dir") \
            if d[f"{split}_images"] else os.path.dirname(os.path.abspath(path))
        return rdata.from_coco(path, image_dir, **common)
    if fmt == "csv":
        path = _require_path(config, split, "file")
        image_dir = _require_path(config, f"{split}_images", "dir") \
            if d[f"{split}_images"] else None
        return rdata.from_csv(path, image_dir, class_names=names, **common)
    data_yaml = _data_yaml(config, split)
    if data_yaml:
        return rdata.from_data_yaml(data_yaml, split, class_names=names, **common)
    folder = _require_path(config, split, "dir")
    if fmt == "voc":
        return rdata.from_voc(folder, split_name, class_names=names, **common)
    return rdata.from_yolo(folder, names, split=split_name, **common)


def _shapes(config, split: str):
    from retinanet import data as rdata

    s = config.data.shapes
    with config_section("config.data.shapes"):
        return rdata.shapes(num_images=s.num_train if split == "train" else s.num_val,
                            size=s.size,
                            seed=s.train_seed if split == "train" else s.val_seed,
                            max_objects=s.max_objects, min_size=s.min_size,
                            max_size=s.max_size or None, background=s.background)


def _hold_out(config, train):
    """(train, val): `data.val_fraction` of the training records held out, seeded."""
    import numpy as np

    from retinanet.data import DetectionDataset

    fraction = config.data.val_fraction
    order = np.random.default_rng(config.seed).permutation(len(train.records))
    num_val = max(1, int(round(len(order) * fraction)))

    def subset(indices, name):
        return DetectionDataset(train.class_names, [train.records[i] for i in sorted(indices)],
                                category_ids=train.category_ids, name=name,
                                skipped=train.skipped, clipped=train.clipped)

    return (subset(order[num_val:], f"{train.name}[train]"),
            subset(order[:num_val], f"{train.name}[val {fraction:g}]"))


def has_val(config) -> bool:
    """Whether the config names a val split of its own (a path, or a data.yaml's val)."""
    return config.data.format != "shapes" and (
        bool(config.data.val) or _data_yaml(config, "val") is not None)


def load_datasets(config, splits=("train", "val")) -> dict:
    """The configured DetectionDatasets, `{"train": ..., "val": ...}` for the splits asked.

    The val split reads with the train split's class names, so class ids agree. Without
    `data.val` the val split is `data.val_fraction` of train (held out, seeded) or, when
    that is 0, the train split itself (with a warning).
    """
    d = config.data
    if d.format == "shapes":
        return {split: _shapes(config, split) for split in splits}
    train = val = None
    separate = has_val(config)
    if "train" in splits or not separate:
        train = _read(config, "train", class_names(config))
        if not separate and d.val_fraction > 0:
            train, val = _hold_out(config, train)
        elif not separate:
            if "val" in splits:
                warnings.warn("config.data.val is empty and val_fraction is 0: the val split "
                              "is the training images", stacklevel=2)
            val = train
    if "val" in splits and val is None:
        val = _read(config, "val", train.class_names if train else class_names(config))
        if train is not None and val.class_names != train.class_names:
            raise ConfigError(f"config.data.val: its classes {val.class_names} differ from "
                              f"the train split's {train.class_names}")
        if train is not None and not d.allow_overlap:
            check_disjoint(train, val)
    return {name: dataset for name, dataset in (("train", train), ("val", val))
            if name in splits}


def split_overlap(train, val) -> list:
    """`retinanet.data.overlap.overlapping_images` of two read splits ([] if streamed)."""
    from retinanet.data.overlap import overlapping_images

    if train.streamed or val.streamed:
        return []
    return overlapping_images(train.records, val.records)


def check_disjoint(train, val):
    """Raises ConfigError when the val split holds training images (files or bytes)."""
    pairs = split_overlap(train, val)
    if pairs:
        shown = "; ".join(f"{a} = {b} ({how})" for a, b, how in pairs[:3])
        raise ConfigError(
            f"config.data.val: {len(pairs)} of its {len(val)} images are also training images "
            f"({shown}{'; ...' if len(pairs) > 3 else ''}): validating on them overstates "
            "the metrics. Give disjoint splits (train_split/val_split, or data.yaml's train "
            "and val), or --config.data.allow_overlap=true")


def input_rules(config, model=None) -> dict:
    """The canvas multiple and the preprocessing rules of the model's inputs: the model's
    own when given (a pretrained detector brings its rules), else the config's."""
    if model is not None and hasattr(model, "preprocessing"):  # not an exported model
        return {"size_multiple": int(model.anchor_generator.stride_multiple),
                "preprocessing": model.preprocessing}
    return {"size_multiple": build_anchor_generator(config).stride_multiple,
            "preprocessing": config.model.preprocessing or "retinanet"}


def train_pipeline(config, dataset, seed=None, model=None):
    """Repeated training batches (fit with `steps_per_epoch`), see `retinanet.data.pipeline`;
    resized and padded as `model` wants (see `input_rules`)."""
    from retinanet.data import pipeline

    d = config.data
    with config_section("config.data"):
        data = pipeline(dataset, mode="train", batch_size=d.batch_size,
                        image_size=image_size(config), max_boxes=d.max_boxes,
                        **input_rules(config, model),
                        horizontal_flip=d.horizontal_flip, scale_range=tuple(d.scale_range),
                        color_jitter=d.color_jitter, mosaic=d.mosaic,
                        seed=config.seed if seed is None else seed,
                        deterministic=bool(config.train.deterministic), cache=d.cache)
    return data.repeat()


def eval_pipeline(config, dataset, model=None):
    """Evaluation batches (resize and pad only), see `retinanet.data.pipeline` and
    `input_rules`."""
    from retinanet.data import pipeline

    d = config.data
    with config_section("config.data"):
        return pipeline(dataset, mode="eval", batch_size=d.eval_batch_size,
                        image_size=image_size(config), max_boxes=d.max_boxes,
                        **input_rules(config, model))


def steps_per_epoch(config, num_train_images: int) -> int:
    """Configured steps, or one pass over the training images (at least 1)."""
    if config.train.steps_per_epoch:
        return int(config.train.steps_per_epoch)
    return max(1, num_train_images // config.data.batch_size)


def total_steps(config, num_train_images: int) -> int:
    return steps_per_epoch(config, num_train_images) * config.train.epochs
