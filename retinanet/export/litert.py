"""LiteRT (TFLite) export, for phones and the edge."""

import os
import tempfile

import tensorflow as tf

from retinanet.export import serving

QUANTIZATIONS = (None, "float16", "dynamic_range")


def _check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}."
        )
    return quantization


def export_litert(model, path, input_size, quantization=None):
    """Writes a LiteRT (TFLite) model with decoding and NMS inside, for phones and the edge.

    The model has one signature, `serving_default`, with input `images` uint8
    `[1, height, width, 3]` (resize camera frames to `input_size` first) and the outputs
    of the module docstring with B = 1, boxes in those `height` x `width` pixels. It uses
    TFLite builtin ops only (no Flex delegate), so the plain LiteRT runtime runs it.

    Args:
        model: a `retinanet.RetinaNet`.
        path: the `.tflite` file to write.
        input_size: `(height, width)` of the fixed input, positive ints (any size: the
            model pads to a multiple of 128 inside).
        quantization: None (float32), `"float16"` (weights stored as float16, about half
            the size) or `"dynamic_range"` (int8 weights and on-the-fly int8 activations,
            about 30 % of the size; less accurate, see the module docstring).

    Returns:
        `path` as a string.

    Raises:
        ValueError: a bad `model`, `input_size` or `quantization`.
    """
    serving.check_model(model)
    height, width = serving.check_input_size(input_size)
    quantization = _check_quantization(quantization)

    # No run-time checks: the interpreter checks the fixed input shape and dtype itself.
    serve = serving.traced(
        lambda images: serving.detections(model, images, None),
        tf.TensorSpec([1, height, width, 3], tf.uint8, name="images"),
    )
    # Through a SavedModel, as Keras's own LiteRT export goes: the converter then freezes the
    # variables (from concrete functions it leaves uninitialised resource variables: NaNs).
    with tempfile.TemporaryDirectory() as saved_model_dir:
        serving.write_saved_model(model, saved_model_dir, {serving.SERVING_SIGNATURE: serve})
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
