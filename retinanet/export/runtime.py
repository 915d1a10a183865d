"""Running an exported model (SavedModel, `.tflite`, `.onnx`) like a Keras model.

`load_exported(path)` gives an object with `predict_on_batch(images) -> detections`, the
contract `retinanet.evaluation.evaluate` uses, so an exported form is scored over the same
evaluation batches as the `.keras` file it came from.

The evaluation pipeline gives float32 0-255 images padded (bottom and right) to a canvas;
every exported form takes uint8, so the images are rounded first (they are integers already
where the pipeline did not resize). Boxes come back in the canvas's pixels, as the Keras
model's do:

- SavedModel and ONNX take any size and batch. One exported with `resize` (the CLI's
  export does) applies its resize rule to the canvas and maps boxes back to it; that is the
  identity when the canvas's longer side is the rule's size (an `image_size` that is a
  multiple of 128).
- LiteRT has one fixed input `[1, height, width, 3]`: each image runs on its own, padded
  with 0 to that size (the canvas of the CLI's export holds any canvas of the config).
"""

import os
import warnings

import numpy as np

from retinanet.export.serving import OUTPUT_KEYS, SERVING_SIGNATURE

RUNTIMES = ("saved_model", "litert", "onnx")


def runtime_of(path):
    """`"saved_model"` (a directory with `saved_model.pb`), `"litert"` (`.tflite`),
    `"onnx"` (`.onnx`), or None for anything else (e.g. a `.keras` file)."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    extension = os.path.splitext(path)[1].lower()
    return {".tflite": "litert", ".onnx": "onnx"}.get(extension)


def _uint8(images):
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(images.astype(np.float32)), 0, 255).astype(np.uint8)


class SavedModelRuntime:
    """A SavedModel's `serving_default` signature (TensorFlow).

    Its graph is checked against `retinanet.export.trust.ALLOWED_OPS` before anything in it
    runs, unless `trust` is True.
    """

    runtime = "saved_model"

    def __init__(self, path, trust=False):
        import tensorflow as tf

        from retinanet.export.trust import check_saved_model

        if not trust:
            check_saved_model(path)
        self._tf = tf
        self._serve = tf.saved_model.load(os.fspath(path)).signatures[SERVING_SIGNATURE]

    def predict_on_batch(self, images):
        """Detections (numpy, `OUTPUT_KEYS`) for images `[B, H, W, 3]`, 0-255."""
        outputs = self._serve(images=self._tf.constant(_uint8(images)))
        return {key: outputs[key].numpy() for key in OUTPUT_KEYS}


class LiteRTRuntime:
    """A `.tflite` file in the LiteRT interpreter (`ai_edge_litert`, else `tf.lite`), with
    its default XNNPACK delegate; batch 1 and a fixed input size."""

    runtime = "litert"

    def __init__(self, path, num_threads=None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
        self._runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
        (details,) = interpreter.get_input_details()
        self.input_size = tuple(int(side) for side in details["shape"][1:3])

    def predict_on_batch(self, images):
        """Detections (numpy, `OUTPUT_KEYS`) for images `[B, H, W, 3]`, 0-255, with H and W
        at most the model's input size; one interpreter call per image."""
        images = _uint8(images)
        height, width = self.input_size
        if images.ndim != 4 or images.shape[1] > height or images.shape[2] > width:
            raise ValueError(
                f"`images` must be [batch, height, width, 3] within the LiteRT model's input "
                f"size {self.input_size}, got shape {images.shape}.")
        padding = [[0, 0], [0, height - images.shape[1]], [0, width - images.shape[2]], [0, 0]]
        outputs = [self._runner(images=image[None]) for image in np.pad(images, padding)]
        return {key: np.concatenate([output[key] for output in outputs]) for key in OUTPUT_KEYS}


class ONNXRuntime:
    """An `.onnx` file in onnxruntime's CPU execution provider."""

    runtime = "onnx"

    def __init__(self, path, num_threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self._session = onnxruntime.InferenceSession(
            os.fspath(path), options, providers=["CPUExecutionProvider"])
        self._names = [output.name for output in self._session.get_outputs()]

    def predict_on_batch(self, images):
        """Detections (numpy, `OUTPUT_KEYS`) for images `[B, H, W, 3]`, 0-255."""
        outputs = self._session.run(None, {"images": _uint8(images)})
        return dict(zip(self._names, outputs))


def load_exported(path, num_threads=None, trust=False):
    """The exported model at `path`, ready for `predict_on_batch`.

    Args:
        path: a SavedModel directory, a `.tflite` or an `.onnx` file written by
            `retinanet.export`.
        num_threads: LiteRT and ONNX Runtime: CPU threads (None: the runtime's default).
        trust: run a SavedModel whose graph holds ops outside the package's allow-list
            (`retinanet.export.trust`); exported models are programs, load only files you
            trust.

    Returns:
        A `SavedModelRuntime`, `LiteRTRuntime` or `ONNXRuntime`.

    Raises:
        ValueError: `path` is none of these.
    """
    runtime = runtime_of(path)
    if runtime is None:
        raise ValueError(f"`path` must be a SavedModel directory, a .tflite or an .onnx file, "
                         f"got {os.fspath(path)!r}.")
    if runtime == "saved_model":
        return SavedModelRuntime(path, trust=trust)
    if runtime == "litert":
        return LiteRTRuntime(path, num_threads)
    return ONNXRuntime(path, num_threads)
