"""LiteRT (TFLite) export, for phones and the edge."""

import os
import tempfile

import tensorflow as tf

from retinanet.export import serving
from retinanet.export.calibration import calibration_images, fit_to_size

QUANTIZATIONS = (None, "float16", "dynamic_range", "int8")


def _check_quantization(quantization):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}."
        )
    return quantization


def _in_scope(tensor_name, scope):
    """Whether a LiteRT tensor (fused names are joined by ";") lies in name scope `scope`
    (Keras numbers the scope of each call: `retina_net_1/...`)."""
    return all(name.split("/")[0] == scope or name.split("/")[0].startswith(scope + "_")
               for name in tensor_name.split(";"))


def _quantize_network_only(converter, network_scope):
    """Full-integer LiteRT flatbuffer of `converter`'s model with only the network in int8.

    Calibrates (min/max of every activation on the converter's representative dataset),
    then quantises every op whose outputs lie in `network_scope`; the decoding and NMS
    stay float32, with DEQUANTIZE ops where they read the head outputs. This is the
    selective quantisation of `tf.lite.experimental.QuantizationDebugger`
    (`denylisted_nodes`), without its debug model.
    """
    # TF internals: the converter has no public option for leaving ops out.
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.tools import flatbuffer_utils

    converter._experimental_calibrate_only = True
    calibrated = flatbuffer_utils.read_model_from_bytearray(converter.convert())
    # Calibration records every tensor's range; the quantiser would then put a QUANTIZE /
    # DEQUANTIZE round trip on the float ops' tensors (scores and boxes in 256 steps).
    # Forgetting the ranges outside the network keeps those tensors float.
    float_names = set()
    for subgraph in calibrated.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            if not _in_scope(name, network_scope):
                tensor.quantization = None
                float_names.add(name)
    return lite_convert.mlir_quantize(flatbuffer_utils.convert_object_to_bytearray(calibrated),
                                      fully_quantize=False, denylisted_nodes=sorted(float_names))


def export_litert(model, path, input_size, quantization=None, representative_data=None):
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
            the size), `"dynamic_range"` (int8 weights and on-the-fly int8 activations,
            about 30 % of the size; less accurate, see the module docstring) or `"int8"`
            (full integer: int8 weights and activations calibrated on
            `representative_data`, for integer accelerators and XNNPACK's int8 kernels;
            the network is int8, decoding and NMS stay float32).
        representative_data: `"int8"` only, required there: calibration images (see
            `retinanet.export.calibration.calibration_images`; the first 100 are used),
            e.g. the evaluation pipeline over training images. Each is padded (bottom and
            right, as the pipeline pads) to `input_size`, shrunk first if larger.

    Returns:
        `path` as a string.

    Raises:
        ValueError: a bad `model`, `input_size`, `quantization` or `representative_data`
            (int8 without it, or with it for another mode).
    """
    serving.check_model(model)
    height, width = serving.check_input_size(input_size)
    quantization = _check_quantization(quantization)
    if quantization == "int8":
        calibration = [fit_to_size(image, height, width)[None]
                       for image in calibration_images(representative_data)]
    elif representative_data is not None:
        raise ValueError("`representative_data` applies to quantization='int8' only, got "
                         f"quantization={quantization!r}.")

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
        if quantization == "int8":
            # INT8 first, float builtins where an op has no int8 kernel (none in the network).
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            converter.representative_dataset = lambda: ({"images": image}
                                                        for image in calibration)
            flatbuffer = _quantize_network_only(converter, _network_scope(model))
        else:
            flatbuffer = converter.convert()
    with open(path, "wb") as file:
        file.write(flatbuffer)
    return os.fspath(path)


def _network_scope(model):
    """The name scope of the network's tensors in the traced graph: the model's name."""
    return model.name
