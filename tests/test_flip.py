"""Horizontal-flip test-time augmentation (`retinanet.model.flip`, `RetinaNet(test_time_flip=)`)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from retinanet.model.flip import fuse_views, flip_images, mirror_boxes


def view(boxes, scores, classes, size=4):
    """A padded detection dict of one image from lists."""
    pad = size - len(boxes)
    return {"boxes": tf.constant([list(boxes) + [[0.0] * 4] * pad], tf.float32),
            "scores": tf.constant([list(scores) + [0.0] * pad], tf.float32),
            "classes": tf.constant([list(classes) + [-1] * pad], tf.int32)}


def test_flip_images_mirrors_each_image_within_its_width():
    images = np.arange(2 * 2 * 5 * 1, dtype=np.float32).reshape(2, 2, 5, 1)
    images[1, :, 3:] = 0  # the second image is 3 wide, padded right
    flipped = flip_images(images, [5, 3]).numpy()
    np.testing.assert_array_equal(flipped[0], tf.image.flip_left_right(images[0]))
    np.testing.assert_array_equal(flipped[1, :, :3], images[1, :, 2::-1])
    np.testing.assert_array_equal(flipped[1, :, 3:], 0)  # the padding stays on the right


def test_mirror_boxes_by_hand():
    boxes = tf.constant([[[10.0, 5.0, 30.0, 20.0]], [[0.0, 0.0, 3.0, 4.0]]])
    np.testing.assert_allclose(mirror_boxes(boxes, [100, 3]),
                               [[[70.0, 5.0, 90.0, 20.0]], [[0.0, 0.0, 3.0, 4.0]]])


coordinate = st.floats(0, 200, width=32)


@settings(deadline=None, max_examples=50)
@given(st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), min_size=1,
                max_size=5), st.floats(200, 400, width=32))
def test_mirroring_twice_is_the_identity_and_keeps_the_size(corners, width):
    boxes = np.array([[min(a, c), min(b, d), max(a, c), max(b, d)]
                      for a, b, c, d in corners], np.float32)[None]
    mirrored = mirror_boxes(boxes, [width]).numpy()
    np.testing.assert_allclose(mirror_boxes(mirrored, [width]), boxes, atol=1e-4)
    np.testing.assert_allclose(mirrored[..., 2] - mirrored[..., 0],
                               boxes[..., 2] - boxes[..., 0], atol=1e-4)
    assert (mirrored[..., 0] <= mirrored[..., 2]).all()


def test_fusion_by_hand():
    # Object 1: both views, IoU 100/110 > 0.5 -> the score-weighted mean box, score
    # (0.8 + 0.6) / 2. Object 2: the first view alone -> score 0.9 / 2. A class-1 box on
    # object 1 stays apart: (0.3 + 0) / 2.
    first = view([[0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.9], [0, 0])
    second = view([[1, 0, 11, 10], [0, 0, 10, 10]], [0.6, 0.3], [0, 1])
    fused = fuse_views([first, second], iou_threshold=0.5, max_detections=5)
    assert fused["num_detections"].numpy().tolist() == [3]
    np.testing.assert_allclose(fused["scores"][0], [0.7, 0.45, 0.15, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(fused["classes"][0], [0, 0, 1, -1, -1])
    np.testing.assert_allclose(fused["boxes"][0, :3], [
        [0.6 / 1.4, 0, 10 + 0.6 / 1.4, 10], [50, 50, 60, 60], [0, 0, 10, 10]], atol=1e-5)
    np.testing.assert_array_equal(fused["boxes"][0, 3:], 0)


def test_a_view_votes_once_with_its_best_box():
    # Two boxes of the first view on one object (IoU 100/110), none from the second: the
    # box is their weighted mean, the score the best one over two views, not their sum.
    first = view([[0, 0, 10, 10], [0, 0, 10, 11]], [0.8, 0.5], [2, 2])
    fused = fuse_views([first, view([], [], [])], iou_threshold=0.5, max_detections=3)
    assert fused["num_detections"].numpy().tolist() == [1]
    np.testing.assert_allclose(fused["scores"][0, 0], 0.4, atol=1e-6)
    np.testing.assert_allclose(fused["boxes"][0, 0], [0, 0, 10, 10 + 0.5 / 1.3], atol=1e-5)


def test_fusion_keeps_a_zero_area_box_finite_and_batches_by_image():
    first = {key: tf.concat([a, b], 0) for (key, a), b in zip(
        view([[5, 5, 5, 5]], [0.7], [0]).items(),
        view([[0, 0, 8, 8]], [0.6], [1]).values())}
    second = {key: tf.concat([a, b], 0) for (key, a), b in zip(
        view([], [], []).items(), view([[0, 0, 8, 8]], [0.4], [1]).values())}
    fused = fuse_views([first, second], iou_threshold=0.5, max_detections=2)
    assert np.isfinite(fused["boxes"].numpy()).all()
    np.testing.assert_array_equal(fused["num_detections"], [1, 1])
    np.testing.assert_allclose(fused["boxes"][:, 0], [[5, 5, 5, 5], [0, 0, 8, 8]])
    np.testing.assert_allclose(fused["scores"][:, 0], [0.35, 0.5], atol=1e-6)


@pytest.fixture
def scoring_model(tiny_retinanet):
    """A tiny model whose class subnet gives spread-out scores (untrained ones are ~0.01)."""
    model = tiny_retinanet()
    rng = np.random.default_rng(0)
    for weight in model.classification_head.weights:
        if len(weight.shape) > 1:  # kernels; the biases keep the 0.01 prior
            weight.assign(rng.normal(0, 0.3, weight.shape).astype(np.float32))
    return model


def detections(model, images):
    found = model.predict_on_batch(images)
    return {key: np.asarray(value) for key, value in found.items()}


def test_the_model_fuses_its_two_views(scoring_model, tmp_path):
    """Set on a model that has predicted already, the flip is traced in: the result is the
    fusion of the plain detections on the images and on their mirrors; saved, it stays."""
    import keras

    model = scoring_model
    images = np.random.default_rng(1).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    plain = detections(model, images)
    on_mirrors = detections(model, images[:, :, ::-1])
    assert plain["num_detections"].min() > 5
    expected = fuse_views([plain, dict(on_mirrors, boxes=mirror_boxes(on_mirrors["boxes"],
                                                                      [128, 128]))])
    model.test_time_flip = True
    flipped = detections(model, images)
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(flipped[key], expected[key], atol=1e-4, err_msg=key)
    assert not np.allclose(flipped["scores"], plain["scores"])

    path = str(tmp_path / "flip.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.test_time_flip and loaded.get_config()["test_time_flip"]
    np.testing.assert_allclose(detections(loaded, images)["boxes"], flipped["boxes"], atol=1e-4)


def test_flipped_detections_of_a_mirrored_image_are_mirrored(scoring_model):
    model = scoring_model
    model.test_time_flip = True
    image = np.random.default_rng(2).uniform(0, 255, (1, 128, 256, 3)).astype(np.float32)
    found = detections(model, image)
    on_mirror = detections(model, image[:, :, ::-1])
    np.testing.assert_array_equal(on_mirror["classes"], found["classes"])
    np.testing.assert_allclose(on_mirror["scores"], found["scores"], atol=1e-5)
    np.testing.assert_allclose(mirror_boxes(on_mirror["boxes"], [256])[0, :found[
        "num_detections"][0]], found["boxes"][0, :found["num_detections"][0]], atol=1e-3)


def test_a_padded_batch_flips_each_image_within_its_own_width(scoring_model):
    """An evaluation batch pads a narrower image on the right: its flipped detections are
    those of the image alone (each image mirrored within its width, not the canvas)."""
    model = scoring_model
    model.test_time_flip = True
    rng = np.random.default_rng(3)
    wide = rng.uniform(0, 255, (1, 128, 256, 3)).astype(np.float32)
    narrow = np.zeros_like(wide)
    narrow[:, :, :200] = rng.uniform(0, 255, (1, 128, 200, 3))
    batch = model.predict_on_batch({"images": np.concatenate([wide, narrow]),
                                    "image_sizes": np.array([[128, 256], [128, 200]])})
    alone = detections(model, narrow[:, :, :200])
    count = alone["num_detections"][0]
    assert batch["num_detections"][1] == count > 0
    np.testing.assert_allclose(batch["boxes"][1, :count], alone["boxes"][0, :count], atol=1e-3)
    np.testing.assert_allclose(batch["scores"][1, :count], alone["scores"][0, :count],
                               atol=1e-5)
