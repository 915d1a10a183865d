"""Training and evaluation batches from a DetectionDataset (see docs/CONTRACTS.md).

Per image: decode, resize keeping the aspect ratio and pad bottom/right (so box coordinates
are unchanged) with the one rule of `retinanet.preprocess` (`image_size`: None, S or
(min_side, max_side); canvases rounded up to `size_multiple`); in training also scale
jitter, a random crop, a random horizontal flip and optionally colour jitter. Then batch,
with boxes padded to `max_boxes` with -1 and images of different canvases padded to the
batch's largest. Eval boxes divided by the targets' `scale` give back the original boxes
exactly.

Training: scale *= uniform(scale_range); if the result exceeds the canvas, a random crop of
the canvas size is taken (boxes shifted, clipped, and dropped when nothing of them is left);
then a random horizontal flip (x1' = w - x2, x2' = w - x1 on the cropped width w); crowd
boxes are dropped; with `color_jitter` s > 0, brightness (+-0.125 s of the range), contrast
and saturation (factors in [1 - 0.4 s, 1 + 0.4 s]) and hue (+-0.05 s) change at random, in
that order, and the result is clipped to 0-255; with `mosaic` p > 0, each group of four
consecutive augmented images becomes, with probability p, one image of their four halves
(`combine_mosaic`). Random numbers come from stateless ops seeded per image from
tf.data.Dataset.random(seed), so with `seed` and `deterministic=True` the batches are
identical run to run (and differ epoch to epoch).

Why plain tf ops and not keras.layers.RandomFlip / RandomZoom / Resizing with bounding boxes:
Keras' Resizing(pad_to_aspect_ratio=True) pads on both sides, which shifts boxes, where the
contract wants bottom/right padding; its random layers draw from a SeedGenerator variable
that is neither per-image reproducible inside a parallel tf.data map nor aware of our -1
padding; and crop-with-box-dropping is not one of its layers. The ops here are short and
tested by hand.
"""

from __future__ import annotations

import tensorflow as tf

from retinanet.data.augment import jitter_colors
from retinanet.data.dataset import DetectionDataset
from retinanet.data.validation import check_box_counts
from retinanet.preprocess import (DEFAULT_SIZE_MULTIPLE, box_scale, check_image_size,
                                  check_preprocessing, pad_color, resize_scale_and_canvas,
                                  resized_size, round_up, scale_boxes)

MODES = ("train", "eval")


def _resize(image, scale, preprocessing):
    """Resizes uint8/float [H, W, 3] by scale; returns (float32 image, (h, w) int32, the
    boxes' (y, x) scale)."""
    shape = tf.shape(image)[:2]
    size = resized_size(shape, scale, preprocessing)
    image = tf.cond(tf.reduce_all(tf.equal(size, shape)),
                    lambda: tf.cast(image, tf.float32),
                    lambda: tf.image.resize(image, size, method="bilinear"))
    return image, size, box_scale(shape, size, scale, preprocessing)


def _pad_image(image, canvas, image_size, size_multiple, preprocessing):
    """Pads float32 [h, w, 3] bottom/right to canvas (h <= canvas[0], w <= canvas[1]).

    The result is shifted by minus the padding colour (0 in the package's rules), so that
    padded_batch's zeros are that colour too; `pipeline` shifts the batches back.
    """
    size = tf.shape(image)[:2]
    color = pad_color(preprocessing)
    if any(color):
        image = image - tf.constant(color, tf.float32)
    image = tf.pad(image, [[0, canvas[0] - size[0]], [0, canvas[1] - size[1]], [0, 0]])
    if isinstance(image_size, int):
        side = round_up(image_size, size_multiple)
        image.set_shape([side, side, 3])
    else:
        image.set_shape([None, None, 3])
    return image


def _pad_boxes(values, max_boxes, image_id, pad_value):
    """Pads the first axis of values [N, ...] to max_boxes with pad_value (N > max: error)."""
    count = tf.shape(values)[0]
    check = tf.debugging.Assert(count <= max_boxes, [
        tf.strings.join(["image ", image_id, ": more boxes than max_boxes, raise max_boxes; "
                         "boxes and max_boxes:"]), count, max_boxes])
    padding = [[0, max_boxes - count]] + [[0, 0]] * (len(values.shape) - 1)
    with tf.control_dependencies([check]):  # before tf.pad fails on a negative padding
        padded = tf.pad(values, padding, constant_values=pad_value)
    padded.set_shape([max_boxes] + values.shape.as_list()[1:])
    return padded


def eval_transform(example, image_size, max_boxes, size_multiple=DEFAULT_SIZE_MULTIPLE,
                   preprocessing="retinanet"):
    """One example dict -> (image float32 [Hc, Wc, 3] shifted as `_pad_image` says,
    targets) for evaluation."""
    image = example["image"]
    original_size = tf.shape(image)[:2]
    scale, canvas = resize_scale_and_canvas(original_size[0], original_size[1], image_size,
                                            size_multiple, preprocessing)
    image, size, scale = _resize(image, scale, preprocessing)
    image_id = example["image_id"]
    targets = {
        "boxes": _pad_boxes(scale_boxes(example["boxes"], scale), max_boxes, image_id, -1.0),
        "classes": _pad_boxes(example["classes"], max_boxes, image_id, -1),
        "image_id": image_id,
        "scale": scale,
        "image_size": size,
        "original_size": original_size,
        "is_crowd": _pad_boxes(example["is_crowd"], max_boxes, image_id, False),
        "difficult": _pad_boxes(example["difficult"], max_boxes, image_id, False),
    }
    return _pad_image(image, canvas, image_size, size_multiple, preprocessing), targets


def combine_mosaic(images, boxes, classes, max_boxes):
    """Four training images -> one: each halved and put in a quadrant of the canvas.

    Image i goes to quadrant (row, column) = divmod(i, 2); its boxes become
    `box / 2 + (column, row, column, row) * S / 2`.

    Args:
        images: float32 [4, S, S, 3], S even.
        boxes: float32 [4, M, 4] xyxy pixels, padded with -1.
        classes: int32 [4, M], padded with -1.
        max_boxes: M' of the result; more boxes than that in the four images is an error
            naming `max_boxes`.

    Returns:
        (image float32 [S, S, 3], boxes float32 [M', 4] padded with -1, classes int32 [M']).
    """
    halves = tf.nn.avg_pool2d(images, ksize=2, strides=2, padding="VALID")  # [4, S/2, S/2, 3]
    image = tf.concat([tf.concat([halves[0], halves[1]], axis=1),
                       tf.concat([halves[2], halves[3]], axis=1)], axis=0)
    half = tf.cast(tf.shape(halves)[1], tf.float32)
    offsets = tf.constant([[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]],
                          tf.float32) * half
    valid = classes >= 0
    moved = tf.boolean_mask(boxes / 2 + offsets[:, None, :], valid)
    kept_classes = tf.boolean_mask(classes, valid)
    image_id = tf.constant("a mosaic of 4 training images (config.data.mosaic)")
    return (image, _pad_boxes(moved, max_boxes, image_id, -1.0),
            _pad_boxes(kept_classes, max_boxes, image_id, -1))


def _mosaic_groups(data, probability, seed, max_boxes):
    """Groups of 4 training examples -> a mosaic with `probability`, else the 4 unchanged."""
    groups = data.batch(4, drop_remainder=True)
    randoms = tf.data.Dataset.random(seed=None if seed is None else seed + 1,
                                     rerandomize_each_iteration=True)

    def choose(group, random_seed):
        images, targets = group
        combine = tf.random.stateless_uniform(
            [], tf.stack([random_seed, tf.constant(2, tf.int64)])) < probability

        def combined():
            image, boxes, classes = combine_mosaic(images, targets["boxes"],
                                                   targets["classes"], max_boxes)
            return image[None], boxes[None], classes[None]

        images, boxes, classes = tf.cond(
            combine, combined, lambda: (images, targets["boxes"], targets["classes"]))
        return tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes,
                                                            "classes": classes}))

    return tf.data.Dataset.zip((groups, randoms)).flat_map(choose)


def train_transform(example, random_seed, image_size, max_boxes, scale_range,
                    horizontal_flip, size_multiple=DEFAULT_SIZE_MULTIPLE, color_strength=0.0,
                    preprocessing="retinanet"):
    """One example dict -> (image float32 [Hc, Wc, 3], {"boxes", "classes"}) for training.

    Args:
        random_seed: int64 scalar; every random number for this image derives from it.
    """
    seeds = tf.random.experimental.stateless_split(
        tf.stack([random_seed, tf.constant(0, tf.int64)]), num=3)
    keep = tf.logical_not(example["is_crowd"])
    boxes = tf.boolean_mask(example["boxes"], keep)
    classes = tf.boolean_mask(example["classes"], keep)

    image = example["image"]
    original_size = tf.shape(image)[:2]
    scale, canvas = resize_scale_and_canvas(original_size[0], original_size[1], image_size,
                                            size_multiple, preprocessing)
    low, high = scale_range
    if low != high or low != 1.0:
        scale *= tf.random.stateless_uniform([], seeds[0], minval=low, maxval=high)
    image, size, scale = _resize(image, scale, preprocessing)
    boxes = scale_boxes(boxes, scale)

    # Random crop to the canvas where the jittered image is larger.
    crop = tf.minimum(size, canvas)
    offset = tf.cast(tf.random.stateless_uniform([2], seeds[1]) *
                     tf.cast(size - crop + 1, tf.float32), tf.int32)
    offset = tf.minimum(offset, size - crop)
    image = image[offset[0]:offset[0] + crop[0], offset[1]:offset[1] + crop[1]]
    shift = tf.cast(tf.stack([offset[1], offset[0], offset[1], offset[0]]), tf.float32)
    limit = tf.cast(tf.stack([crop[1], crop[0], crop[1], crop[0]]), tf.float32)
    boxes = tf.clip_by_value(boxes - shift, 0.0, limit)
    visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = tf.boolean_mask(boxes, visible)
    classes = tf.boolean_mask(classes, visible)

    if horizontal_flip:
        flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
        crop_width = tf.cast(crop[1], tf.float32)
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        flipped = tf.stack([crop_width - boxes[:, 2], boxes[:, 1],
                            crop_width - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = tf.where(flip, flipped, boxes)
    if color_strength:
        # Its own stream, so turning it on leaves the geometry's random numbers as they were.
        image = jitter_colors(image, color_strength,
                              tf.stack([random_seed, tf.constant(1, tf.int64)]))

    image_id = example["image_id"]
    targets = {"boxes": _pad_boxes(boxes, max_boxes, image_id, -1.0),
               "classes": _pad_boxes(classes, max_boxes, image_id, -1)}
    return _pad_image(image, canvas, image_size, size_multiple, preprocessing), targets


def pipeline(dataset, mode: str = "train", batch_size: int = 8, image_size=None, *,
             max_boxes: int = 100, size_multiple: int = DEFAULT_SIZE_MULTIPLE,
             preprocessing: str = "retinanet",
             horizontal_flip: bool = True,
             scale_range=(0.8, 1.25), color_jitter: float = 0.0, mosaic: float = 0.0,
             seed: int | None = None,
             deterministic: bool | None = None,
             cache=False, shuffle_buffer: int | None = None,
             drop_remainder: bool | None = None) -> tf.data.Dataset:
    """Batches of (images, targets) as in docs/CONTRACTS.md.

    Args:
        dataset: a DetectionDataset, or a tf.data.Dataset of example dicts.
        mode: "train" (shuffle, scale jitter, crop, flip, crowd boxes dropped) or "eval"
            (resize and pad only; targets keep image_id, scale, original_size, is_crowd,
            difficult).
        batch_size: images per batch.
        image_size: the resize rule of `retinanet.preprocess`: None (native size), int S
            (S x S canvas), or (min_side, max_side).
        max_boxes: M, boxes per image after padding; an image with more fails with an error
            naming it.
        size_multiple: canvases are rounded up to multiples of it; the model's
            `anchor_generator.stride_multiple` (128 for the default levels P3-P7).
        preprocessing: the resize and padding rules, `retinanet.preprocess.PREPROCESSING`;
            the model's `preprocessing` ("torchvision" for torchvision's detectors).
        horizontal_flip: random horizontal flip in training.
        scale_range: (low, high) of the training scale jitter; (1, 1) turns it off.
        color_jitter: strength in [0, 1] of the training colour jitter (`jitter_colors`);
            0 turns it off.
        mosaic: in training, the probability that a group of 4 consecutive (shuffled,
            augmented) images becomes one mosaic (`combine_mosaic`); needs an int image_size.
        seed: int seeding shuffle and augmentation.
        deterministic: keep element order fixed; in training it needs a seed, and then the
            same seed gives the same batches. False lets parallel maps return elements out of
            order, which is faster. Default: False for train, True for eval (records order).
        cache: False, True (in memory) or a file path prefix. Training caches decoded images
            (before augmentation); evaluation caches the resized, padded images.
        shuffle_buffer: training shuffle buffer; default the whole dataset where the readers
            shuffle file names or indices before decoding (files, shapes; no cache), else 1024
            examples (cached decoded images, TFDS's encoded images, a tf.data input).
        drop_remainder: default True for train (static batch size), False for eval.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, 3] 0-255 with H, W multiples of size_multiple,
        targets {"boxes" float32 [B, M, 4] xyxy padded with -1, "classes" int32 [B, M] padded
        with -1, and in eval "image_id" string [B], "scale" float32 [B, 2] (y, x),
        "image_size" int32 [B, 2] (the resized image on the canvas), "original_size" int32
        [B, 2] (height, width), "is_crowd", "difficult" bool [B, M] padded with False}).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
        raise ValueError(f"max_boxes must be a positive int, got {max_boxes!r}")
    if isinstance(size_multiple, bool) or not isinstance(size_multiple, int) or \
            size_multiple < 1:
        raise ValueError(f"size_multiple must be a positive int, got {size_multiple!r}")
    check_preprocessing(preprocessing)
    image_size = check_image_size(image_size)
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range must be (low, high), got {scale_range!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"scale_range needs 0 < low <= high, got {scale_range!r}")
    if isinstance(color_jitter, bool) or not isinstance(color_jitter, (int, float)) or \
            not 0 <= color_jitter <= 1:
        raise ValueError(f"color_jitter must be a number in [0, 1], got {color_jitter!r}")
    color_strength = float(color_jitter)
    if isinstance(mosaic, bool) or not isinstance(mosaic, (int, float)) or \
            not 0 <= mosaic <= 1:
        raise ValueError(f"mosaic must be a probability in [0, 1], got {mosaic!r}")
    if mosaic and not isinstance(image_size, int):
        raise ValueError(f"mosaic needs a fixed square canvas (an int image_size), got "
                         f"image_size={image_size!r}")
    if deterministic is None:
        deterministic = mode == "eval"
    if deterministic and seed is None and mode == "train":
        raise ValueError("deterministic=True needs a seed in train mode")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")

    if isinstance(dataset, DetectionDataset):
        if not dataset.streamed:  # streamed (TFDS) records are checked in the graph
            check_box_counts(dataset.records, max_boxes, drop_crowd=mode == "train")
        source, decode, length = dataset.source(), dataset.decode, len(dataset)
        light_source = not dataset.source_holds_images
    elif isinstance(dataset, tf.data.Dataset):
        source, length = dataset, int(dataset.cardinality())
        light_source = False

        def decode(element):
            return element
    else:
        raise ValueError(f"dataset must be a DetectionDataset or tf.data.Dataset, got "
                         f"{type(dataset).__name__}")
    if drop_remainder is None:
        drop_remainder = mode == "train"
    if mosaic and 0 <= length < 4:
        raise ValueError(f"mosaic needs at least 4 training images, the dataset has {length}")
    if drop_remainder and 0 <= length < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({length} "
                         "images) and drop_remainder is on: no batch would come out")

    def decode_element(*element):
        # TFDS sources yield (index, features) tuples, which map() may or may not unpack.
        if len(element) == 1 and isinstance(element[0], tuple):
            element = element[0]
        return decode(*element)

    autotune = tf.data.AUTOTUNE
    if mode == "train":
        if cache is not False:
            data = source.map(decode_element, num_parallel_calls=autotune,
                              deterministic=deterministic)
            data = data.cache("" if cache is True else str(cache))
            buffer = shuffle_buffer or (min(length, 1024) if length > 0 else 1024)
            decode_step = None
        else:
            data = source
            buffer = shuffle_buffer or (length if light_source and length > 0 else
                                        min(length, 1024) if length > 0 else 1024)
            decode_step = decode_element
        data = data.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        data = tf.data.Dataset.zip((data, randoms))

        def transform(element, random_seed):
            example = decode_step(element) if decode_step else element
            return train_transform(example, random_seed, image_size, max_boxes, (low, high),
                                   horizontal_flip, size_multiple, color_strength,
                                   preprocessing)

        data = data.map(transform, num_parallel_calls=autotune, deterministic=deterministic)
        if mosaic:
            data = _mosaic_groups(data, float(mosaic), seed, max_boxes)
    else:
        def transform(*element):
            return eval_transform(decode_element(*element), image_size, max_boxes,
                                  size_multiple, preprocessing)

        data = source.map(transform, num_parallel_calls=autotune, deterministic=deterministic)
        if cache is not False:
            data = data.cache("" if cache is True else str(cache))

    # Targets are already padded to max_boxes; padded_batch only pads images of different
    # canvases (min/max sides or native size) with 0 to the batch's largest, bottom/right:
    # the padding colour, on images shifted by it (`_pad_image`).
    data = data.padded_batch(batch_size, drop_remainder=drop_remainder)
    color = pad_color(preprocessing)
    if any(color):
        data = data.map(lambda images, targets: (images + color, targets),
                        num_parallel_calls=autotune, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return data.with_options(options).prefetch(autotune)


def to_keras_cv(images, targets):
    """A batch -> the keras-cv layout {"images", "bounding_boxes": {"boxes", "classes"}}.

    Use as `pipeline(...).map(to_keras_cv)`; boxes stay xyxy, padded with -1.
    """
    return {"images": images,
            "bounding_boxes": {"boxes": targets["boxes"], "classes": targets["classes"]}}
