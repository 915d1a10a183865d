"""Deployable forms of a trained RetinaNet: SavedModel (TF Serving), LiteRT and ONNX.

Every form takes raw RGB images and gives detections with box decoding and NMS inside, so
running one needs no code of this package: TF Serving, the LiteRT runtime or onnxruntime is
enough. The outputs follow the detections contract
of docs/CONTRACTS.md, with ``D = model.postprocessor.max_detections``:

- ``boxes``: float32 ``[B, D, 4]`` xyxy in the input image's pixels, padded with 0
- ``scores``: float32 ``[B, D]``, best first, padded with 0
- ``classes``: int32 ``[B, D]``, padded with -1
- ``num_detections``: int32 ``[B]``

The forms:

- `export_saved_model`: signature ``serving_default`` takes ``images``, uint8
  ``[B, H, W, 3]`` of any size (B >= 1); ``serving_bytes`` takes ``image_bytes``, string
  ``[B]`` of encoded JPEG, PNG, GIF or BMP images, which may differ in size.
- `export_litert`: a ``.tflite`` file of TFLite builtin ops only, with one fixed input
  ``images`` uint8 ``[1, height, width, 3]``; float32, float16 or dynamic-range weights.
- `export_onnx`: an ONNX model (via tf2onnx) with input ``images`` uint8 ``[B, H, W, 3]``.
- `export`: one of the above by name, writing into a directory (for the CLI).

Without ``resize`` the images go into the model as they are (it pads them to a multiple of
128), so an exported form gives what ``model.predict`` gives on the same uint8 images. With
``resize`` (the `retinanet.data.pipeline` ``image_size`` rule: an int S scales the longer
side to S, ``(min_side, max_side)`` is detectron2's shortest-edge rule) each batch is resized
and padded as evaluation batches are, and boxes are mapped back to the input's pixels.

Agreement with ``model.predict`` on the same images, as measured on tests/test_export.py's
small model (tested against: 1 px and 1e-3 unless said otherwise):

- SavedModel, ONNX and float32 LiteRT: the same detections, boxes within 2e-5 px, scores
  within 2e-7.
- float16 LiteRT: boxes within 0.03 px, scores within 2e-4; a detection whose score sits at
  the threshold may come or go.
- dynamic-range LiteRT: int8 weights with activations quantised on the fly; the top five
  detections moved by up to 8 px and 0.03 in score (tested against 16 px and 0.06), and the
  count changes. Check it on your own data before deploying it; prefer float16.
"""

import os
import tempfile

import tensorflow as tf

from retinanet.data.pipeline import check_image_size, resize_scale_and_canvas

__all__ = [
    "BYTES_SIGNATURE",
    "FORMATS",
    "OUTPUT_KEYS",
    "QUANTIZATIONS",
    "SERVING_SIGNATURE",
    "export",
    "export_litert",
    "export_onnx",
    "export_saved_model",
]

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
FORMATS = ("saved_model", "litert", "onnx")
QUANTIZATIONS = (None, "float16", "dynamic_range")
OUTPUT_KEYS = ("boxes", "scores", "classes", "num_detections")
DEFAULT_ONNX_OPSET = 17

# What `export` writes inside `output_dir` for the single-file formats.
_LITERT_FILENAME = "model{suffix}.tflite"
_ONNX_FILENAME = "model.onnx"


# ----------------------------------------------------------------------------- validation


def _check_model(model):
    if not (hasattr(model, "detect") and hasattr(model, "postprocessor")):
        raise ValueError(
            f"`model` must be a retinanet.RetinaNet (with `detect`), got {type(model).__name__}."
        )


def _check_image_size(image_size):
    """(height, width), two positive ints."""
    try:
        height, width = image_size
        valid = all(isinstance(side, int) and not isinstance(side, bool) and side >= 1
                    for side in (height, width))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"`image_size` must be (height, width), two positive ints, got {image_size!r}."
        )
    return int(height), int(width)


def _check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}."
        )
    return quantization


def _assert(condition, message, shape):
    return tf.debugging.Assert(condition, [message, shape], summarize=8)


def _checked_images(images):
    """Checks at run time that `images` is [B >= 1, H >= 1, W >= 1, 3]; returns it rank 4.

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
    with tf.control_dependencies([size_ok]):
        images = tf.identity(images)
    return tf.ensure_shape(images, [None, None, None, 3])


def _checked_bytes(image_bytes):
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


# ----------------------------------------------------------------------------- the graph


def _detections(model, images, resize):
    """Detections for uint8 images ``[B, H, W, 3]`` (rank known) in their own pixels.

    Returns the dict of `OUTPUT_KEYS` with fixed dtypes (float32, float32, int32, int32).
    """
    images = tf.cast(images, tf.float32)
    if resize is None:
        detections = model.detect(images)
        boxes = detections["boxes"]
    else:
        # The same resize and bottom/right padding as evaluation batches, one scale per batch
        # (the images of a batch share their size).
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        scale, canvas = resize_scale_and_canvas(height, width, resize)
        size = tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * scale), tf.int32)
        size = tf.maximum(size, 1)
        resized = tf.image.resize(images, size, method="bilinear")
        resized = tf.pad(
            resized, [[0, 0], [0, canvas[0] - size[0]], [0, canvas[1] - size[1]], [0, 0]]
        )
        detections = model.detect(resized)
        bounds = tf.cast(tf.stack([width, height, width, height]), tf.float32)
        # Padding rows are 0 and stay 0.
        boxes = tf.clip_by_value(detections["boxes"] / scale, 0.0, bounds)
    return {
        "boxes": tf.cast(boxes, tf.float32),
        "scores": tf.cast(detections["scores"], tf.float32),
        "classes": tf.cast(detections["classes"], tf.int32),
        "num_detections": tf.cast(detections["num_detections"], tf.int32),
    }


def _output_specs(model):
    max_detections = model.postprocessor.max_detections
    return {
        "boxes": tf.TensorSpec([max_detections, 4], tf.float32),
        "scores": tf.TensorSpec([max_detections], tf.float32),
        "classes": tf.TensorSpec([max_detections], tf.int32),
        "num_detections": tf.TensorSpec([], tf.int32),
    }


def _traced(fn, spec):
    """A tf.function of ``fn(input)`` traced once for ``spec``.

    Autograph is off (the code has no data-dependent Python control flow) and every caller
    reuses this one trace: tracing the network and its NMS dominates the export time.
    """
    function = tf.function(fn, input_signature=[spec], autograph=False)
    function.get_concrete_function()
    return function


def _serving_functions(model, resize, bytes_signature):
    """{signature name: traced tf.function} for the SavedModel."""
    # shape=None: see `_checked_images` for why the rank is left open.
    serve_images = _traced(
        lambda images: _detections(model, _checked_images(images), resize),
        tf.TensorSpec(None, tf.uint8, name="images"),
    )
    functions = {SERVING_SIGNATURE: serve_images}
    if not bytes_signature:
        return functions

    def one_image(encoded):
        # The images of a request may differ in size, so each runs on its own, through the
        # trace above.
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return {key: value[0] for key, value in serve_images(image[None]).items()}

    functions[BYTES_SIGNATURE] = _traced(
        lambda image_bytes: tf.map_fn(
            one_image, _checked_bytes(image_bytes), fn_output_signature=_output_specs(model)
        ),
        tf.TensorSpec(None, tf.string, name="image_bytes"),
    )
    return functions


def _write_saved_model(model, directory, functions):
    """Writes ``functions`` ({signature name: traced tf.function}) as a SavedModel."""
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


# ----------------------------------------------------------------------------- exporters


def export_saved_model(model, directory, resize=None, bytes_signature=True):
    """Writes a SavedModel for TF Serving and `tf.saved_model.load`.

    Signatures (see the module docstring for the outputs):

    - ``serving_default``: ``images`` uint8 ``[B, H, W, 3]``, any H and W, B >= 1.
    - ``serving_bytes`` (when ``bytes_signature``): ``image_bytes`` string ``[B]``, encoded
      JPEG/PNG/GIF/BMP, decoded to RGB inside; each image is run on its own.

    Bad input fails inside the graph with an InvalidArgumentError whose message names
    ``images`` (or ``image_bytes``) and the shape it got: wrong rank, not 3 channels, an empty
    batch or a zero-size image. A wrong dtype is rejected before the graph runs (TF Serving:
    "Expects arg[0] to be uint8 but float is provided").

    Args:
        model: a `retinanet.RetinaNet`.
        directory: where to write the SavedModel (created; existing files are overwritten).
        resize: None (images go in as they are), an int S (longer side to S) or
            ``(min_side, max_side)``, as `retinanet.data.pipeline`'s ``image_size``. Boxes
            are always in the input image's pixels.
        bytes_signature: also write the ``serving_bytes`` signature.

    Returns:
        ``directory`` as a string.

    Raises:
        ValueError: a bad ``model`` or ``resize``.
    """
    _check_model(model)
    resize = check_image_size(resize, "resize")
    _write_saved_model(model, directory, _serving_functions(model, resize, bytes_signature))
    return os.fspath(directory)


def export_litert(model, path, image_size, quantization=None):
    """Writes a LiteRT (TFLite) model with decoding and NMS inside, for phones and the edge.

    The model has one signature, ``serving_default``, with input ``images`` uint8
    ``[1, height, width, 3]`` (resize camera frames to ``image_size`` first) and the outputs
    of the module docstring with B = 1, boxes in those ``height`` x ``width`` pixels. It uses
    TFLite builtin ops only (no Flex delegate), so the plain LiteRT runtime runs it.

    Args:
        model: a `retinanet.RetinaNet`.
        path: the ``.tflite`` file to write.
        image_size: ``(height, width)`` of the fixed input, positive ints (any size: the
            model pads to a multiple of 128 inside).
        quantization: None (float32), ``"float16"`` (weights stored as float16, about half
            the size) or ``"dynamic_range"`` (int8 weights and on-the-fly int8 activations,
            about 30 % of the size; less accurate, see the module docstring).

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: a bad ``model``, ``image_size`` or ``quantization``.
    """
    _check_model(model)
    height, width = _check_image_size(image_size)
    quantization = _check_quantization(quantization)

    # No run-time checks: the interpreter checks the fixed input shape and dtype itself.
    serve = _traced(
        lambda images: _detections(model, images, None),
        tf.TensorSpec([1, height, width, 3], tf.uint8, name="images"),
    )
    # Through a SavedModel, as Keras's own LiteRT export goes: the converter then freezes the
    # variables (from concrete functions it leaves uninitialised resource variables: NaNs).
    with tempfile.TemporaryDirectory() as saved_model_dir:
        _write_saved_model(model, saved_model_dir, {SERVING_SIGNATURE: serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        flatbuffer = converter.convert()
    with open(path, "wb") as file:
        file.write(flatbuffer)
    return os.fspath(path)


def export_onnx(model, path, resize=None, opset=DEFAULT_ONNX_OPSET):
    """Writes an ONNX model with decoding and NMS inside, for onnxruntime and others.

    Input ``images`` uint8 ``[B, H, W, 3]`` (any size, B >= 1), outputs as in the module
    docstring. Converted with tf2onnx (Keras's ``model.export(format="onnx")`` uses it too,
    but exports the raw head outputs, not detections).

    Args:
        model: a `retinanet.RetinaNet`.
        path: the ``.onnx`` file to write.
        resize: as in `export_saved_model`.
        opset: the ONNX opset (NonMaxSuppression needs >= 10).

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: a bad ``model``, ``resize`` or ``opset``.
        ImportError: tf2onnx is not installed (``pip install tf2onnx onnx``).
    """
    _check_model(model)
    resize = check_image_size(resize, "resize")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 10:
        raise ValueError(f"`opset` must be an int >= 10, got {opset!r}.")
    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install tf2onnx onnx"
        ) from error

    # No run-time checks: onnxruntime checks the input's rank and dtype itself.
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    serve = _traced(lambda images: _detections(model, images, resize), spec)
    tf2onnx.convert.from_function(
        serve, input_signature=[spec], opset=opset, output_path=os.fspath(path)
    )
    return os.fspath(path)


def export(
    model,
    output_dir,
    format="saved_model",
    *,
    resize=None,
    image_size=None,
    quantization=None,
    bytes_signature=True,
    opset=DEFAULT_ONNX_OPSET,
):
    """Exports `model` in one of `FORMATS` into ``output_dir`` (the CLI's entry point).

    - ``"saved_model"``: ``output_dir`` becomes the SavedModel (`export_saved_model`).
    - ``"litert"``: ``output_dir/model.tflite``, or ``model_float16.tflite`` /
      ``model_dynamic_range.tflite`` when quantised (`export_litert`).
    - ``"onnx"``: ``output_dir/model.onnx`` (`export_onnx`).

    Args:
        model: a `retinanet.RetinaNet`.
        output_dir: a directory, created if missing.
        format: one of `FORMATS`.
        resize: saved_model and onnx: as in `export_saved_model`.
        image_size: litert only, required: the fixed ``(height, width)`` input.
        quantization: litert only: one of `QUANTIZATIONS`.
        bytes_signature: saved_model only: also write ``serving_bytes``.
        opset: onnx only: the ONNX opset.

    Returns:
        The path written (the SavedModel directory or the model file), a string.

    Raises:
        ValueError: an unknown ``format``, or an argument the format does not take.
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}.")
    # Arguments another format would need are refused rather than silently ignored.
    if format != "litert":
        for name, value in (("image_size", image_size), ("quantization", quantization)):
            if value is not None:
                raise ValueError(f"`{name}` applies to format='litert' only, got {value!r}.")
    elif resize is not None:
        raise ValueError(
            "`resize` does not apply to format='litert' (its input has the fixed `image_size`)."
        )
    if format != "saved_model" and bytes_signature is not True:
        raise ValueError("`bytes_signature` applies to format='saved_model' only.")
    if format != "onnx" and opset != DEFAULT_ONNX_OPSET:
        raise ValueError("`opset` applies to format='onnx' only.")

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if format == "saved_model":
        return export_saved_model(model, output_dir, resize, bytes_signature)
    if format == "litert":
        if image_size is None:
            raise ValueError("`image_size` (height, width) is required for format='litert'.")
        suffix = "" if quantization is None else f"_{_check_quantization(quantization)}"
        path = os.path.join(output_dir, _LITERT_FILENAME.format(suffix=suffix))
        return export_litert(model, path, image_size, quantization)
    return export_onnx(model, os.path.join(output_dir, _ONNX_FILENAME), resize, opset)
