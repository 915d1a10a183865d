"""Running an exported LiteRT or ONNX detector with numpy, Pillow and the runtime alone.

This file imports nothing else of the package and no TensorFlow: copy it next to the
exported model (`retinanet export` writes `model.json` beside it) onto a phone, a Raspberry
Pi or a server, with `pip install numpy pillow ai-edge-litert` (or `onnxruntime`):

    from deploy import Detector  # or: from retinanet.deploy import Detector

    detector = Detector("runs/mine/litert")  # the export folder, or the .tflite / .onnx file
    found = detector("photo.jpg")             # a path, a PIL image or an HxWx3 uint8 array
    for box, score, name in zip(found["boxes"], found["scores"], found["class_names"]):
        print(name, round(float(score), 2), box.round(1))  # xyxy in the photo's pixels

For a LiteRT model (a fixed input), `Detector` applies the model's resize rule from
`model.json` (the same arithmetic and bilinear resampling as the package's
`retinanet.preprocess`, either rule set), pads bottom and right with its padding colour to
the model's input, runs it, and maps the boxes back to the original image, clipped to it. An ONNX model resizes inside and
answers in the image's pixels; `Detector` only clips. The exported model keeps detections with at least its score threshold (0.05 by
default, for mAP); pass `score_threshold` for the operating point (the best-F1 threshold of
the run's `analysis.md` is a good one).
"""

from __future__ import annotations

import json
import os

import numpy as np

MODEL_JSON = "model.json"
FORMATS = {".tflite": "litert", ".onnx": "onnx"}


def read_model_json(path):
    """`model.json` of an exported model: `path` is the export folder or a file in it."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    json_path = os.path.join(folder, MODEL_JSON)
    if not os.path.isfile(json_path):
        raise ValueError(f"{json_path}: not found; `retinanet export` writes it beside the "
                         "model (re-export with this version)")
    with open(json_path, encoding="utf-8") as file:
        return json.load(file)


def resize_bilinear(image, height, width):
    """`image` (HxWx3, any dtype) resized to height x width as `tf.image.resize` does
    (bilinear, half-pixel centres, no antialiasing), in float32."""
    image = np.asarray(image, np.float32)

    def taps(size_in, size_out):
        centre = (np.arange(size_out, dtype=np.float32) + 0.5) * np.float32(size_in / size_out)
        position = np.maximum(centre - 0.5, 0.0)
        low = np.minimum(np.floor(position).astype(np.int64), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (position - low).astype(np.float32)

    y0, y1, fy = taps(image.shape[0], height)
    x0, x1, fx = taps(image.shape[1], width)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def letterbox(image, resize, canvas, pad_value=0):
    """`(canvas uint8 [H, W, 3], scale float32 [2] (y, x))`: `image` resized by the rule
    `resize` and padded bottom and right with `pad_value` to `canvas` (height, width); boxes
    on it divided by the scale per axis are in the image's pixels.

    Args:
        image: uint8 `[h, w, 3]` RGB.
        resize: `{"rule": "long_side", "size": S}` or `{"rule": "short_side", "min_side",
            "max_side"}`, and `"rounding"`: `"round"` (the package's rules, the default) or
            `"floor"` (torchvision's: floor(side * scale) in float64, boxes scaled per axis),
            as `model.json` gives it.
        canvas: (height, width) of the model input.
        pad_value: the padding, 0 or an RGB triple (`model.json`'s padding value).
    """
    h, w = image.shape[:2]
    if resize["rule"] == "long_side":
        scale = np.float32(resize["size"]) / np.float32(max(h, w))
    else:
        scale = min(np.float32(resize["min_side"]) / np.float32(min(h, w)),
                    np.float32(resize["max_side"]) / np.float32(max(h, w)))
    if resize.get("rounding", "round") == "floor":
        size = [max(int(np.floor(float(side) * float(scale))), 1) for side in (h, w)]
        box_scale = np.float32(size) / np.float32([h, w])
    else:
        size = [max(int(np.round(np.float32(side) * scale)), 1) for side in (h, w)]
        box_scale = np.full(2, scale, np.float32)
    if size[0] > canvas[0] or size[1] > canvas[1]:
        raise ValueError(f"the resized image {size} does not fit the model input {canvas}")
    resized = np.clip(np.round(resize_bilinear(image, *size)), 0, 255).astype(np.uint8)
    padded = np.empty((canvas[0], canvas[1], 3), np.uint8)
    padded[...] = pad_value
    padded[:size[0], :size[1]] = resized
    return padded, box_scale


def _rgb(image):
    """An HxWx3 uint8 RGB array from a path, a PIL image or an array."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"`image` must be an HxWx3 uint8 RGB array, a PIL image or a path, "
                         f"got {image.dtype} {image.shape}")
    return image


class Detector:
    """An exported LiteRT (`.tflite`) or ONNX (`.onnx`) detector and its `model.json`.

    Args:
        path: the export folder (one model file in it) or the model file.
        num_threads: CPU threads for the runtime (None: its default).
        score_threshold: keep detections with at least this score (None: all the model
            returns).
    """

    def __init__(self, path, num_threads=None, score_threshold=None):
        path = os.fspath(path)
        self.info = read_model_json(path)
        if os.path.isdir(path):
            path = os.path.join(path, self.info["file"])
        self.format = FORMATS.get(os.path.splitext(path)[1].lower())
        if self.format is None:
            raise ValueError(f"{path}: expected a .tflite or .onnx file")
        self.class_names = list(self.info["class_names"])
        self.score_threshold = score_threshold
        self._run = self._litert(path, num_threads) if self.format == "litert" else \
            self._onnx(path, num_threads)

    def _litert(self, path, num_threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the older package name
            from tflite_runtime.interpreter import Interpreter
        runner = Interpreter(model_path=path, num_threads=num_threads).get_signature_runner(
            self.info["signature"])
        return lambda images: runner(images=images[None])

    def _onnx(self, path, num_threads):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        session = onnxruntime.InferenceSession(path, options,
                                               providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return lambda images: dict(zip(names, session.run(names, {"images": images[None]})))

    def __call__(self, image):
        """Detections on one image, in its own pixels.

        Returns:
            A dict of numpy arrays over the N kept detections, best first: `boxes` float32
            `[N, 4]` xyxy clipped to the image, `scores` float32 `[N]`, `classes` int32
            `[N]` and `class_names` (a list of N str).
        """
        image = _rgb(image)
        model_input = self.info["input"]
        if model_input["resized_inside"]:
            outputs, scale = self._run(image), np.ones(2, np.float32)
        else:
            padded, scale = letterbox(image, self.info["resize"], model_input["shape"][1:3],
                                      self.info["padding"]["value"])
            outputs = self._run(padded)
        count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(outputs["boxes"], np.float32)[0, :count] / np.tile(scale[::-1], 2)
        height, width = image.shape[:2]
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        scores = np.asarray(outputs["scores"], np.float32)[0, :count]
        classes = np.asarray(outputs["classes"]).astype(np.int32)[0, :count]
        if self.score_threshold is not None:
            keep = scores >= self.score_threshold
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        return {"boxes": boxes, "scores": scores, "classes": classes,
                "class_names": [self.class_names[c] for c in classes]}
