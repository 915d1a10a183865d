"""The synthetic shapes set: determinism, tight boxes, formats."""

import numpy as np
import pytest
import tensorflow as tf

from retinanet import data


def test_same_seed_same_data_and_prefix_property():
    first = data.shapes(6, 64, seed=3, max_size=30)
    again = data.shapes(6, 64, seed=3, max_size=30)
    np.testing.assert_array_equal(first._images, again._images)
    for a, b in zip(first.records, again.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.classes, b.classes)
    # Image i depends only on (seed, i): a smaller set is a prefix of a larger one.
    prefix = data.shapes(2, 64, seed=3, max_size=30)
    np.testing.assert_array_equal(prefix._images, first._images[:2])
    other = data.shapes(6, 64, seed=4, max_size=30)
    assert not np.array_equal(other._images, first._images)


def test_boxes_are_tight_around_drawn_pixels():
    dataset = data.shapes(24, 64, seed=0, max_objects=1, min_size=12, max_size=40,
                          background="flat")
    checked = 0
    for record, image in zip(dataset.records, dataset._images):
        background = image[0, 0]  # shapes keep a 1 px margin from the border
        drawn = np.any(image != background, axis=-1)
        if len(record) == 0:
            assert not drawn.any()
            continue
        rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
        tight = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        np.testing.assert_array_equal(record.boxes[0], tight)
        checked += 1
    assert checked >= 10


def test_content_and_formats():
    dataset = data.shapes(40, (96, 128), seed=1, max_objects=5, min_size=12)
    assert dataset.class_names == list(data.SHAPE_CLASSES)
    assert len(dataset) == 40
    counts = [len(r) for r in dataset.records]
    assert min(counts) == 0 and max(counts) <= 5 and sum(counts) > 60
    boxes = np.concatenate([r.boxes for r in dataset.records])
    classes = np.concatenate([r.classes for r in dataset.records])
    assert set(classes) == set(range(6))
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    assert sides.min() >= 11 and sides.max() > 40  # min_size 12, less a pixel of rounding
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and \
        (boxes[:, 3] <= 96).all()
    overlapping = sum(
        1 for r in dataset.records for i in range(len(r)) for j in range(i)
        if min(r.boxes[i, 2], r.boxes[j, 2]) > max(r.boxes[i, 0], r.boxes[j, 0]) and
        min(r.boxes[i, 3], r.boxes[j, 3]) > max(r.boxes[i, 1], r.boxes[j, 1]))
    assert overlapping > 0
    example = next(iter(dataset.examples))
    assert example["image"].dtype == tf.uint8 and example["image"].shape == (96, 128, 3)
    np.testing.assert_array_equal(example["boxes"], dataset.records[0].boxes)
    assert example["image_id"].numpy() == b"0"
    # Textured: the background is not one colour.
    assert dataset._images[0].reshape(-1, 3).std(axis=0).min() > 3


def test_class_subset_and_argument_errors():
    dataset = data.shapes(4, 48, seed=0, classes=("square", "circle"), max_size=20)
    assert dataset.class_names == ["square", "circle"]
    with pytest.raises(ValueError, match="classes must be distinct names"):
        data.shapes(4, 48, classes=("hexagon",))
    with pytest.raises(ValueError, match="num_images must be a positive int"):
        data.shapes(0)
    with pytest.raises(ValueError, match="size must be at least 32"):
        data.shapes(1, 16)
    with pytest.raises(ValueError, match="min_size"):
        data.shapes(1, 64, min_size=40, max_size=20)
