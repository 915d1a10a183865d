"""ONNX export (through tf2onnx), for onnxruntime and other ONNX runtimes."""

import os

import tensorflow as tf

from retinanet.export import serving
from retinanet.preprocess import check_image_size

DEFAULT_ONNX_OPSET = 17


def export_onnx(model, path, resize=None, opset=DEFAULT_ONNX_OPSET):
    """Writes an ONNX model with decoding and NMS inside, for onnxruntime and others.

    Input `images` uint8 `[B, H, W, 3]` (any size, B >= 1), outputs as in the module
    docstring. Converted with tf2onnx (Keras's `model.export(format="onnx")` uses it too,
    but exports the raw head outputs, not detections).

    Args:
        model: a `retinanet.RetinaNet`.
        path: the `.onnx` file to write.
        resize: as in `export_saved_model`.
        opset: the ONNX opset (NonMaxSuppression needs >= 10).

    Returns:
        `path` as a string.

    Raises:
        ValueError: a bad `model`, `resize` or `opset`.
        ImportError: tf2onnx is not installed (`pip install tf2onnx onnx`).
    """
    serving.check_model(model)
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
    serve = serving.traced(lambda images: serving.detections(model, images, resize), spec)
    tf2onnx.convert.from_function(
        serve, input_signature=[spec], opset=opset, output_path=os.fspath(path)
    )
    return os.fspath(path)
