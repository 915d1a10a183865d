"""retinanet.export: each exported form gives the detections `model.predict` gives.

One small model serves every test. Its heads are re-drawn so that scores spread out (12 and 16
detections above the 0.05 threshold on the two test images, three classes, scores at least
2e-4 apart): an untrained model's scores all sit at ~0.01, below the threshold, and would
compare nothing.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_squares, make_tiny_backbone

import retinanet
from retinanet import export

# Not a multiple of 128, so the model's own padding is exercised. (Not much padding either:
# a wide zero border gives rows of tied detections, which compare nothing.)
HEIGHT, WIDTH = 112, 128

# Agreement with model.predict (the bar) for SavedModel, ONNX and float32 LiteRT.
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 1e-3
# Quantised LiteRT, compared on the top QUANTISED_TOP detections per image (the count may
# differ: scores near the 0.05 threshold cross it). Measured here: float16 0.03 px and
# 1.2e-4, so it keeps the bar above; dynamic range (int8 weights, activations quantised on
# the fly) 8 px and 0.03, so it gets twice that as its documented tolerance.
QUANTISED_TOP = 5
QUANTISED_TOLERANCES = {
    "float16": (BOX_TOLERANCE_PX, SCORE_TOLERANCE),
    "dynamic_range": (16.0, 0.06),
}


def _spread_model():
    """The tiny RetinaNet with head weights drawn at He scale (x12 for class logits)."""
    keras.utils.set_random_seed(0)
    model = retinanet.RetinaNet(
        3, backbone=make_tiny_backbone(), fpn_filters=32, head_filters=32, head_convs=2
    )
    rng = np.random.default_rng(0)
    for head, bias, gain in ((model.classification_head, -4.3, 12.0), (model.box_head, 0.0, 1.0)):
        for conv in head.convs + [head.output_conv]:
            fan_in = np.prod(conv.kernel.shape[:-1])
            scale = np.sqrt(2.0 / fan_in) * (gain if conv is head.output_conv else 1.0)
            conv.kernel.assign(rng.normal(0.0, scale, conv.kernel.shape).astype("float32"))
        head.output_conv.bias.assign(np.full(head.output_conv.bias.shape, bias, "float32"))
    return model


@pytest.fixture(scope="module")
def model():
    return _spread_model()


@pytest.fixture(scope="module")
def images():
    """uint8 [2, HEIGHT, WIDTH, 3]."""
    squares, _, _ = make_squares(num_images=2, size=max(HEIGHT, WIDTH), seed=5)
    return squares[:, :HEIGHT, :WIDTH].astype("uint8")


@pytest.fixture(scope="module")
def reference(model, images):
    detections = model.predict(images.astype("float32"), verbose=0)
    assert detections["num_detections"].min() >= 5, "the comparison needs detections"
    assert len(np.unique(detections["classes"][detections["classes"] >= 0])) > 1
    return detections


@pytest.fixture(scope="module")
def saved_model_dir(model, tmp_path_factory):
    return export.export_saved_model(model, tmp_path_factory.mktemp("export") / "saved_model")


@pytest.fixture(scope="module")
def loaded(saved_model_dir):
    return tf.saved_model.load(saved_model_dir)


def _numpy(outputs):
    return {key: np.asarray(value) for key, value in outputs.items()}


def assert_same_detections(actual, expected, box_tolerance=BOX_TOLERANCE_PX,
                           score_tolerance=SCORE_TOLERANCE, top=None):
    """Each of `expected`'s (top) detections has a counterpart in `actual`.

    A counterpart has the same class, every box coordinate within `box_tolerance` pixels and
    the score within `score_tolerance`; each is used once. Matching rather than comparing
    rows keeps two detections whose scores differ by less than the tolerance from failing on
    their order. With `top=None` the counts must be equal; returns the largest differences.
    """
    worst_box, worst_score = 0.0, 0.0
    for image in range(len(expected["num_detections"])):
        count = int(expected["num_detections"][image])
        actual_count = int(actual["num_detections"][image])
        if top is None:
            assert actual_count == count, f"image {image}: {actual_count} != {count} detections"
        boxes = actual["boxes"][image, :actual_count]
        scores = actual["scores"][image, :actual_count]
        classes = actual["classes"][image, :actual_count]
        unused = np.ones(actual_count, bool)
        for row in range(count if top is None else min(top, count)):
            box_error = np.abs(boxes - expected["boxes"][image, row]).max(axis=1)
            score_error = np.abs(scores - expected["scores"][image, row])
            candidates = np.flatnonzero(
                unused & (classes == expected["classes"][image, row])
                & (box_error <= box_tolerance) & (score_error <= score_tolerance)
            )
            assert candidates.size, (
                f"image {image}: no match for detection {row} (class "
                f"{expected['classes'][image, row]}, score {expected['scores'][image, row]:.5f}, "
                f"box {expected['boxes'][image, row]})"
            )
            match = candidates[np.argmin(score_error[candidates])]
            unused[match] = False
            worst_box = max(worst_box, float(box_error[match]))
            worst_score = max(worst_score, float(score_error[match]))
    return worst_box, worst_score


def _assert_padding(detections):
    for image, count in enumerate(detections["num_detections"]):
        assert np.all(detections["boxes"][image, count:] == 0)
        assert np.all(detections["scores"][image, count:] == 0)
        assert np.all(detections["classes"][image, count:] == -1)


# ----------------------------------------------------------------------------- SavedModel


def test_saved_model_signatures_are_typed_for_tf_serving(loaded):
    default = loaded.signatures[export.SERVING_SIGNATURE]
    args, kwargs = default.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["images"] and kwargs["images"].dtype == tf.uint8
    outputs = default.structured_outputs
    assert set(outputs) == set(export.OUTPUT_KEYS)
    expected = {"boxes": (tf.float32, [None, 100, 4]), "scores": (tf.float32, [None, 100]),
                "classes": (tf.int32, [None, 100]), "num_detections": (tf.int32, [None])}
    for key, (dtype, shape) in expected.items():
        assert outputs[key].dtype == dtype and outputs[key].shape.as_list() == shape, key

    _, bytes_kwargs = loaded.signatures[export.BYTES_SIGNATURE].structured_input_signature
    assert list(bytes_kwargs) == ["image_bytes"] and bytes_kwargs["image_bytes"].dtype == tf.string


def test_saved_model_agrees_with_predict(loaded, images, reference):
    detections = _numpy(loaded.signatures[export.SERVING_SIGNATURE](images=tf.constant(images)))
    assert detections["boxes"].dtype == np.float32 and detections["classes"].dtype == np.int32
    assert_same_detections(detections, reference)
    _assert_padding(detections)


def test_saved_model_through_a_tf1_session_as_tf_serving_runs_it(saved_model_dir, images,
                                                                 reference):
    # TF Serving reads the SignatureDef and runs a session on its tensor names; unlike the TF2
    # loader it checks no shapes, so the in-graph checks must catch a wrong rank.
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model_dir)
        signature = meta_graph.signature_def["serving_default"]
        assert signature.method_name == "tensorflow/serving/predict"
        assert signature.inputs["images"].dtype == tf.uint8.as_datatype_enum
        assert {key: value.dtype for key, value in signature.outputs.items()} == {
            "boxes": tf.float32.as_datatype_enum, "scores": tf.float32.as_datatype_enum,
            "classes": tf.int32.as_datatype_enum, "num_detections": tf.int32.as_datatype_enum,
        }
        feed = graph.get_tensor_by_name(signature.inputs["images"].name)
        fetches = {key: graph.get_tensor_by_name(value.name)
                   for key, value in signature.outputs.items()}
        assert_same_detections(session.run(fetches, {feed: images}), reference)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"`images` must be .*rank 4"):
            session.run(fetches, {feed: images[0]})


@pytest.mark.parametrize(
    "shape, message",
    [
        ((HEIGHT, WIDTH, 3), r"`images` must be uint8 \[batch, height, width, 3\] \(rank 4\); "
                             r"got shape\] \[112 128 3\]"),
        ((1, 1, HEIGHT, WIDTH, 3), r"rank 4\); got shape\] \[1 1 112 128 3\]"),
        ((), r"rank 4\); got shape\] \[\]"),
        ((1, HEIGHT, WIDTH, 4), r"`images` must have 3 \(RGB\) channels last; got shape\] "
                                r"\[1 112 128 4\]"),
        ((1, 0, WIDTH, 3), r"`images` must have batch, height and width >= 1 .*\[1 0 128 3\]"),
        ((1, HEIGHT, 0, 3), r"height and width >= 1 .*\[1 112 0 3\]"),
        ((0, HEIGHT, WIDTH, 3), r"height and width >= 1 .*\[0 112 128 3\]"),
    ],
)
def test_saved_model_rejects_bad_images_with_a_clear_message(loaded, shape, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[export.SERVING_SIGNATURE](images=tf.zeros(shape, tf.uint8))


def test_saved_model_rejects_a_wrong_dtype_before_running(loaded, images):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="expected to be a uint8 tensor but is a float tensor"):
        loaded.signatures[export.SERVING_SIGNATURE](images=tf.constant(images, tf.float32))


def test_bytes_signature_decodes_images_of_different_sizes(model, loaded, images):
    crop = images[1, :100, :90]
    encoded = tf.stack([tf.io.encode_png(images[0]), tf.io.encode_png(crop)])
    detections = _numpy(loaded.signatures[export.BYTES_SIGNATURE](image_bytes=encoded))
    for index, image in enumerate([images[0], crop]):
        expected = model.predict(image[None].astype("float32"), verbose=0)
        actual = {key: value[index : index + 1] for key, value in detections.items()}
        assert_same_detections(actual, expected)
    jpeg = loaded.signatures[export.BYTES_SIGNATURE](image_bytes=[tf.io.encode_jpeg(crop)])
    assert jpeg["boxes"].shape == (1, 100, 4)


@pytest.mark.parametrize(
    "value, message",
    [
        (tf.constant([b"not an image"]), "Unknown image file format"),
        (tf.constant([], tf.string), r"`image_bytes` must be a string vector .*got shape\] \[0\]"),
        (tf.constant("abc"), r"`image_bytes` must be a string vector .*got shape\] \[\]"),
    ],
)
def test_bytes_signature_rejects_bad_input(loaded, value, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[export.BYTES_SIGNATURE](image_bytes=value)


_LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("retinanet",)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            sys.exit(f"{name} is importable: the test proves nothing")

    import numpy as np
    import tensorflow as tf

    saved_model_dir, images_path, output_path = sys.argv[1:]
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    outputs = serve(images=tf.constant(np.load(images_path)))
    np.savez(output_path, **{key: value.numpy() for key, value in outputs.items()})
    loaded_modules = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if loaded_modules:
        sys.exit(f"modules of blocked packages were loaded: {loaded_modules}")
    """
)


@pytest.mark.slow
def test_saved_model_loads_where_retinanet_cannot_be_imported(
    saved_model_dir, images, reference, tmp_path
):
    np.save(tmp_path / "images.npy", images)
    # -I: no PYTHONPATH, no user site, no script or cwd on sys.path; the editable install's
    # path hook still is, so the child also blocks the import itself and checks it fails.
    # (Keras is not blocked: `import tensorflow` imports it for the tf.keras alias.)
    result = subprocess.run(
        [sys.executable, "-I", "-c", _LOAD_WITHOUT_PACKAGE, str(saved_model_dir),
         str(tmp_path / "images.npy"), str(tmp_path / "outputs.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_detections(dict(np.load(tmp_path / "outputs.npz")), reference)


@pytest.mark.slow
def test_resize_in_the_graph_maps_boxes_back_to_input_pixels(model, images, tmp_path):
    # Through `export`: longer side to 96, as the pipeline's image_size=96 (canvas 128x128).
    path = export.export(model, tmp_path / "resized", "saved_model", resize=96,
                         bytes_signature=False)
    assert path == str(tmp_path / "resized")
    serve = tf.saved_model.load(path).signatures[export.SERVING_SIGNATURE]
    detections = _numpy(serve(images=tf.constant(images)))

    scale = 96 / max(HEIGHT, WIDTH)
    size = (round(HEIGHT * scale), round(WIDTH * scale))
    resized = tf.image.resize(images.astype("float32"), size, method="bilinear")
    canvas = tf.pad(resized, [[0, 0], [0, 128 - size[0]], [0, 128 - size[1]], [0, 0]])
    # Clipped to the resized image before NMS, as evaluation batches are.
    expected = model.predict({"images": canvas, "image_sizes": np.array([size] * len(images))},
                             verbose=0)
    expected["boxes"] = np.clip(expected["boxes"] / scale, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
    expected["boxes"][expected["classes"] < 0] = 0
    assert expected["num_detections"].min() > 0
    assert_same_detections(detections, expected)
    assert detections["boxes"][..., 0::2].max() <= WIDTH
    assert detections["boxes"][..., 1::2].max() <= HEIGHT


def test_both_signatures_refuse_images_over_the_pixel_limit(model, images, tmp_path):
    limit = HEIGHT * WIDTH - 1
    path = export.export_saved_model(model, tmp_path / "capped", max_image_pixels=limit)
    loaded = tf.saved_model.load(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"at most {limit} pixels"):
        loaded.signatures[export.SERVING_SIGNATURE](images=tf.constant(images))
    encoded = tf.io.encode_png(tf.constant(images[0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixel"):
        loaded.signatures[export.BYTES_SIGNATURE](image_bytes=tf.stack([encoded]))
    # One pixel smaller passes.
    small = tf.constant(images[:, :HEIGHT - 1])
    assert loaded.signatures[export.SERVING_SIGNATURE](images=small)["boxes"].shape[0] == 2


# ----------------------------------------------------------------------------- LiteRT


def _litert_interpreter(path):
    """ai_edge_litert's interpreter where installed (it has no Flex delegate, so running at
    all shows the model is builtin ops only); else TF's deprecated tf.lite.Interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Interpreter(model_path=str(path))


def _run_litert(path, images):
    """Runs the .tflite one image at a time (its batch is 1); stacks the outputs."""
    runner = _litert_interpreter(path).get_signature_runner(export.SERVING_SIGNATURE)
    outputs = [runner(images=image[None]) for image in images]
    return {key: np.concatenate([output[key] for output in outputs]) for key in outputs[0]}


@pytest.fixture(scope="module")
def litert_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("litert") / "model.tflite"
    return export.export_litert(model, path, input_size=(HEIGHT, WIDTH))


def test_litert_float32_agrees_with_predict(litert_path, images, reference):
    interpreter = _litert_interpreter(litert_path)
    (signature,) = interpreter.get_signature_list().values()
    assert signature["inputs"] == ["images"]
    assert sorted(signature["outputs"]) == sorted(export.OUTPUT_KEYS)
    (input_details,) = interpreter.get_input_details()
    assert input_details["dtype"] == np.uint8
    assert list(input_details["shape"]) == [1, HEIGHT, WIDTH, 3]
    detections = _run_litert(litert_path, images)
    assert_same_detections(detections, reference)
    _assert_padding(detections)


def test_litert_rejects_the_wrong_input_size_and_dtype(litert_path, images):
    interpreter = _litert_interpreter(litert_path)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    with pytest.raises(ValueError, match="Dimension mismatch"):
        interpreter.set_tensor(index, images[:1, :64])
    with pytest.raises(ValueError, match="Got value of type FLOAT32 but expected type UINT8"):
        interpreter.set_tensor(index, images[:1].astype("float32"))


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["float16", "dynamic_range"])
def test_quantised_litert_agrees_within_its_tolerance(model, images, reference, litert_path,
                                                      tmp_path, quantization):
    path = export.export(model, tmp_path, "litert", input_size=(HEIGHT, WIDTH),
                         quantization=quantization)
    assert path == str(tmp_path / f"model_{quantization}.tflite")
    assert os.path.getsize(path) < 0.6 * os.path.getsize(litert_path)
    box_tolerance, score_tolerance = QUANTISED_TOLERANCES[quantization]
    assert_same_detections(_run_litert(path, images), reference, box_tolerance,
                           score_tolerance, top=QUANTISED_TOP)


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.slow
def test_onnx_agrees_with_predict(model, images, reference, tmp_path):
    pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export.export(model, tmp_path, "onnx")
    assert path == str(tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(uint8)"
    names = [output.name for output in session.get_outputs()]
    assert sorted(names) == sorted(export.OUTPUT_KEYS)
    detections = dict(zip(names, session.run(None, {"images": images})))
    assert detections["classes"].dtype == np.int32
    assert_same_detections(detections, reference)
    _assert_padding(detections)
    with pytest.raises(Exception, match="uint8"):
        session.run(None, {"images": images.astype("float32")})


@pytest.mark.slow
def test_a_model_with_test_time_flip_exports_it(images, tmp_path):
    """SavedModel and LiteRT (batch 1, no While loop) detect as the flipping model does."""
    model = _spread_model()
    model.test_time_flip = True
    reference = model.predict(images.astype("float32"), verbose=0)
    saved = tf.saved_model.load(export.export_saved_model(model, tmp_path / "saved_model"))
    served = _numpy(saved.signatures[export.SERVING_SIGNATURE](images=tf.constant(images)))
    assert_same_detections(served, reference)
    path = export.export_litert(model, tmp_path / "model.tflite", input_size=(HEIGHT, WIDTH))
    assert_same_detections(_run_litert(path, images), reference)


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(format="tflite"), "`format` must be one of"),
        (dict(format="saved_model", input_size=(64, 64)), "`input_size` applies to format='lit"),
        (dict(format="onnx", quantization="float16"), "`quantization` for ONNX must be one of"),
        (dict(format="saved_model", quantization="int8"), "`quantization` applies to format="),
        (dict(format="litert", resize=512), "`resize` does not apply to format='litert'"),
        (dict(format="litert"), "`input_size` .* is required"),
        (dict(format="litert", input_size=(64, 0)), "`input_size` must be"),
        (dict(format="litert", input_size=(64, 64), quantization="int4"), "`quantization` must"),
        (dict(format="litert", input_size=(64, 64), quantization="int8"),
         "quantization='int8' needs `representative_data`"),
        (dict(format="onnx", quantization="int8"), "quantization='int8' needs `representative"),
        (dict(format="litert", input_size=(64, 64), representative_data=np.zeros((1, 8, 8, 3))),
         "`representative_data` applies to quantization='int8' only"),
        (dict(format="saved_model", resize=16), "`resize` must be >= 32"),
        (dict(format="saved_model", resize=(800, 600)), "32 <= min_side <= max_side"),
        (dict(format="litert", input_size=(64, 64), bytes_signature=False), "`bytes_signature`"),
        (dict(format="saved_model", opset=13), "`opset` applies to format='onnx'"),
    ],
)
def test_export_rejects_bad_arguments(model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export.export(model, tmp_path, **kwargs)


def test_export_rejects_a_model_without_detect(tmp_path):
    with pytest.raises(ValueError, match="`model` must be a retinanet.RetinaNet"):
        export.export_saved_model(keras.Sequential([keras.layers.Dense(1)]), tmp_path)


def test_class_thresholds_drop_and_repack_detections(model, images, reference, tmp_path):
    thresholds = [0.0] * model.num_classes
    dropped_class = int(reference["classes"][0, 0])
    thresholds[dropped_class] = 1.0  # no score reaches it: that class disappears
    path = export.export(model, tmp_path / "thresholds", "saved_model",
                         class_score_thresholds=thresholds, bytes_signature=False)
    served = _numpy(tf.saved_model.load(path).signatures[export.SERVING_SIGNATURE](
        images=tf.constant(images)))
    for index in range(len(images)):
        count = int(reference["num_detections"][index])
        keep = reference["classes"][index, :count] != dropped_class
        kept = int(served["num_detections"][index])
        assert kept == int(keep.sum())
        np.testing.assert_allclose(served["scores"][index, :kept],
                                   reference["scores"][index, :count][keep], atol=1e-6)
        np.testing.assert_array_equal(served["classes"][index, :kept],
                                      reference["classes"][index, :count][keep])
        assert (served["classes"][index, kept:] == -1).all()
        assert (served["scores"][index, kept:] == 0).all()
    with pytest.raises(ValueError, match="class_score_thresholds"):
        export.export(model, tmp_path / "bad", "saved_model", class_score_thresholds=[0.5])
