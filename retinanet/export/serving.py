"""The serving graph every exported form shares: input checks, resizing, detections.

Each exporter traces `detections` (with or without the run-time input checks) and writes it in
its own format; see `retinanet.export` for the inputs and outputs.
"""

import os

import tensorflow as tf

from retinanet.preprocess import resize_and_pad, scale_boxes

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
OUTPUT_KEYS = ("boxes", "scores", "classes", "num_detections")


def check_model(model):
    if not (hasattr(model, "detect") and hasattr(model, "postprocessor")):
        raise ValueError(
            f"`model` must be a retinanet.RetinaNet (with `detect`), got {type(model).__name__}."
        )


def check_class_thresholds(model, thresholds):
    """None, or a list of `model.num_classes` floats in [0, 1]; raises ValueError otherwise."""
    if thresholds is None:
        return None
    values = [float(t) for t in thresholds]
    if len(values) != model.num_classes or not all(0.0 <= t <= 1.0 for t in values):
        raise ValueError(f"`class_score_thresholds` must be {model.num_classes} floats in "
                         f"[0, 1], got {thresholds!r}.")
    return values


def check_input_size(input_size):
    """(height, width), two positive ints."""
    try:
        height, width = input_size
        valid = all(isinstance(side, int) and not isinstance(side, bool) and side >= 1
                    for side in (height, width))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"`input_size` must be (height, width), two positive ints, got {input_size!r}."
        )
    return int(height), int(width)


def _assert(condition, message, shape):
    return tf.debugging.Assert(condition, [message, shape], summarize=8)


def checked_images(images, max_pixels=None):
    """Checks at run time that `images` is [B >= 1, H >= 1, W >= 1, 3] with H * W at most
    `max_pixels` (None: no limit); returns it with rank 4.

    The serving signature leaves the rank unknown on purpose: TF Serving checks a request's
    dtype against the signature but not its shape, and a static shape would let TF fold these
    checks away, leaving a rank-3 request to fail deep in the network with an obscure error.
    """
    shape = tf.shape(images)
    rank_ok = _assert(
        tf.equal(tf.size(shape), 4),
        "`images` must be uint8 [batch, height, width, 3] (rank 4); got shape",
        shape,
    )
    # Each check runs only after the one before it passed, so shape[3] exists.
    with tf.control_dependencies([rank_ok]):
        channels_ok = _assert(
            tf.equal(shape[3], 3), "`images` must have 3 (RGB) channels last; got shape", shape
        )
    with tf.control_dependencies([channels_ok]):
        size_ok = _assert(
            tf.reduce_all(shape[:3] > 0),
            "`images` must have batch, height and width >= 1 (not an empty image or batch); "
            "got shape",
            shape,
        )
    checks = [size_ok]
    if max_pixels is not None:
        with tf.control_dependencies([size_ok]):
            pixels = tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64)
            checks.append(_assert(
                pixels <= max_pixels,
                f"`images` must have at most {max_pixels} pixels (height x width); got shape",
                shape))
    with tf.control_dependencies(checks):
        images = tf.identity(images)
    return tf.ensure_shape(images, [None, None, None, 3])


def checked_bytes(image_bytes):
    """Checks at run time that `image_bytes` is a string vector [B >= 1]."""
    shape = tf.shape(image_bytes)
    ok = _assert(
        tf.logical_and(tf.equal(tf.size(shape), 1), tf.reduce_all(shape > 0)),
        "`image_bytes` must be a string vector [batch] of encoded images, batch >= 1; got shape",
        shape,
    )
    with tf.control_dependencies([ok]):
        image_bytes = tf.identity(image_bytes)
    return tf.ensure_shape(image_bytes, [None])


def detections(model, images, resize, class_score_thresholds=None):
    """Detections for uint8 images `[B, H, W, 3]` (rank known) in their own pixels.

    With `class_score_thresholds` (one float per class), a detection of class c is kept only
    when its score reaches `class_score_thresholds[c]`.

    Returns the dict of `OUTPUT_KEYS` with fixed dtypes (float32, float32, int32, int32).
    """
    # No float cast here: the model casts what it gets, and a resize reads the uint8 pixels.
    if resize is None:
        detections = model.detect(images)
        boxes = detections["boxes"]
    else:
        # The same resize and bottom/right padding as evaluation batches, one scale per batch
        # (the images of a batch share their size).
        padded, size, scale = resize_and_pad(images, resize,
                                             model.anchor_generator.stride_multiple,
                                             model.preprocessing)
        detections = model.detect(padded, image_sizes=size)
        shape = tf.cast(tf.shape(images)[1:3], tf.float32)
        # Padding rows are 0 and stay 0.
        boxes = tf.minimum(scale_boxes(detections["boxes"], 1.0 / scale),
                           tf.gather(shape, [1, 0, 1, 0]))
    result = {
        "boxes": tf.cast(boxes, tf.float32),
        "scores": tf.cast(detections["scores"], tf.float32),
        "classes": tf.cast(detections["classes"], tf.int32),
        "num_detections": tf.cast(detections["num_detections"], tf.int32),
    }
    if class_score_thresholds is not None:
        result = apply_class_thresholds(result, class_score_thresholds)
    return result


def apply_class_thresholds(detections, thresholds):
    """Drops detections under their class's score threshold and re-packs the padded outputs.

    Args:
        detections: the dict of `OUTPUT_KEYS`, padded (classes -1, boxes and scores 0).
        thresholds: K floats, one per class.

    Returns:
        The same dict, kept detections first (still best score first), padding after them.
    """
    thresholds = tf.constant(thresholds, tf.float32)
    classes = detections["classes"]
    valid = classes >= 0
    keep = valid & (detections["scores"] >= tf.gather(thresholds, tf.maximum(classes, 0)))
    # Kept detections, best first, then the rest: argsort is stable, so ties keep their order.
    order = tf.argsort(tf.where(keep, detections["scores"], -1.0), axis=1, direction="DESCENDING",
                       stable=True)
    kept = tf.gather(keep, order, batch_dims=1)
    boxes = tf.gather(detections["boxes"], order, batch_dims=1)
    return {
        "boxes": tf.where(kept[..., None], boxes, 0.0),
        "scores": tf.where(kept, tf.gather(detections["scores"], order, batch_dims=1), 0.0),
        "classes": tf.where(kept, tf.gather(classes, order, batch_dims=1), -1),
        "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
    }


def output_specs(model):
    max_detections = model.postprocessor.max_detections
    return {
        "boxes": tf.TensorSpec([max_detections, 4], tf.float32),
        "scores": tf.TensorSpec([max_detections], tf.float32),
        "classes": tf.TensorSpec([max_detections], tf.int32),
        "num_detections": tf.TensorSpec([], tf.int32),
    }


def traced(fn, spec):
    """A tf.function of `fn(input)` traced once for `spec`.

    Autograph is off (the code has no data-dependent Python control flow) and every caller
    reuses this one trace: tracing the network and its NMS dominates the export time.
    """
    function = tf.function(fn, input_signature=[spec], autograph=False)
    function.get_concrete_function()
    return function


def write_saved_model(model, directory, functions):
    """Writes `functions` ({signature name: traced tf.function}) as a SavedModel."""
    # What Keras's ExportArchive does, minus its second trace of every endpoint: a plain
    # trackable holding the functions and the tf.Variables their graphs capture. (Tracking
    # the Keras variables instead leaves those captures out of the checkpoint: TF1 loaders
    # such as TF Serving and the TFLite converter then find them uninitialised.)
    signatures = {name: fn.get_concrete_function() for name, fn in functions.items()}
    captured = {}
    for concrete in signatures.values():
        captured.update((id(variable), variable) for variable in concrete.variables)
    root = tf.Module()
    root.captured_variables = list(captured.values())
    root.serving_functions = dict(functions)
    tf.saved_model.save(root, os.fspath(directory), signatures=signatures)
