"""Deployment without the package: `model.json` beside every export, and `retinanet.deploy`
running LiteRT and ONNX exports with numpy, Pillow and the runtime alone (no TensorFlow)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retinanet import deploy

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]

# Runs retinanet.deploy where importing TensorFlow or Keras fails, as on a phone.
NO_TENSORFLOW = """
import json, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tensorboard"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocked())
from retinanet.deploy import Detector
found = Detector(sys.argv[1])(sys.argv[2])
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
print(json.dumps({"boxes": found["boxes"].tolist(), "scores": found["scores"].tolist(),
                  "classes": found["classes"].tolist(), "class_names": found["class_names"]}))
"""


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 60), width=st.integers(1, 60), out_height=st.integers(1, 80),
       out_width=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_resize_bilinear_is_tf_image_resize(height, width, out_height, out_width, seed):
    import tensorflow as tf

    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)
    expected = tf.image.resize(image, (out_height, out_width), method="bilinear").numpy()
    np.testing.assert_allclose(deploy.resize_bilinear(image, out_height, out_width), expected,
                               atol=1e-3)


@pytest.mark.parametrize("image_size", [128, (96, 160)])
def test_letterbox_is_the_pipelines_resize_and_pad(image_size):
    import tensorflow as tf

    from retinanet.preprocess import resize_and_pad

    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3)).astype(np.uint8)
    for rules, rounding in (("retinanet", "round"), ("torchvision", "floor")):
        expected, _, scale = resize_and_pad(tf.constant(image[None]), image_size, 32, rules)
        rule = {"rule": "long_side", "size": image_size} if isinstance(image_size, int) else \
            {"rule": "short_side", "min_side": image_size[0], "max_side": image_size[1]}
        pad_value = [124, 116, 104] if rules == "torchvision" else 0
        canvas, deployed_scale = deploy.letterbox(image, {**rule, "rounding": rounding},
                                                  expected.shape[1:3], pad_value)
        np.testing.assert_allclose(deployed_scale, scale, rtol=1e-7)
        difference = np.abs(canvas.astype(int) - np.round(expected[0].numpy()).astype(int))
        assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3  # rounding at .5


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_retinanet_module):
    """A tiny model (every score above the threshold kept) exported as LiteRT and ONNX."""
    from retinanet import export

    model = tiny_retinanet_module
    root = tmp_path_factory.mktemp("export")
    export.export(model, root / "litert", format="litert", input_size=(128, 128),
                  image_size=128)
    export.export(model, root / "onnx", format="onnx", resize=128)
    image = np.random.default_rng(1).integers(0, 256, (150, 200, 3)).astype(np.uint8)
    from PIL import Image

    Image.fromarray(image).save(root / "photo.png")
    return root, image


@pytest.fixture(scope="module")
def tiny_retinanet_module():
    import keras

    import retinanet
    from conftest import make_tiny_backbone

    keras.utils.set_random_seed(0)  # the same weights each run: the comparisons are exact
    model = retinanet.RetinaNet(3, backbone=make_tiny_backbone(), fpn_filters=16, head_convs=1,
                                head_filters=16, class_names=CLASSES)
    model.postprocessor.score_threshold = 0.0  # random weights: keep detections to compare
    model.postprocessor.max_detections = 20
    return model


def test_model_json_describes_the_litert_model(exported):
    root, _ = exported
    info = json.loads((root / "litert" / "model.json").read_text())
    assert info["file"] == "model.tflite" and info["class_names"] == CLASSES
    assert info["input"] == {"name": "images", "dtype": "uint8", "channels": "RGB, 0-255",
                             "shape": [1, 128, 128, 3], "resized_inside": False,
                             "size_multiple": 128}
    assert info["resize"]["rule"] == "long_side" and info["resize"]["size"] == 128
    assert info["padding"]["sides"] == "bottom and right" and info["padding"]["value"] == 0
    assert set(info["outputs"]) == {"boxes", "scores", "classes", "num_detections"}
    assert "canvas" in info["outputs"]["boxes"]["units"]
    assert sorted(info["classic_interpreter_output_order"]) == sorted(info["outputs"])
    from ai_edge_litert.interpreter import Interpreter

    # The classic API, as a user without the signature runner calls it.
    interpreter = Interpreter(model_path=str(root / "litert" / "model.tflite"))
    interpreter.allocate_tensors()
    (image_input,) = interpreter.get_input_details()
    interpreter.set_tensor(image_input["index"], np.zeros((1, 128, 128, 3), np.uint8))
    interpreter.invoke()
    outputs = {name: interpreter.get_tensor(detail["index"]) for name, detail in
               zip(info["classic_interpreter_output_order"], interpreter.get_output_details())}
    count = int(outputs["num_detections"][0])
    assert outputs["num_detections"].shape == (1,) and outputs["boxes"].shape == (1, count, 4)
    assert outputs["classes"].dtype == np.int32 and outputs["scores"].dtype == np.float32
    assert np.all(np.diff(outputs["scores"][0]) <= 0)  # best first: these are the scores
    onnx_info = json.loads((root / "onnx" / "model.json").read_text())
    assert onnx_info["input"]["resized_inside"] and onnx_info["input"]["shape"][0] is None
    assert onnx_info["outputs"]["boxes"]["units"] == "pixels of the input image"


def _deployed(model_dir, image_path):
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(model_dir),
                             str(image_path)], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    return {key: np.asarray(value) for key, value in found.items()}


@pytest.mark.slow
def test_litert_without_tensorflow_gives_the_packages_detections(exported):
    import tensorflow as tf

    from retinanet.export.runtime import load_exported
    from retinanet.preprocess import resize_and_pad

    root, image = exported
    found = _deployed(root / "litert", root / "photo.png")
    canvas, _, scale = resize_and_pad(tf.constant(image[None]), 128, 128)
    expected = load_exported(root / "litert" / "model.tflite").predict_on_batch(
        np.round(canvas.numpy()))
    count = int(expected["num_detections"][0])
    assert count == len(found["scores"]) > 0
    boxes = np.clip(expected["boxes"][0, :count] / float(scale[0]), 0, [200, 150, 200, 150])
    # Inputs equal but for pixels whose resized value sits at .5 (see the letterbox test).
    np.testing.assert_allclose(found["boxes"], boxes, atol=0.05)
    np.testing.assert_allclose(found["scores"], expected["scores"][0, :count], atol=1e-3)
    assert found["class_names"].tolist() == [CLASSES[c] for c in found["classes"]]
    assert found["boxes"].max() <= 200 and found["boxes"].min() >= 0  # clipped to the photo


@pytest.mark.slow
def test_onnx_without_tensorflow_gives_the_packages_detections(exported):
    from retinanet.export.runtime import load_exported

    root, image = exported
    found = _deployed(root / "onnx", root / "photo.png")
    expected = load_exported(root / "onnx" / "model.onnx").predict_on_batch(image[None])
    count = int(expected["num_detections"][0])
    assert count == len(found["scores"]) > 0
    np.testing.assert_allclose(found["boxes"], np.clip(expected["boxes"][0, :count], 0,
                                                       [200, 150, 200, 150]), atol=1e-4)
    np.testing.assert_allclose(found["scores"], expected["scores"][0, :count], atol=1e-6)


@pytest.mark.slow
def test_an_onnx_export_with_resize_loads_and_agrees_with_the_keras_model(
        exported, tiny_retinanet_module):
    """tf2onnx once turned the uint8 resize into a graph onnxruntime refused to load."""
    import tensorflow as tf

    from retinanet.export.runtime import load_exported
    from retinanet.preprocess import resize_and_pad

    root, image = exported
    onnx = load_exported(root / "onnx" / "model.onnx").predict_on_batch(image[None])
    canvas, size, scale = resize_and_pad(tf.constant(image[None]), 128, 128)
    keras_detections = tiny_retinanet_module.predict_on_batch(
        {"images": canvas, "image_sizes": size[None]})
    count = int(keras_detections["num_detections"][0])
    assert int(onnx["num_detections"][0]) == count > 0
    boxes = np.clip(keras_detections["boxes"][0, :count] / float(scale[0]), 0,
                    [200, 150, 200, 150])
    # Random weights give near-tied scores, whose order may differ and whose last places a
    # runtime's rounding may give to another box: each of ONNX's best ten has its own match.
    unmatched = list(range(count))
    for box, score, label in zip(onnx["boxes"][0, :10], onnx["scores"][0, :10],
                                 onnx["classes"][0, :10]):
        match = next(j for j in unmatched
                     if keras_detections["classes"][0, j] == label
                     and abs(keras_detections["scores"][0, j] - score) < 1e-5
                     and np.abs(boxes[j] - box).max() < 1e-3)
        unmatched.remove(match)


def test_a_wrong_image_is_one_clear_error(exported):
    root, _ = exported
    detector = deploy.Detector(root / "litert")
    with pytest.raises(ValueError, match=r"HxWx3 uint8 RGB array"):
        detector(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"model\.json: not found"):
        deploy.Detector(root)
