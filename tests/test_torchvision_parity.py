"""`RetinaNet.from_torchvision` gives torchvision's detector, stage by stage, without torch.

tests/reference/torchvision_reference.npz holds torchvision's own outputs (written by
tests/reference/make_torchvision_reference.py, with torch, from the seeded numpy weights of
tests/reference/torchvision_weights.py). Here the same weights go through a `.npz` state
dict into `RetinaNet.from_torchvision`, and the package's model sees the canvas torchvision's
transform made (the image at scale 1, padded to a multiple of 32 with the mean colour, which
is zero once normalised). Before P6 and P7 padded as torchvision does, P6 and P7 and every
detection on them failed this test.
"""

import os
import pathlib
import sys

import numpy as np
import pytest

REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "reference"
sys.path.insert(0, str(REFERENCE_DIR))
from torchvision_weights import (IMAGE_SIZES, NUM_CLASSES, RESIZE, make_image,  # noqa: E402
                                 make_state_dict)

REFERENCE = np.load(REFERENCE_DIR / "torchvision_reference.npz")
IMAGENET_MEAN_255 = np.array([0.485, 0.456, 0.406]) * 255

pytestmark = pytest.mark.slow  # two ResNet50 RetinaNets built and run at 600 x 800


@pytest.fixture(scope="module", params=["v1", "v2"])
def version_and_model(request, tmp_path_factory):
    import retinanet

    path = tmp_path_factory.mktemp("torchvision") / f"retinanet_{request.param}.npz"
    np.savez(path, **make_state_dict(request.param, NUM_CLASSES))
    return request.param, retinanet.RetinaNet.from_torchvision(path)


def _canvas(index):
    height, width = IMAGE_SIZES[index]
    canvas = np.empty((*REFERENCE[f"v1_image{index}_canvas"], 3), np.float32)
    canvas[...] = IMAGENET_MEAN_255
    canvas[:height, :width] = make_image(height, width, seed=index)
    return canvas[None]


@pytest.mark.parametrize("index", range(len(IMAGE_SIZES)))
def test_features_and_head_outputs_are_torchvisions(version_and_model, index):
    version, model = version_and_model
    key = f"{version}_image{index}"
    canvas = _canvas(index)
    features = model.fpn(model.backbone(canvas))
    for level, feature in zip(range(3, 8), features):
        channel, row, column = REFERENCE[f"{key}_p{level}_positions"].T
        ours = np.asarray(feature)[0, row, column, channel]
        theirs = REFERENCE[f"{key}_p{level}_values"]
        error = np.abs(ours - theirs).max() / REFERENCE[f"{key}_p{level}_scale"]
        assert error < 1e-4, f"P{level}: {error:.2e} of the level's mean magnitude"
    outputs = model(canvas)
    for ours_name, theirs_name in (("cls_logits", "cls_logits"),
                                   ("box_deltas", "bbox_regression")):
        anchor, channel = REFERENCE[f"{key}_{theirs_name}_positions"].T
        ours = np.asarray(outputs[ours_name])[0, anchor, channel]
        theirs = REFERENCE[f"{key}_{theirs_name}_values"]
        np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max() + 1e-5)


@pytest.mark.parametrize("index", range(len(IMAGE_SIZES)))
def test_detections_are_torchvisions_one_to_one(version_and_model, index):
    version, model = version_and_model
    key = f"{version}_image{index}"
    canvas = _canvas(index)
    outputs = model(canvas)
    detections = model.postprocessor(outputs["cls_logits"], outputs["box_deltas"],
                                     anchor_image_size=canvas.shape[1:3],
                                     clip_size=IMAGE_SIZES[index])  # torchvision's clip
    count = int(detections["num_detections"][0])
    boxes = np.asarray(detections["boxes"])[0, :count]
    scores = np.asarray(detections["scores"])[0, :count]
    classes = np.asarray(detections["classes"])[0, :count]
    their_boxes = REFERENCE[f"{key}_boxes"]
    assert count == len(their_boxes) == 300
    unmatched = set(range(count))
    for box, score, label in zip(their_boxes, REFERENCE[f"{key}_scores"],
                                 REFERENCE[f"{key}_labels"]):
        match = [j for j in unmatched if classes[j] == label and abs(scores[j] - score) < 1e-4
                 and np.abs(boxes[j] - box).max() < 0.05]
        assert match, f"torchvision's {label} {score:.5f} {box} has no counterpart"
        unmatched.remove(match[0])


def _theirs(key):
    return {"boxes": REFERENCE[f"{key}_boxes"], "scores": REFERENCE[f"{key}_scores"],
            "classes": REFERENCE[f"{key}_labels"]}


def _one_to_one(ours, theirs):
    """Each of torchvision's detections has its own among ours (same class, box within
    0.05 px, score within 1e-4), and there are as many."""
    assert len(ours["scores"]) == len(theirs["scores"]) == 300
    unmatched = set(range(len(ours["scores"])))
    for box, score, label in zip(theirs["boxes"], theirs["scores"], theirs["classes"]):
        match = [j for j in unmatched if ours["classes"][j] == label
                 and abs(ours["scores"][j] - score) < 1e-4
                 and np.abs(ours["boxes"][j] - box).max() < 0.05]
        assert match, f"torchvision's {label} {score:.5f} {box} has no counterpart"
        unmatched.remove(match[0])


def test_torchvisions_whole_transform_in_the_pipeline_and_the_serving_graph(
        version_and_model):
    """Resized by a float scale, floored, boxes per axis, the batch padded with the mean
    colour, boxes clipped to each resized image, mapped back: torchvision's detections in
    the images' pixels, from an evaluation batch of both images and from the serving graph
    (each image alone)."""
    import tensorflow as tf

    from retinanet.data import pipeline
    from retinanet.evaluation import split_batch
    from retinanet.evaluation.runner import detect_batch
    from retinanet.export.serving import detections

    version, model = version_and_model
    if version != "v1":
        pytest.skip("the transform is the same for v2")
    assert model.preprocessing == "torchvision"
    images = [make_image(height, width, seed=index)
              for index, (height, width) in enumerate(IMAGE_SIZES)]
    examples = tf.data.Dataset.from_generator(lambda: ({
        "image": image, "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32),
        "image_id": str(index), "is_crowd": np.zeros(0, bool), "difficult": np.zeros(0, bool),
    } for index, image in enumerate(images)), output_signature={
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "classes": tf.TensorSpec([None], tf.int32), "image_id": tf.TensorSpec([], tf.string),
        "is_crowd": tf.TensorSpec([None], tf.bool), "difficult": tf.TensorSpec([None], tf.bool)})
    ((batch, targets),) = list(pipeline(examples, "eval", batch_size=2, image_size=RESIZE,
                                        size_multiple=32, preprocessing="torchvision"))
    np.testing.assert_array_equal(batch.shape[1:3], REFERENCE["resized_canvas"])
    np.testing.assert_array_equal(targets["image_size"], REFERENCE["resized_sizes"])
    found = split_batch(targets, detect_batch(model, batch, targets))
    for index, image in enumerate(images):
        ours = {"boxes": found[index]["det_boxes"], "scores": found[index]["det_scores"],
                "classes": found[index]["det_classes"]}
        _one_to_one(ours, _theirs(f"resized_image{index}"))
        served = detections(model, tf.constant(image[None]), RESIZE)
        _one_to_one({key: np.asarray(value)[0] for key, value in served.items()},
                    _theirs(f"alone_image{index}"))


def test_a_missing_or_foreign_file_is_one_clear_error(tmp_path):
    import retinanet

    with pytest.raises(ValueError, match=r"nowhere\.npz: file not found"):
        retinanet.RetinaNet.from_torchvision(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "other.npz", weight=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not a torchvision RetinaNet"):
        retinanet.RetinaNet.from_torchvision(tmp_path / "other.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable \.safetensors"):
        retinanet.RetinaNet.from_torchvision(tmp_path / "bad.safetensors")


def test_predict_runs_a_torchvision_file_offline(tmp_path):
    """`retinanet predict --checkpoint=FILE.npz` with no workdir; a missing file is one line."""
    import json
    import subprocess

    from PIL import Image

    path = tmp_path / "retinanet_v1.npz"
    np.savez(path, **make_state_dict("v1", NUM_CLASSES))
    (tmp_path / "images").mkdir()
    Image.fromarray(make_image(333, 517, seed=0)).save(tmp_path / "images" / "a.png")
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def predict(checkpoint):
        return subprocess.run(
            [sys.executable, "-m", "retinanet", "predict", f"--checkpoint={checkpoint}",
             f"--images={tmp_path / 'images'}", f"--output={tmp_path / 'out'}"],
            capture_output=True, text=True, timeout=600, env=environment,
            cwd=pathlib.Path(__file__).resolve().parents[1])

    result = predict(path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert found and {d["image_id"] for d in found} == {"a"}
    missing = predict(tmp_path / "nowhere.safetensors")
    assert missing.returncode == 2
    lines = [line for line in missing.stderr.splitlines() if line.startswith("retinanet")]
    assert lines == [f"retinanet predict: error: {tmp_path / 'nowhere.safetensors'}: file not "
                     "found"]


def _matched(a, b, count, top=200):
    """Each of `a`'s best `top` detections has its own counterpart among `b`'s `count` (same
    class, box within 0.05 px, score within 1e-4). Near the 300th the scores of these random
    weights differ in the 7th digit: there a runtime's rounding may swap which one is kept."""
    free = set(range(count))
    for box, score, label in zip(a["boxes"][0, :top], a["scores"][0, :top],
                                 a["classes"][0, :top]):
        match = [j for j in free if b["classes"][0, j] == label
                 and abs(b["scores"][0, j] - score) < 1e-4
                 and np.abs(b["boxes"][0, j] - box).max() < 0.05]
        assert match, f"{label} {score:.5f} {box} has no counterpart"
        free.remove(match[0])


def test_keras_file_and_exports_keep_torchvisions_detections(version_and_model, tmp_path):
    """The torchvision rules (symmetric P6/P7, strides side // grid, 300 detections, its
    transform) survive a `.keras` round trip and every export."""
    import keras

    from retinanet import export
    from retinanet.export.runtime import load_exported

    version, model = version_and_model
    if version != "v1":
        pytest.skip("one version is enough for the round trips (v2 differs in its heads only)")
    # A photo-like image over the whole canvas: in a flat area neighbouring anchors tie.
    canvas = make_image(352, 544, seed=5)[None]
    expected = model.predict_on_batch(canvas)
    count = int(expected["num_detections"][0])
    assert count == 300

    model.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras")
    assert again.fpn.extra_padding == "symmetric" and again.anchor_generator.stride_multiple == 32
    _matched(expected, again.predict_on_batch(canvas), count)
    path = export.export(model, tmp_path / "litert", format="litert",
                         input_size=canvas.shape[1:3])
    found = load_exported(path).predict_on_batch(canvas)
    assert int(found["num_detections"][0]) == count
    _matched(expected, found, count)
    # SavedModel and ONNX resize inside, by torchvision's rules: torchvision's detections.
    image = make_image(*IMAGE_SIZES[0], seed=0)[None]
    for format in ("saved_model", "onnx"):
        path = export.export(model, tmp_path / format, format=format, resize=RESIZE)
        found = load_exported(path).predict_on_batch(image)
        _matched({key: value[None] for key, value in _theirs("alone_image0").items()}, found,
                 int(found["num_detections"][0]))
