"""pipeline(): batch formats, box transforms checked by hand, determinism, eval mapping back."""

import numpy as np
import pytest
import tensorflow as tf

from retinanet import data
from retinanet.data.pipeline import combine_mosaic, jitter_colors

SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "classes": tf.TensorSpec([None], tf.int32),
    "image_id": tf.TensorSpec([], tf.string),
    "is_crowd": tf.TensorSpec([None], tf.bool),
    "difficult": tf.TensorSpec([None], tf.bool),
}


def example(image, boxes, classes=None, is_crowd=None, image_id="x"):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    count = len(boxes)
    return {"image": np.asarray(image, np.uint8),
            "boxes": boxes,
            "classes": np.asarray(classes if classes is not None else [0] * count, np.int32),
            "image_id": image_id,
            "is_crowd": np.asarray(is_crowd if is_crowd is not None else [False] * count,
                                   bool),
            "difficult": np.zeros(count, bool)}


def examples_dataset(examples):
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=SIGNATURE)


def coordinate_image(height, width):
    """Channel 0 holds the column index, channel 1 the row index."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    image[..., 1] = np.arange(height)[:, None]
    return image


@pytest.fixture(scope="module")
def small_shapes():
    return data.shapes(8, 96, seed=0, max_size=40)


def test_train_batch_format(small_shapes):
    batches = list(data.pipeline(small_shapes, "train", batch_size=4, seed=0, max_boxes=10))
    assert len(batches) == 2
    images, targets = batches[0]
    assert set(targets) == {"boxes", "classes"}
    assert images.dtype == tf.float32 and images.shape == (4, 128, 128, 3)
    assert targets["boxes"].dtype == tf.float32 and targets["boxes"].shape == (4, 10, 4)
    assert targets["classes"].dtype == tf.int32 and targets["classes"].shape == (4, 10)
    for images, targets in batches:
        padding = targets["classes"].numpy() == -1
        boxes = targets["boxes"].numpy()
        assert (boxes[padding] == -1).all()
        valid = boxes[~padding]
        assert (valid[:, 2] > valid[:, 0]).all() and (valid[:, 3] > valid[:, 1]).all()
        assert valid.min() >= 0 and valid.max() <= 128
        assert 0 <= images.numpy().min() and images.numpy().max() <= 255


def test_fixed_square_size_not_a_multiple_of_128():
    examples = [example(np.full((100, 200, 3), 7), [[20, 10, 60, 50]], image_id="wide"),
                example(np.full((300, 150, 3), 7), [[0, 0, 150, 300]], image_id="tall")]
    ((images, targets),) = list(data.pipeline(examples_dataset(examples), "eval",
                                              batch_size=2, image_size=300))
    assert images.shape == (2, 384, 384, 3)  # 300 rounded up to a multiple of 128
    np.testing.assert_allclose(targets["scale"], [[1.5, 1.5], [1.0, 1.0]])
    np.testing.assert_array_equal(targets["image_size"], [[150, 300], [300, 150]])
    np.testing.assert_allclose(targets["boxes"][0, 0], [30, 15, 90, 75])
    np.testing.assert_allclose(targets["boxes"][1, 0], [0, 0, 150, 300])


def test_min_max_sides_pad_each_to_128_and_batch_to_the_largest():
    examples = [example(np.full((100, 200, 3), 7), [[20, 10, 60, 50]]),
                example(np.full((300, 150, 3), 7), [[0, 0, 150, 300]])]
    batches = list(data.pipeline(examples_dataset(examples), "eval", batch_size=1,
                                 image_size=(100, 250)))
    # 100 x 200: scale min(100/100, 250/200) = 1 -> canvas 128 x 256.
    # 300 x 150: scale min(100/150, 250/300) = 2/3 -> 200 x 100 -> canvas 256 x 128.
    assert [tuple(images.shape[1:3]) for images, _ in batches] == [(128, 256), (256, 128)]
    np.testing.assert_allclose(batches[1][1]["boxes"][0, 0], [0, 0, 100, 200], rtol=1e-6)
    ((images, _),) = list(data.pipeline(examples_dataset(examples), "eval", batch_size=2,
                                        image_size=(100, 250)))
    assert images.shape == (2, 256, 256, 3)


@pytest.mark.parametrize("size, resize, torchvision, retinanet", [
    # PyTorch's interpolate(scale_factor=s, recompute_scale_factor=True), as torchvision's
    # transform calls it, gave these sizes (float32 s = 5/3 - 4e-8: 480 s = 799.99998).
    ((480, 640), (800, 1333), (799, 1066), (800, 1067)),
    ((600, 800), (800, 1333), (800, 1066), (800, 1067)),  # s = 4/3 + 4e-8
    ((333, 517), (800, 1333), (799, 1242), (800, 1242)),
    ((333, 517), (320, 512), (320, 496), (320, 497)),
])
def test_torchvision_rules_floor_the_float32_scale_as_pytorch_does(size, resize, torchvision,
                                                                   retinanet):
    from retinanet.preprocess import resize_scale_and_canvas, resized_size

    for rules, expected in (("torchvision", torchvision), ("retinanet", retinanet)):
        scale, canvas = resize_scale_and_canvas(*size, resize, 32, rules)
        assert tuple(resized_size(tf.constant(size), scale, rules).numpy()) == expected, rules
        assert tuple(canvas.numpy()) == tuple(-(-side // 32) * 32 for side in expected)


def test_torchvision_rules_scale_boxes_per_axis_and_pad_with_the_mean_colour():
    from retinanet.preprocess import IMAGENET_MEAN_255

    # 333 x 517 -> 320 x 496 (y and x scales 320/333 and 496/517); 100 x 200 -> 255 x 511
    # (float32 2.56 is 2.56 - 6e-8, as PyTorch gives too); the batch's canvas is 320 x 512.
    examples = [example(np.full((333, 517, 3), 50), [[0, 0, 517, 333], [10, 30, 110, 130]]),
                example(np.full((100, 200, 3), 50), [[20, 10, 60, 50]])]
    ((images, targets),) = list(data.pipeline(examples_dataset(examples), "eval", batch_size=2,
                                              image_size=(320, 512), size_multiple=32,
                                              preprocessing="torchvision", max_boxes=2))
    assert images.shape == (2, 320, 512, 3)
    np.testing.assert_array_equal(targets["image_size"], [[320, 496], [255, 511]])
    np.testing.assert_allclose(targets["scale"], [[320 / 333, 496 / 517], [2.55, 2.555]],
                               rtol=1e-6)
    np.testing.assert_allclose(targets["boxes"][0], [[0, 0, 496, 320],
                                                     [10 * 496 / 517, 30 * 320 / 333,
                                                      110 * 496 / 517, 130 * 320 / 333]],
                               rtol=1e-6)
    images = images.numpy()
    np.testing.assert_allclose(images[0, :, :496], 50, atol=1e-4)
    np.testing.assert_allclose(images[1, :255, :511], 50, atol=1e-4)
    # Per-image padding (the first image's columns) and the batch's (the second's rows).
    np.testing.assert_allclose(images[0, :, 496:], np.broadcast_to(IMAGENET_MEAN_255,
                                                                   (320, 16, 3)), atol=1e-4)
    np.testing.assert_allclose(images[1, 255:], np.broadcast_to(IMAGENET_MEAN_255,
                                                                (65, 512, 3)), atol=1e-4)
    # Training: the same sizes, boxes and padding.
    images, targets = next(iter(data.pipeline(
        examples_dataset(examples[:1]), "train", batch_size=1, image_size=(320, 512),
        size_multiple=32, preprocessing="torchvision", horizontal_flip=False, seed=0,
        scale_range=(1, 1),
        max_boxes=2)))
    assert images.shape == (1, 320, 512, 3)
    np.testing.assert_allclose(targets["boxes"][0, 0], [0, 0, 496, 320], rtol=1e-6)
    np.testing.assert_allclose(images[0, :, 496:], np.broadcast_to(IMAGENET_MEAN_255,
                                                                   (320, 16, 3)), atol=1e-4)
    with pytest.raises(ValueError, match="preprocessing"):
        data.pipeline(examples_dataset(examples), "eval", preprocessing="pytorch")


def test_eval_resize_and_pad_by_hand():
    examples = [example(np.full((100, 200, 3), 50), [[20, 10, 60, 50], [0, 0, 200, 100]],
                        classes=[3, 1], is_crowd=[False, True], image_id="img")]
    ((images, targets),) = list(data.pipeline(examples_dataset(examples), "eval",
                                              batch_size=1, image_size=100, max_boxes=4))
    # scale = 100 / max(100, 200) = 0.5: the image becomes 50 x 100, padded to 128 x 128.
    assert images.shape == (1, 128, 128, 3)
    image = images[0].numpy()
    np.testing.assert_allclose(image[:50, :100], 50)
    assert (image[50:] == 0).all() and (image[:, 100:] == 0).all()
    np.testing.assert_allclose(targets["boxes"][0], [[10, 5, 30, 25], [0, 0, 100, 50],
                                                     [-1, -1, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(targets["classes"][0], [3, 1, -1, -1])
    np.testing.assert_array_equal(targets["is_crowd"][0], [False, True, False, False])
    np.testing.assert_array_equal(targets["difficult"][0], [False] * 4)
    assert targets["image_id"].numpy().tolist() == [b"img"]
    np.testing.assert_allclose(targets["scale"], [[0.5, 0.5]])
    np.testing.assert_array_equal(targets["image_size"], [[50, 100]])
    np.testing.assert_array_equal(targets["original_size"], [[100, 200]])
    assert targets["original_size"].dtype == tf.int32


def test_horizontal_flip_by_hand():
    examples = [example(coordinate_image(64, 100), [[10, 5, 30, 25]], image_id=str(i))
                for i in range(16)]
    ((images, targets),) = list(data.pipeline(
        examples_dataset(examples), "train", batch_size=16, seed=1, scale_range=(1, 1)))
    assert images.shape == (16, 128, 128, 3)
    flips = 0
    for image, boxes in zip(images.numpy(), targets["boxes"].numpy()):
        flipped = image[0, 0, 0] == 99  # column 0 now holds the last column
        np.testing.assert_array_equal(image[0, :100, 0],
                                      np.arange(100)[::-1] if flipped else np.arange(100))
        # A flip in a 100 px wide image: x1' = 100 - x2, x2' = 100 - x1.
        np.testing.assert_allclose(boxes[0], [70, 5, 90, 25] if flipped else [10, 5, 30, 25])
        assert (image[:, 100:] == 0).all()  # padding stays bottom/right
        flips += flipped
    assert 0 < flips < 16


def test_scale_jitter_and_crop_by_hand():
    examples = [example(coordinate_image(64, 100), [[20, 5, 60, 25]], image_id=str(i))
                for i in range(24)]
    ((images, targets),) = list(data.pipeline(
        examples_dataset(examples), "train", batch_size=24, seed=2, scale_range=(2, 2),
        horizontal_flip=False))
    # Scale 2: 128 x 200, cropped to the 128 x 128 canvas at a random column offset.
    offsets = set()
    for image, boxes, classes in zip(images.numpy(), targets["boxes"].numpy(),
                                     targets["classes"].numpy()):
        # Bilinear with half-pixel centres: resized column j samples input x = (j - 0.5) / 2,
        # and output column 1 is resized column offset + 1.
        offset = int(round(2 * image[0, 1, 0] - 0.5))
        assert abs(image[0, 0, 0] - max((offset - 0.5) / 2, 0)) < 1e-3
        offsets.add(offset)
        x1, x2 = np.clip([40 - offset, 120 - offset], 0, 128)
        if x2 > x1:
            np.testing.assert_allclose(boxes[0], [x1, 10, x2, 50], atol=1e-4)
            assert classes[0] == 0
        else:  # the crop cut the whole box away: it is dropped
            assert classes[0] == -1
    assert len(offsets) > 5 and min(offsets) >= 0 and max(offsets) <= 72


def test_scale_down_jitter_pads():
    examples = [example(coordinate_image(64, 100), [[20, 5, 60, 25]])]
    ((images, targets),) = list(data.pipeline(
        examples_dataset(examples), "train", batch_size=1, seed=0, scale_range=(0.5, 0.5),
        horizontal_flip=False))
    np.testing.assert_allclose(targets["boxes"][0, 0], [10, 2.5, 30, 12.5])
    assert (images[0, 32:].numpy() == 0).all() and (images[0, :, 50:].numpy() == 0).all()


def test_crowd_boxes_dropped_in_train_only():
    examples = [example(np.full((64, 64, 3), 9), [[0, 0, 10, 10], [5, 5, 20, 20]],
                        classes=[1, 2], is_crowd=[True, False])]
    ((_, train),) = list(data.pipeline(examples_dataset(examples), "train", batch_size=1,
                                       seed=0, scale_range=(1, 1), horizontal_flip=False))
    np.testing.assert_array_equal(train["classes"][0, :2], [2, -1])
    np.testing.assert_allclose(train["boxes"][0, 0], [5, 5, 20, 20])
    ((_, evaluation),) = list(data.pipeline(examples_dataset(examples), "eval",
                                            batch_size=1))
    np.testing.assert_array_equal(evaluation["classes"][0, :3], [1, 2, -1])
    np.testing.assert_array_equal(evaluation["is_crowd"][0, :3], [True, False, False])


def test_eval_boxes_divided_by_scale_give_the_original_boxes(small_shapes):
    records = {r.image_id: r for r in small_shapes.records}
    for images, targets in data.pipeline(small_shapes, "eval", batch_size=3,
                                         image_size=(200, 300)):
        assert images.shape[1] % 128 == 0 and images.shape[2] % 128 == 0
        for i, image_id in enumerate(targets["image_id"].numpy()):
            record = records[image_id.decode()]
            count = len(record)
            np.testing.assert_array_equal(targets["classes"][i, count:], -1)
            scale_xyxy = np.tile(targets["scale"][i][::-1], 2)
            np.testing.assert_allclose(targets["boxes"][i, :count] / scale_xyxy,
                                       record.boxes, rtol=1e-6, atol=1e-4)
            np.testing.assert_array_equal(targets["original_size"][i], [96, 96])


def test_raccoon_eval_maps_back_and_train_fits_512(raccoon_dir):
    dataset = data.from_voc(raccoon_dir)
    subset = data.DetectionDataset(dataset.class_names, dataset.records[:6])
    records = {r.image_id: r for r in subset.records}
    for images, targets in data.pipeline(subset, "eval", batch_size=3, image_size=512):
        assert images.shape == (3, 512, 512, 3)
        for i, image_id in enumerate(targets["image_id"].numpy()):
            record = records[image_id.decode()]
            np.testing.assert_array_equal(targets["original_size"][i],
                                          [record.height, record.width])
            np.testing.assert_allclose(targets["boxes"][i, :len(record)] /
                                       targets["scale"][i, 0], record.boxes, rtol=1e-5)
    images, targets = next(iter(data.pipeline(subset, "train", batch_size=2, seed=0,
                                              image_size=512)))
    assert images.shape == (2, 512, 512, 3)
    boxes = targets["boxes"].numpy()[targets["classes"].numpy() >= 0]
    assert len(boxes) and boxes.min() >= 0 and boxes.max() <= 512


def test_same_seed_same_batches(small_shapes):
    def batches(seed):
        pipe = data.pipeline(small_shapes, "train", batch_size=4, image_size=128, seed=seed,
                             deterministic=True)
        return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in pipe]

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_epochs_differ_with_a_seed(small_shapes):
    pipe = data.pipeline(small_shapes, "train", batch_size=8, seed=3, deterministic=True)
    first, second = [next(iter(pipe))[0].numpy() for _ in range(2)]
    assert not np.array_equal(first, second)


def test_cache_in_train_and_eval(small_shapes):
    cached = data.pipeline(small_shapes, "eval", batch_size=4, cache=True)
    plain = data.pipeline(small_shapes, "eval", batch_size=4)
    for _ in range(2):  # the second pass reads the cache
        for (a, ta), (b, tb) in zip(cached, plain):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
    train = data.pipeline(small_shapes, "train", batch_size=4, cache=True, seed=0)
    assert [len(list(train)) for _ in range(2)] == [2, 2]


def test_too_many_boxes_names_the_image():
    examples = [example(np.zeros((32, 32, 3)), [[0, 0, 4, 4]] * 3, image_id="crowded")]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image crowded: more boxes than "
                                                             "max_boxes"):
        list(data.pipeline(examples_dataset(examples), "eval", batch_size=1, max_boxes=2))


def test_to_keras_cv(small_shapes):
    batch = next(iter(data.pipeline(small_shapes, "eval", batch_size=2)))
    converted = data.to_keras_cv(*batch)
    assert set(converted) == {"images", "bounding_boxes"}
    assert set(converted["bounding_boxes"]) == {"boxes", "classes"}
    assert converted["images"] is batch[0]
    assert converted["bounding_boxes"]["boxes"] is batch[1]["boxes"]


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "test"}, "mode must be one of"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"image_size": (300, 200)}, "min_side <= max_side"),
    ({"image_size": "big"}, "`image_size` must be None"),
    ({"scale_range": (1.2, 0.8)}, "scale_range needs 0 < low <= high"),
    ({"deterministic": True}, "deterministic=True needs a seed"),
    ({"max_boxes": 0}, "max_boxes must be a positive int"),
    ({"color_jitter": 1.5}, "color_jitter must be a number in"),
    ({"mosaic": -0.1}, "mosaic must be a probability"),
    ({"mosaic": 0.5, "image_size": (64, 128)}, "mosaic needs a fixed square canvas"),
    ({"batch_size": 9}, "batch_size 9 is larger than the dataset"),
])
def test_invalid_pipeline_arguments_raise_naming_them(small_shapes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.pipeline(small_shapes, **kwargs)
    with pytest.raises(ValueError, match="dataset must be a DetectionDataset"):
        data.pipeline([1, 2, 3])


def test_color_jitter_changes_colours_only(small_shapes):
    def batches(strength):
        return list(data.pipeline(small_shapes, "train", batch_size=4, seed=3, max_boxes=10,
                                  deterministic=True, color_jitter=strength))

    plain, jittered = batches(0.0), batches(1.0)
    for (plain_images, plain_targets), (images, targets) in zip(plain, jittered):
        np.testing.assert_array_equal(targets["boxes"], plain_targets["boxes"])
        np.testing.assert_array_equal(targets["classes"], plain_targets["classes"])
        assert images.shape == plain_images.shape
        assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255
        assert float(tf.reduce_max(tf.abs(images - plain_images))) > 10


@pytest.mark.parametrize("strength", [0.25, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_color_jitter_keeps_a_grey_image_grey_within_the_brightness_bound(strength, seed):
    # On a constant grey image contrast, saturation and hue change nothing, so only the
    # brightness shift of at most 0.125 * strength of the range is left.
    grey = tf.fill([8, 8, 3], 100.0)
    out = jitter_colors(grey, strength, tf.constant([seed, 7], tf.int64))
    out = out.numpy()
    np.testing.assert_allclose(out, out[0, 0, 0], atol=1e-3)
    assert abs(out[0, 0, 0] - 100) <= 0.125 * strength * 255 + 1e-3


def test_color_jitter_of_a_small_strength_nearly_keeps_the_image():
    image = tf.constant(coordinate_image(6, 9), tf.float32)
    out = jitter_colors(image, 1e-4, tf.constant([1, 2], tf.int64))
    np.testing.assert_allclose(out, image, atol=0.1)


def test_mosaic_by_hand():
    # Image i is the constant 10 * (i + 1) with one box; S = 8, so halves are 4 x 4.
    images = tf.stack([tf.fill([8, 8, 3], 10.0 * (i + 1)) for i in range(4)])
    boxes = -np.ones((4, 2, 4), np.float32)
    classes = -np.ones((4, 2), np.int32)
    for i in range(4):
        boxes[i, 0] = [2, 0, 6, 8]
        classes[i, 0] = i
    image, out_boxes, out_classes = combine_mosaic(images, boxes, classes, max_boxes=5)
    image = image.numpy()
    assert image.shape == (8, 8, 3)
    for i, (rows, cols) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                       (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):
        np.testing.assert_allclose(image[rows, cols], 10.0 * (i + 1))
    np.testing.assert_allclose(out_boxes.numpy()[:4], [[1, 0, 3, 4], [5, 0, 7, 4],
                                                       [1, 4, 3, 8], [5, 4, 7, 8]])
    np.testing.assert_array_equal(out_boxes.numpy()[4], -1)
    np.testing.assert_array_equal(out_classes.numpy(), [0, 1, 2, 3, -1])


def test_mosaic_with_more_boxes_than_max_boxes_fails_naming_it():
    images = tf.zeros([4, 8, 8, 3])
    boxes = np.tile(np.array([0, 0, 4, 4], np.float32), (4, 2, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="raise max_boxes"):
        combine_mosaic(images, boxes, np.zeros((4, 2), np.int32), max_boxes=7)


@pytest.mark.parametrize("probability, expected", [(1.0, 2), (0.0, 8)])
def test_mosaic_probability_sets_how_many_images_come_out(small_shapes, probability, expected):
    # 8 images in 2 groups of 4: every group a mosaic (2 images) or none (8 images).
    batches = list(data.pipeline(small_shapes, "train", batch_size=1, image_size=128, seed=0,
                                 max_boxes=24, mosaic=probability))
    assert len(batches) == expected
    for images, targets in batches:
        assert images.shape == (1, 128, 128, 3)
        valid = targets["classes"].numpy() >= 0
        assert (targets["boxes"].numpy()[valid] >= 0).all()
        assert (targets["boxes"].numpy()[valid] <= 128).all()
