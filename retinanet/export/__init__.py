"""Deployable forms of a trained RetinaNet: SavedModel (TF Serving), LiteRT and ONNX.

Every form takes raw RGB images and gives detections with box decoding and NMS inside, so
running one needs no code of this package: TF Serving, the LiteRT runtime or onnxruntime is
enough. The outputs follow the detections contract of docs/CONTRACTS.md, with
`D = model.postprocessor.max_detections`:

- `boxes`: float32 `[B, D, 4]` xyxy in the input image's pixels, padded with 0
- `scores`: float32 `[B, D]`, best first, padded with 0
- `classes`: int32 `[B, D]`, padded with -1
- `num_detections`: int32 `[B]`

The forms:

- `export_saved_model`: signature `serving_default` takes `images`, uint8
  `[B, H, W, 3]` of any size (B >= 1); `serving_bytes` takes `image_bytes`, string
  `[B]` of encoded JPEG, PNG, GIF or BMP images, which may differ in size.
- `export_litert`: a `.tflite` file of TFLite builtin ops only, with one fixed input
  `images` uint8 `[1, height, width, 3]`; float32, float16 or dynamic-range weights, or
  full integer (`"int8"`: network in int8, calibrated on `representative_data`).
- `export_onnx`: an ONNX model (via tf2onnx) with input `images` uint8 `[B, H, W, 3]`;
  float32, or `"int8"` (ONNX Runtime's static quantisation of the convolutions).
- `load_exported` (retinanet.export.runtime): runs any of them with
  `predict_on_batch(images)`, as `retinanet.evaluation.evaluate` expects.
- `export`: one of the above by name, writing into a directory (for the CLI), with
  `model.json` beside the model: class names, input, resize rule, outputs and their units
  (`model_description`; docs/CONTRACTS.md). `retinanet.deploy` runs a LiteRT or ONNX export
  from it with numpy, Pillow and the runtime alone.

Without `resize` the images go into the model as they are (it pads them to a multiple of
its `anchor_generator.stride_multiple`), so an exported form gives what `model.predict`
gives on the same uint8 images. With `resize` (the resize rule of `retinanet.preprocess`,
called `image_size` in the pipeline: an int S scales the longer side to S,
`(min_side, max_side)` is detectron2's shortest-edge rule) each batch is resized and padded
as evaluation batches are, and boxes are mapped back to the input's pixels.

Agreement with `model.predict` on the same images, as measured on tests/test_export.py's
small model (tested against: 1 px and 1e-3 unless said otherwise):

- SavedModel, ONNX and float32 LiteRT: the same detections, boxes within 2e-5 px, scores
  within 2e-7.
- float16 LiteRT: boxes within 0.03 px, scores within 2e-4; a detection whose score sits at
  the threshold may come or go.
- dynamic-range LiteRT: int8 weights with activations quantised on the fly; the top five
  detections moved by up to 8 px and 0.03 in score (tested against 16 px and 0.06), and the
  count changes. Check it on your own data before deploying it; prefer float16.
- int8 LiteRT and int8 ONNX: see tests/test_export_int8.py and BENCHMARKS.md (top
  detections of a trained model overlap the float model's with IoU >= 0.9).
"""

import json
import os

from retinanet import atomic
from retinanet.export.litert import QUANTIZATIONS, export_litert
from retinanet.export.onnx import DEFAULT_ONNX_OPSET, ONNX_QUANTIZATIONS, export_onnx
from retinanet.export.runtime import load_exported
from retinanet.export.saved_model import export_saved_model
from retinanet.export.serving import BYTES_SIGNATURE, OUTPUT_KEYS, SERVING_SIGNATURE
from retinanet.preprocess import pad_color

__all__ = [
    "BYTES_SIGNATURE",
    "FORMATS",
    "ONNX_QUANTIZATIONS",
    "OUTPUT_KEYS",
    "QUANTIZATIONS",
    "SERVING_SIGNATURE",
    "export",
    "export_litert",
    "export_onnx",
    "export_saved_model",
    "load_exported",
]

FORMATS = ("saved_model", "litert", "onnx")

# What `export` writes inside `output_dir` for the single-file formats.
_LITERT_FILENAME = "model{suffix}.tflite"
_ONNX_FILENAME = "model{suffix}.onnx"


def export(
    model,
    output_dir,
    format="saved_model",
    *,
    resize=None,
    input_size=None,
    quantization=None,
    bytes_signature=True,
    opset=DEFAULT_ONNX_OPSET,
    class_score_thresholds=None,
    representative_data=None,
    image_size=None,
    class_names=None,
):
    """Exports `model` in one of `FORMATS` into `output_dir` (the CLI's entry point).

    - `"saved_model"`: `output_dir` becomes the SavedModel (`export_saved_model`).
    - `"litert"`: `output_dir/model.tflite`, or `model_float16.tflite` /
      `model_dynamic_range.tflite` / `model_int8.tflite` when quantised (`export_litert`).
    - `"onnx"`: `output_dir/model.onnx`, or `model_int8.onnx` (`export_onnx`).

    Args:
        model: a `retinanet.RetinaNet`.
        output_dir: a directory, created if missing.
        format: one of `FORMATS`.
        resize: saved_model and onnx: as in `export_saved_model`.
        input_size: litert only, required: the fixed `(height, width)` input.
        quantization: litert: one of `QUANTIZATIONS`; onnx: one of `ONNX_QUANTIZATIONS`.
        bytes_signature: saved_model only: also write `serving_bytes`.
        opset: onnx only: the ONNX opset.
        class_score_thresholds: saved_model only: a score threshold per class, baked in.
        representative_data: `quantization="int8"` only: calibration images (see
            `export_litert`).
        image_size: litert only: the resize rule that fits images into `input_size`, for
            `model.json` (default: the longer side to the input's shorter side).
        class_names: the names written to `model.json` (default `model.class_names`, else
            the class ids).

    Returns:
        The path written (the SavedModel directory or the model file), a string.

    Raises:
        ValueError: an unknown `format`, or an argument the format does not take.
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}.")
    # Arguments another format would need are refused rather than silently ignored.
    if format != "litert" and input_size is not None:
        raise ValueError(f"`input_size` applies to format='litert' only, got {input_size!r}.")
    if format == "saved_model" and quantization is not None:
        raise ValueError(
            f"`quantization` applies to format='litert' or 'onnx' only, got {quantization!r}.")
    if quantization != "int8" and representative_data is not None:
        raise ValueError("`representative_data` applies to quantization='int8' only, got "
                         f"quantization={quantization!r}.")
    if format == "litert" and resize is not None:
        raise ValueError(
            "`resize` does not apply to format='litert' (its input has the fixed `input_size`)."
        )
    if format != "saved_model" and bytes_signature is not True:
        raise ValueError("`bytes_signature` applies to format='saved_model' only.")
    if format != "onnx" and opset != DEFAULT_ONNX_OPSET:
        raise ValueError("`opset` applies to format='onnx' only.")
    if format != "saved_model" and class_score_thresholds is not None:
        raise ValueError("`class_score_thresholds` applies to format='saved_model' only.")
    if format != "litert" and image_size is not None:
        raise ValueError("`image_size` applies to format='litert' only (the other formats "
                         "take `resize`).")

    model = float32_copy(model)
    output_dir = os.fspath(output_dir)
    suffix = "" if quantization is None else f"_{quantization}"
    os.makedirs(output_dir, exist_ok=True)
    if format == "saved_model":
        written = export_saved_model(model, output_dir, resize, bytes_signature,
                                     class_score_thresholds=class_score_thresholds)
    elif format == "litert":
        if input_size is None:
            raise ValueError("`input_size` (height, width) is required for format='litert'.")
        path = os.path.join(output_dir, _LITERT_FILENAME.format(suffix=suffix))
        written = export_litert(model, path, input_size, quantization, representative_data)
    else:
        written = export_onnx(model, os.path.join(output_dir,
                                                  _ONNX_FILENAME.format(suffix=suffix)),
                              resize, opset, quantization, representative_data)
    if format == "litert":
        resize = image_size if image_size is not None else int(min(input_size))
    description = model_description(model, format, written, resize=resize,
                                    input_size=input_size, quantization=quantization,
                                    class_names=class_names)
    atomic.write_text(os.path.join(output_dir, "model.json"),
                      json.dumps(description, indent=2) + "\n")
    return written


def _float32_config(node):
    """A serialized Keras object with every (mixed) DTypePolicy set to float32."""
    if isinstance(node, list):
        return [_float32_config(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") == "DTypePolicy" and isinstance(node.get("config"), dict):
        return dict(node, config=dict(node["config"], name="float32"))
    return {key: ("float32" if key == "dtype" and isinstance(value, str)
                  and value.startswith("mixed_") else _float32_config(value))
            for key, value in node.items()}


def float32_copy(model):
    """`model` when all its layers compute in float32, else a float32 copy with its weights.

    A checkpoint trained under mixed_bfloat16 or mixed_float16 keeps each layer's policy;
    ONNX Runtime refuses its graph (bfloat16 and float16 operands of one op) and the LiteRT
    converter fails, so every export runs on float32 layers. The weights are float32 under
    any mixed policy, so the copy holds exactly the trained values.
    """
    import keras

    config = keras.saving.serialize_keras_object(model)
    float32_config = _float32_config(config)
    if float32_config == config:
        return model
    copy = keras.saving.deserialize_keras_object(float32_config)
    copy.set_weights(model.get_weights())
    return copy


def _resize_rule(image_size, preprocessing):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        rule = {"rule": "long_side", "size": image_size,
                "text": f"scale = {image_size} / max(height, width)"}
    else:
        min_side, max_side = image_size
        rule = {"rule": "short_side", "min_side": min_side, "max_side": max_side,
                "text": f"scale = min({min_side} / min(height, width), "
                        f"{max_side} / max(height, width))"}
    if preprocessing == "torchvision":
        rule["rounding"] = "floor"
        rule["text"] += ("; size = floor(side * scale) (scale in float32, product in float64); "
                         "boxes scale per axis by resized / original side")
    else:
        rule["rounding"] = "round"
        rule["text"] += "; size = round(side * scale); boxes scale by scale"
    return rule


def model_description(model, format, path, *, resize=None, input_size=None,
                      quantization=None, class_names=None) -> dict:
    """What a user of an exported model needs without this package (`model.json`).

    `resize` is the rule the model applies itself (SavedModel, ONNX), or for LiteRT the
    rule the caller applies before padding to `input_size`.

    Holds the class names, the input (name, dtype, shape, whether the model resizes it
    itself), the resize rule and padding to apply otherwise (the LiteRT input), the outputs
    with their shapes and units, and for LiteRT the order of the outputs as the classic
    interpreter API lists them (its names are `StatefulPartitionedCall:N`).
    """
    import retinanet

    names = class_names or model.class_names or [str(c) for c in range(model.num_classes)]
    inside = format != "litert" and resize is not None
    fixed = format == "litert"
    units = ("pixels of the model input (the resized, padded canvas): divide by the resize "
             "scale for the image's pixels" if fixed else "pixels of the input image")
    detections = int(model.postprocessor.max_detections)
    color = pad_color(model.preprocessing)
    # RGB 0-255 (torchvision's rules: the mean colour, 0 once normalised); the LiteRT input
    # is uint8, where it rounds to whole values.
    padding = [round(c) if fixed else c for c in color] if any(color) else 0
    description = {
        "format": format,
        "file": "." if format == "saved_model" else os.path.basename(path),
        "signature": SERVING_SIGNATURE,
        "retinanet_version": retinanet.__version__,
        "class_names": list(names),
        "input": {
            "name": "images", "dtype": "uint8", "channels": "RGB, 0-255",
            "shape": [1, *input_size, 3] if fixed else [None, None, None, 3],
            "resized_inside": inside,
            "size_multiple": int(model.anchor_generator.stride_multiple),
        },
        "resize": _resize_rule(resize, model.preprocessing),
        "padding": {"sides": "bottom and right", "value": padding,
                    "to": list(input_size) if fixed else
                    f"multiples of {model.anchor_generator.stride_multiple} (inside the model)"},
        "outputs": {
            "boxes": {"dtype": "float32", "shape": ["batch", detections, 4],
                      "meaning": "x1, y1, x2, y2, not clipped", "units": units,
                      "padding": 0},
            "scores": {"dtype": "float32", "shape": ["batch", detections],
                       "meaning": "the class's score, best first", "padding": 0},
            "classes": {"dtype": "int32", "shape": ["batch", detections],
                        "meaning": "index into class_names", "padding": -1},
            "num_detections": {"dtype": "int32", "shape": ["batch"],
                               "meaning": "how many rows of the others are detections"},
        },
        "score_threshold": float(model.postprocessor.score_threshold),
        "max_detections": detections,
        "quantization": quantization,
    }
    if fixed:
        description["classic_interpreter_output_order"] = _litert_output_order(path)
    return description


def _litert_output_order(path):
    """The output names in the order of `Interpreter.get_output_details()`, by shape and
    dtype (boxes are the only rank-3 output, num_detections the only rank-1, classes the
    int32 rank-2 one)."""
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter

    order = []
    for detail in Interpreter(model_path=path).get_output_details():
        rank, integer = len(detail["shape"]), np.issubdtype(detail["dtype"], np.integer)
        order.append({3: "boxes", 1: "num_detections"}.get(rank)
                     or ("classes" if integer else "scores"))
    return order
