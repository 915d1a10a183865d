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
- `export`: one of the above by name, writing into a directory (for the CLI).

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

import os

from retinanet.export.litert import QUANTIZATIONS, export_litert
from retinanet.export.onnx import DEFAULT_ONNX_OPSET, ONNX_QUANTIZATIONS, export_onnx
from retinanet.export.runtime import load_exported
from retinanet.export.saved_model import export_saved_model
from retinanet.export.serving import BYTES_SIGNATURE, OUTPUT_KEYS, SERVING_SIGNATURE

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

    output_dir = os.fspath(output_dir)
    suffix = "" if quantization is None else f"_{quantization}"
    os.makedirs(output_dir, exist_ok=True)
    if format == "saved_model":
        return export_saved_model(model, output_dir, resize, bytes_signature,
                                  class_score_thresholds=class_score_thresholds)
    if format == "litert":
        if input_size is None:
            raise ValueError("`input_size` (height, width) is required for format='litert'.")
        path = os.path.join(output_dir, _LITERT_FILENAME.format(suffix=suffix))
        return export_litert(model, path, input_size, quantization, representative_data)
    return export_onnx(model, os.path.join(output_dir, _ONNX_FILENAME.format(suffix=suffix)),
                       resize, opset, quantization, representative_data)
