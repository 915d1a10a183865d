"""from_tfds with tfds.testing.mock_data: nothing is downloaded."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from retinanet import data
from retinanet.data.tfds import COCO_CATEGORY_IDS


def png(height, width):
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def mock_builder(examples):
    """An as_dataset_fn for mock_data serving `examples` (encoded, as TFDS stores them).

    Random mock examples cannot be used: their per-object sequences differ in length.
    """
    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        features = self.info.features

        def generate():
            yield from examples

        signature = tf.nest.map_structure(
            lambda v: tf.TensorSpec(np.shape(v)[:0] if np.ndim(v) == 0 else
                                    [None] + list(np.shape(v)[1:]),
                                    tf.as_dtype(np.asarray(v).dtype)
                                    if not isinstance(v, bytes) else tf.string),
            examples[0])
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.map(lambda ex: features.decode_example(ex, decoders=decoders))
    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def coco_example(image_id, boxes, labels, crowd):
    return {"image": png(40, 60), "image/filename": b"%012d.jpg" % image_id,
            "image/id": np.int64(image_id),
            "objects": {"bbox": np.array(boxes, np.float32).reshape(-1, 4),
                        "label": np.array(labels, np.int64),
                        "is_crowd": np.array(crowd, bool),
                        "area": np.zeros(len(labels), np.int64),
                        "id": np.arange(len(labels), dtype=np.int64)}}


def voc_example(name, boxes, labels, difficult):
    count = len(labels)
    return {"image": png(40, 60), "image/filename": name.encode(),
            "labels": np.array(labels, np.int64), "labels_no_difficult": np.array(labels,
                                                                                    np.int64),
            "objects": {"bbox": np.array(boxes, np.float32).reshape(-1, 4),
                        "label": np.array(labels, np.int64),
                        "is_difficult": np.array(difficult, bool),
                        "is_truncated": np.zeros(count, bool),
                        "pose": np.zeros(count, np.int64)}}


def test_coco_2017(tmp_path):
    examples = [coco_example(7, [[0.25, 0.1, 0.75, 0.5], [0.0, 0.0, 1.0, 1.0]], [0, 79],
                             [False, True]),
                coco_example(8, [], [], [])]
    with mock_builder(examples):
        dataset = data.from_tfds("coco/2017", "validation", data_dir=str(tmp_path))
        assert len(dataset) == 2
        # TFDS fills coco's label names at preparation; mocked metadata has "0".."79".
        assert len(dataset.class_names) == 80
        assert dataset.category_ids == list(COCO_CATEGORY_IDS)
        assert dataset.category_ids[79] == 90
        first, second = list(dataset.examples)
        records = dataset.records
    assert set(first) == set(data.EXAMPLE_KEYS)
    assert first["image"].shape == (40, 60, 3) and first["image"].dtype == tf.uint8
    # [ymin, xmin, ymax, xmax] = [0.25, 0.1, 0.75, 0.5] in 60 x 40 -> xyxy [6, 10, 30, 30].
    np.testing.assert_allclose(first["boxes"], [[6, 10, 30, 30], [0, 0, 60, 40]], atol=1e-5)
    assert first["boxes"].dtype == tf.float32 and first["classes"].dtype == tf.int32
    np.testing.assert_array_equal(first["classes"], [0, 79])
    np.testing.assert_array_equal(first["is_crowd"], [False, True])
    np.testing.assert_array_equal(first["difficult"], [False, False])
    assert first["image_id"].numpy() == b"7"
    assert second["boxes"].shape == (0, 4)
    assert [r.image_id for r in records] == ["7", "8"]
    np.testing.assert_allclose(records[0].boxes, first["boxes"].numpy())
    assert (records[0].height, records[0].width) == (40, 60)


@pytest.mark.parametrize("name", ["voc/2007", "voc/2012"])
def test_tfds_voc_gives_voc_class_names_and_pixel_boxes(tmp_path, name):
    examples = [voc_example("000005.jpg", [[0.5, 0.5, 1.0, 0.75]], [14], [True])]
    with mock_builder(examples):
        dataset = data.from_tfds(name, "train", data_dir=str(tmp_path))
        assert dataset.class_names == list(data.VOC_CLASSES)
        assert dataset.category_ids is None
        (example,) = list(dataset.examples)
        if name == "voc/2007":  # the pipeline takes a TFDS dataset like any other
            ((images, targets),) = list(data.pipeline(dataset, "eval", batch_size=1))
            assert images.shape == (1, 128, 128, 3)
            np.testing.assert_allclose(targets["boxes"][0, 0], [30, 20, 45, 40])
            np.testing.assert_array_equal(targets["difficult"][0, :2], [True, False])
            for cache in (False, True):
                ((images, targets),) = list(data.pipeline(
                    dataset, "train", batch_size=1, seed=0, cache=cache, scale_range=(1, 1),
                    horizontal_flip=False))
                np.testing.assert_allclose(targets["boxes"][0, 0], [30, 20, 45, 40])
    np.testing.assert_allclose(example["boxes"], [[30, 20, 45, 40]])
    np.testing.assert_array_equal(example["difficult"], [True])
    np.testing.assert_array_equal(example["is_crowd"], [False])
    assert example["image_id"].numpy() == b"000005"


def test_zero_area_box_fails_or_is_skipped_and_counted(tmp_path):
    examples = [coco_example(3, [[0.25, 0.5, 0.75, 0.5], [0.1, 0.1, 0.2, 0.2]], [1, 2],
                             [False, False])]
    with mock_builder(examples):
        strict = data.from_tfds("coco/2017", "train", data_dir=str(tmp_path))
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"000000000003\.jpg: box with x2 <= x1"):
            list(strict.examples)
        with pytest.raises(ValueError, match=r"coco/2017 train 000000000003\.jpg: box with "
                                             r"x2 <= x1 or y2 <= y1: box 0"):
            strict.records
        lenient = data.from_tfds("coco/2017", "train", data_dir=str(tmp_path),
                                 skip_invalid=True)
        (example,) = list(lenient.examples)
        np.testing.assert_array_equal(example["classes"], [2])
        assert lenient.skipped["boxes"] == {"box with x2 <= x1 or y2 <= y1": 1}
        with pytest.warns(data.DataWarning, match="skipped 1 boxes"):
            assert len(lenient.records[0]) == 1


def test_not_a_detection_dataset(tmp_path):
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(ValueError, match="'mnist': not a detection dataset"):
            data.from_tfds("mnist", "train", data_dir=str(tmp_path))
