"""ONNX export (through tf2onnx), for onnxruntime and other ONNX runtimes."""

import os
import tempfile

import tensorflow as tf

from retinanet.export import serving
from retinanet.export.calibration import calibration_images
from retinanet.preprocess import check_image_size

DEFAULT_ONNX_OPSET = 17
ONNX_QUANTIZATIONS = (None, "int8")
# Only the network's arithmetic: box decoding, NMS and the resize stay float.
_INT8_OP_TYPES = ["Conv", "MatMul"]


def _quantize_static(float_path, path, images):
    """ONNX Runtime's static int8 quantisation of `float_path` into `path`, calibrated by
    running `images` (uint8 `[H, W, 3]` each) through it: QDQ format, per-channel int8
    weights, uint8 activations, Conv and MatMul only."""
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._feeds = iter({"images": image[None]} for image in images)

        def get_next(self):
            return next(self._feeds, None)

    quantization.quantize_static(
        float_path, path, Reader(), quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=_INT8_OP_TYPES, per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8)


def export_onnx(model, path, resize=None, opset=DEFAULT_ONNX_OPSET, quantization=None,
                representative_data=None):
    """Writes an ONNX model with decoding and NMS inside, for onnxruntime and others.

    Input `images` uint8 `[B, H, W, 3]` (any size, B >= 1), outputs as in the module
    docstring. Converted with tf2onnx (Keras's `model.export(format="onnx")` uses it too,
    but exports the raw head outputs, not detections).

    Args:
        model: a `retinanet.RetinaNet`.
        path: the `.onnx` file to write.
        resize: as in `export_saved_model`.
        opset: the ONNX opset (NonMaxSuppression needs >= 10).
        quantization: None (float32) or `"int8"`: ONNX Runtime's static quantisation of
            the convolutions (int8 weights per channel, uint8 activations calibrated on
            `representative_data`); decoding and NMS stay float. Needs onnxruntime.
        representative_data: `"int8"` only, required there: calibration images, as in
            `retinanet.export.export_litert` (the first 100 are used, at their own size).

    Returns:
        `path` as a string.

    Raises:
        ValueError: a bad `model`, `resize`, `opset`, `quantization` or
            `representative_data`.
        ImportError: tf2onnx is not installed (`pip install tf2onnx onnx`), or onnxruntime
            for int8.
    """
    serving.check_model(model)
    resize = check_image_size(resize, "resize")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 10:
        raise ValueError(f"`opset` must be an int >= 10, got {opset!r}.")
    if quantization not in ONNX_QUANTIZATIONS:
        raise ValueError(f"`quantization` for ONNX must be one of {ONNX_QUANTIZATIONS}, got "
                         f"{quantization!r}.")
    if quantization == "int8":
        images = calibration_images(representative_data)
    elif representative_data is not None:
        raise ValueError("`representative_data` applies to quantization='int8' only.")
    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install tf2onnx onnx"
        ) from error

    # No run-time checks: onnxruntime checks the input's rank and dtype itself.
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    # Float before any resize: tf2onnx turns TensorFlow's uint8 -> float32 bilinear resize
    # into an ONNX Resize whose output stays uint8, which onnxruntime then refuses to load.
    serve = serving.traced(
        lambda images: serving.detections(model, tf.cast(images, tf.float32), resize), spec)
    if quantization is None:
        tf2onnx.convert.from_function(
            serve, input_signature=[spec], opset=opset, output_path=os.fspath(path))
        return os.fspath(path)
    with tempfile.TemporaryDirectory() as directory:
        float_path = os.path.join(directory, "float.onnx")
        tf2onnx.convert.from_function(
            serve, input_signature=[spec], opset=opset, output_path=float_path)
        _quantize_static(float_path, os.fspath(path), images)
    return os.fspath(path)
