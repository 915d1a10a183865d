"""Readers on small fixtures written here (one per format), on raccoon, and on bad input."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retinanet import data
from retinanet.data import DataWarning, DetectionDataset
from retinanet.data.yolo import parse_yaml_names


def write_image(path, height, width, value=128, mode="RGB", fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"RGB": 3, "L": None}[mode]
    shape = (height, width, channels) if channels else (height, width)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path, format=fmt)
    return str(path)


def write_voc_xml(path, filename, width, height, objects):
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = "".join(
        f"<object><name>{o[0]}</name><difficult>{o[5] if len(o) > 5 else 0}</difficult>"
        f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax>"
        f"<ymax>{o[4]}</ymax></bndbox></object>" for o in objects)
    with open(path, "w") as file:
        file.write(f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
                   f"<height>{height}</height><depth>3</depth></size>{body}</annotation>")


def first_example(dataset):
    return next(iter(dataset.examples))


# ---------------------------------------------------------------------------- COCO


def coco_fixture(root, annotations=None, images=None, categories=None):
    write_image(root / "imgs" / "a.png", 40, 60)
    write_image(root / "imgs" / "b.png", 20, 30)
    coco = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                             {"id": 2, "file_name": "b.png", "width": 30, "height": 20}],
        # Unsorted ids on purpose: class ids follow sorted category ids.
        "categories": categories or [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
        "annotations": annotations if annotations is not None else [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 15], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [50, 30, 20, 20]},
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), str(root / "imgs")


def test_coco_reader_converts_xywh_clips_and_keeps_crowds_and_empty_images(tmp_path):
    dataset = data.from_coco(*coco_fixture(tmp_path))
    assert dataset.class_names == ["dog", "cat"]
    assert dataset.category_ids == [1, 3]
    assert len(dataset) == 2
    first, second = dataset.records
    assert first.image_id == "1" and (first.height, first.width) == (40, 60)
    # xywh -> xyxy; the third box [50, 30, 70, 50] is clipped to the 60x40 image.
    np.testing.assert_array_equal(first.boxes, [[10, 5, 30, 20], [0, 0, 60, 40],
                                                [50, 30, 60, 40]])
    np.testing.assert_array_equal(first.classes, [1, 0, 1])
    np.testing.assert_array_equal(first.is_crowd, [False, True, False])
    assert len(second) == 0  # an image without annotations stays, with no boxes
    example = first_example(dataset)
    assert set(example) == set(data.EXAMPLE_KEYS)
    assert example["image"].dtype == tf.uint8 and example["image"].shape == (40, 60, 3)
    np.testing.assert_array_equal(example["boxes"].numpy(), first.boxes)
    assert example["classes"].dtype == tf.int32
    assert example["image_id"].numpy() == b"1"
    np.testing.assert_array_equal(example["is_crowd"], [False, True, False])
    np.testing.assert_array_equal(example["difficult"], [False, False, False])


# ---------------------------------------------------------------------------- VOC


def test_voc_reader_flat_layout(tmp_path):
    write_image(tmp_path / "images" / "a.png", 30, 50)
    write_voc_xml(tmp_path / "annotations" / "a.xml", "a.png", 50, 30,
                  [("dog", 1, 1, 10, 20), ("cat", 41, 11, 50, 30, 1)])
    dataset = data.from_voc(tmp_path)
    assert dataset.class_names == ["cat", "dog"]  # flat layout: the sorted names found
    (record,) = dataset.records
    assert record.image_id == "a"
    # 1-based inclusive -> continuous: x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.
    np.testing.assert_array_equal(record.boxes, [[0, 0, 10, 20], [40, 10, 50, 30]])
    np.testing.assert_array_equal(record.classes, [1, 0])
    np.testing.assert_array_equal(record.difficult, [False, True])
    example = first_example(dataset)
    np.testing.assert_array_equal(example["difficult"], [False, True])


def test_voc_reader_devkit_layout_and_split(tmp_path):
    for image_id in ("000001", "000002"):
        write_image(tmp_path / "JPEGImages" / f"{image_id}.jpg", 30, 40, fmt="JPEG")
        write_voc_xml(tmp_path / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", 40, 30,
                      [("dog", 2, 3, 20, 25)])
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    dataset = data.from_voc(tmp_path, "val")
    assert dataset.class_names == list(data.VOC_CLASSES)  # devkit with VOC names: all 20
    assert [r.image_id for r in dataset.records] == ["000002"]
    np.testing.assert_array_equal(dataset.records[0].classes, [data.VOC_CLASSES.index("dog")])
    assert len(data.from_voc(tmp_path)) == 2
    with pytest.raises(ValueError, match="split 'test'"):
        data.from_voc(tmp_path, "test")


# ---------------------------------------------------------------------------- YOLO


def test_yolo_reader_rounding_and_clipping(tmp_path):
    write_image(tmp_path / "images" / "img.png", 200, 300)  # height 200, width 300
    write_image(tmp_path / "images" / "empty.jpg", 10, 10, fmt="JPEG")
    (tmp_path / "classes.txt").write_text("circle\nsquare\n")
    (tmp_path / "labels").mkdir()
    # Worked by hand for a 300 x 200 image:
    #   [100, 50, 200, 150]: cx = 150/300, cy = 100/200, w = 100/300 ~ 0.333333, h = 0.5,
    #     so x1 = (0.5 - 0.1666665) * 300 = 100.00005 (6-decimal rounding, ~1e-4 px);
    #   [7, 3, 77, 33]: cx = 42/300 = 0.14, cy = 18/200 = 0.09, w = 70/300 ~ 0.233333,
    #     h = 30/200 = 0.15;
    #   0.95 0.1 0.2 0.4 spans x 255..315 and y -20..60: clipped to [255, 0, 300, 60].
    (tmp_path / "labels" / "img.txt").write_text(
        "0 0.5 0.5 0.333333 0.5\n1 0.14 0.09 0.233333 0.15\n\n1 0.95 0.1 0.2 0.4\n")
    dataset = data.from_yolo(tmp_path)
    assert dataset.class_names == ["circle", "square"]
    empty, record = dataset.records  # sorted by path; the unlabelled image has no boxes
    assert empty.image_id == "empty" and len(empty) == 0
    assert (record.height, record.width) == (200, 300)
    np.testing.assert_allclose(record.boxes, [[100, 50, 200, 150], [7, 3, 77, 33],
                                              [255, 0, 300, 60]], atol=1e-3)
    np.testing.assert_array_equal(record.classes, [0, 1, 1])


def test_yolo_class_names_from_data_yaml_and_argument(tmp_path):
    write_image(tmp_path / "images" / "train" / "x.png", 16, 16)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: person\n  1: 'traffic light'\n")
    dataset = data.from_yolo(tmp_path, split="train")
    assert dataset.class_names == ["person", "traffic light"]
    np.testing.assert_array_equal(dataset.records[0].boxes, [[4, 4, 12, 12]])
    assert data.from_yolo(tmp_path, ["a", "b"], split="train").class_names == ["a", "b"]


@pytest.mark.parametrize("text, expected", [
    ("nc: 2\nnames: ['a', 'b c']\n", ["a", "b c"]),
    ("names: [cat, dog]  # comment\n", ["cat", "dog"]),
    ("names:\n  - cat\n  - 'hot dog'\ntrain: x\n", ["cat", "hot dog"]),
    ("names:\n  1: dog\n  0: cat\n", ["cat", "dog"]),
    ("names: {0: cat, 1: dog}\n", ["cat", "dog"]),
    ("train: images\n", None),
])
def test_parse_yaml_names_without_pyyaml(text, expected):
    assert parse_yaml_names(text) == expected


# ---------------------------------------------------------------------------- CSV


def test_csv_reader_sorts_classes_and_keeps_images_without_boxes(tmp_path):
    write_image(tmp_path / "images" / "a.png", 30, 50)
    write_image(tmp_path / "images" / "b.png", 10, 10)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n"
                        "a.png,50,30,dog,1,1,10,20\n"
                        "b.png,10,10,,,,,\n"
                        "a.png,50,30,cat,41,11,50,30\n")
    dataset = data.from_csv(csv_file, tmp_path / "images")
    assert dataset.class_names == ["cat", "dog"]
    a, b = dataset.records
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 20], [40, 10, 50, 30]])  # as VOC
    np.testing.assert_array_equal(a.classes, [1, 0])
    assert b.image_id == "b" and len(b) == 0  # a row with no box: an image without boxes
    continuous = data.from_csv(csv_file, tmp_path / "images", one_based=False,
                               class_names=["dog", "cat"])
    np.testing.assert_array_equal(continuous.records[0].boxes, [[1, 1, 10, 20],
                                                                [41, 11, 50, 30]])
    np.testing.assert_array_equal(continuous.records[0].classes, [0, 1])


def test_csv_header_aliases_and_missing_column(tmp_path):
    write_image(tmp_path / "a.png", 30, 50)
    aliases = tmp_path / "aliases.csv"
    aliases.write_text("image,label,x1,y1,x2,y2\na.png,dog,1,2,10,20\n")
    record = data.from_csv(aliases, one_based=False).records[0]
    np.testing.assert_array_equal(record.boxes, [[1, 2, 10, 20]])
    broken = tmp_path / "broken.csv"
    broken.write_text("filename,class,xmin,ymin,xmax\na.png,dog,1,2,10\n")
    with pytest.raises(ValueError, match=r"broken\.csv: no 'ymax' column"):
        data.from_csv(broken)


# ---------------------------------------------------------------------------- raccoon


def test_raccoon_voc_and_csv_give_the_same_boxes(raccoon_dir):
    voc = data.from_voc(raccoon_dir)
    assert len(voc) == 200 and voc.class_names == ["raccoon"]
    records = {r.image_id: r for r in voc.records}
    csv_records = []
    for name in ("train_labels.csv", "test_labels.csv"):
        csv = data.from_csv(raccoon_dir / name, raccoon_dir / "images")
        assert csv.class_names == ["raccoon"]
        csv_records += csv.records
    assert len(csv_records) == 200
    assert sum(len(r) for r in csv_records) == sum(len(r) for r in voc.records) == 217
    for record in csv_records:
        expected = records[record.image_id]
        assert (record.height, record.width) == (expected.height, expected.width)
        np.testing.assert_array_equal(record.boxes, expected.boxes)
        np.testing.assert_array_equal(record.classes, expected.classes)
    # raccoon-1.xml: xmin 81, ymin 88, xmax 522, ymax 408 in a 650 x 417 image.
    np.testing.assert_array_equal(records["raccoon-1"].boxes, [[80, 87, 522, 408]])


def test_raccoon_grayscale_images_decode_to_3_channels(raccoon_dir):
    voc = data.from_voc(raccoon_dir)
    gray = [r for r in voc.records if r.image_id in ("raccoon-150", "raccoon-152",
                                                     "raccoon-161")]
    assert len(gray) == 3
    subset = DetectionDataset(voc.class_names, gray)
    for record, example in zip(gray, subset.examples):
        assert example["image"].shape == (record.height, record.width, 3)
        assert example["image"].dtype == tf.uint8
        image = example["image"].numpy()
        np.testing.assert_array_equal(image[..., 0], image[..., 2])


# ---------------------------------------------------------------------------- bad input


def voc_dataset(root, objects=(("dog", 1, 1, 10, 20),), filename="a.png", size=(30, 50)):
    write_image(root / "images" / "a.png", *size)
    write_voc_xml(root / "annotations" / "a.xml", filename, size[1], size[0], objects)
    return root / "annotations" / "a.xml"


@pytest.mark.parametrize("objects, message", [
    ([("zebra", 1, 1, 10, 10)], r"unknown class: object 0 \('zebra'\)"),
    ([("dog", 20, 1, 10, 10)], r"x2 <= x1 or y2 <= y1: object 0"),
    # ymin 9 = ymax 9 is one pixel row (y 8..9), valid; ymax 8 < ymin 9 is empty.
    ([("dog", 5, 9, 20, 8)], r"x2 <= x1 or y2 <= y1"),
    ([("dog", 101, 1, 120, 10)], r"box outside the image: object 0 .* 50x30 image"),
    ([("dog", 1, 1, "ten", 10)], r"unparsable annotation: object 0"),
])
def test_voc_bad_boxes_raise_naming_the_file(tmp_path, objects, message):
    xml = voc_dataset(tmp_path, objects)
    with pytest.raises(ValueError, match=message) as error:
        data.from_voc(tmp_path, class_names=["dog"])
    assert str(xml) in str(error.value)


def test_one_pixel_voc_box_is_valid(tmp_path):
    voc_dataset(tmp_path, [("dog", 5, 9, 5, 9)])
    np.testing.assert_array_equal(data.from_voc(tmp_path).records[0].boxes, [[4, 8, 5, 9]])


def test_box_partly_outside_is_clipped(tmp_path):
    voc_dataset(tmp_path, [("dog", -4, 20, 60, 45)])
    (record,) = data.from_voc(tmp_path).records
    np.testing.assert_array_equal(record.boxes, [[0, 19, 50, 30]])


def test_missing_and_corrupt_images_raise_naming_the_file(tmp_path):
    xml = voc_dataset(tmp_path, filename="nowhere.png")
    with pytest.raises(ValueError, match="missing image: file not found") as error:
        data.from_voc(tmp_path)
    assert str(xml) in str(error.value) and "nowhere.png" in str(error.value)

    (tmp_path / "images" / "a.png").write_bytes(b"this is not an image")
    voc_dataset(tmp_path)
    (tmp_path / "images" / "a.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="corrupt image: .*a.png is not a JPEG"):
        data.from_voc(tmp_path)


def test_truncated_jpeg_is_caught_at_load(tmp_path):
    path = tmp_path / "images" / "a.jpg"
    os.makedirs(path.parent)
    noise = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:-200])
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("filename,class,xmin,ymin,xmax,ymax\na.jpg,dog,1,1,10,10\n")
    with pytest.raises(ValueError, match=r"labels\.csv line 2: corrupt image: cannot be "
                                         "decoded"):
        data.from_csv(csv_file, tmp_path / "images")


def test_check_images_decode_decodes_every_image(tmp_path):
    write_image(tmp_path / "images" / "a.png", 12, 20)
    (tmp_path / "labels.csv").write_text("filename,class,xmin,ymin,xmax,ymax\n"
                                        "a.png,dog,1,1,10,10\n")
    record = data.from_csv(tmp_path / "labels.csv", tmp_path / "images",
                           check_images="decode").records[0]
    assert (record.height, record.width) == (12, 20)
    png = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "a.png").write_bytes(png[:len(png) // 2])
    with pytest.raises(ValueError, match="corrupt image: cannot be decoded"):
        data.from_csv(tmp_path / "labels.csv", tmp_path / "images", check_images="decode")


def test_empty_dataset_raises(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        data.from_voc(tmp_path)
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("filename,class,xmin,ymin,xmax,ymax\n")
    with pytest.raises(ValueError, match=r"empty\.csv: empty dataset"):
        data.from_csv(empty_csv, class_names=["dog"])
    (tmp_path / "yolo" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty dataset"):
        data.from_yolo(tmp_path / "yolo", ["dog"])
    annotation_file, image_dir = coco_fixture(tmp_path / "coco", images=[{"x": 1}],
                                              annotations=[])
    with pytest.raises(ValueError, match="lacks 'id'"):
        data.from_coco(annotation_file, image_dir)


@pytest.mark.parametrize("annotation, message", [
    ({"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}, "missing image: annotation 0 "
                                                              "names image_id 9"),
    ({"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}, "unknown class: annotation 0: "
                                                              "category_id 7"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]}, "x2 <= x1 or y2 <= y1"),
    ({"image_id": 1, "category_id": 1, "bbox": [61, 1, 5, 5]}, "box outside the image"),
])
def test_coco_bad_input(tmp_path, annotation, message):
    annotation_file, image_dir = coco_fixture(tmp_path, annotations=[annotation])
    with pytest.raises(ValueError, match=message) as error:
        data.from_coco(annotation_file, image_dir)
    assert annotation_file in str(error.value)


def test_coco_missing_image_file(tmp_path):
    annotation_file, image_dir = coco_fixture(tmp_path)
    os.remove(os.path.join(image_dir, "b.png"))
    with pytest.raises(ValueError, match=r"instances\.json \(image id 2\): missing image: "
                                         r"file not found: .*b\.png"):
        data.from_coco(annotation_file, image_dir)
    with pytest.warns(DataWarning, match=r"skipped 1 images \(1 missing image\)"):
        assert len(data.from_coco(annotation_file, image_dir, skip_invalid=True)) == 1


@pytest.mark.parametrize("line, message", [
    ("2 0.5 0.5 0.2 0.2", r"unknown class: line 1: 2 is not one of \[0, 1\]"),
    ("0 0.5 0.5 0 0.2", "x2 <= x1 or y2 <= y1: line 1"),
    ("0 1.5 0.5 0.2 0.2", "box outside the image: line 1"),
    ("0 0.5 0.5 0.2", "unparsable annotation: line 1: expected 'class cx cy w h'"),
])
def test_yolo_bad_lines(tmp_path, line, message):
    write_image(tmp_path / "images" / "a.png", 10, 10)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        data.from_yolo(tmp_path, ["x", "y"])
    assert str(tmp_path / "labels" / "a.txt") in str(error.value)


def test_yolo_label_without_image(tmp_path):
    write_image(tmp_path / "images" / "a.png", 10, 10)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"ghost\.txt: missing image: no image ghost\.\*"):
        data.from_yolo(tmp_path, ["x"])


def test_csv_unknown_class_with_class_names(tmp_path):
    write_image(tmp_path / "a.png", 10, 10)
    (tmp_path / "l.csv").write_text("filename,class,xmin,ymin,xmax,ymax\na.png,cat,1,1,5,5\n")
    with pytest.raises(ValueError, match=r"l\.csv: unknown class: line 2 \(a\.png\): 'cat'"):
        data.from_csv(tmp_path / "l.csv", class_names=["dog"])


def test_skip_invalid_counts_in_one_warning(tmp_path):
    write_image(tmp_path / "images" / "good.png", 30, 50)
    write_voc_xml(tmp_path / "annotations" / "good.xml", "good.png", 50, 30, [
        ("dog", 1, 1, 10, 20), ("zebra", 1, 1, 5, 5), ("dog", 20, 1, 10, 10),
        ("dog", 100, 1, 120, 10)])
    write_voc_xml(tmp_path / "annotations" / "lost.xml", "lost.png", 50, 30,
                  [("dog", 1, 1, 10, 20)])
    (tmp_path / "annotations" / "broken.xml").write_text("<annotation><filename>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = data.from_voc(tmp_path, class_names=["dog"], skip_invalid=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1
    assert "skipped 2 images (1 missing image, 1 unparsable annotation) and 3 boxes (" in \
        messages[0]
    assert "1 box outside the image, 1 box with x2 <= x1 or y2 <= y1, 1 unknown class" in \
        messages[0]
    assert dataset.skipped == {
        "images": {"missing image": 1, "unparsable annotation": 1},
        "boxes": {"unknown class": 1, "box with x2 <= x1 or y2 <= y1": 1,
                  "box outside the image": 1}}
    (record,) = dataset.records
    np.testing.assert_array_equal(record.boxes, [[0, 0, 10, 20]])

    os.remove(tmp_path / "annotations" / "good.xml")
    with pytest.warns(DataWarning), pytest.raises(ValueError, match=r"empty dataset, no "
                                                  r"images found \(2 images skipped"):
        data.from_voc(tmp_path, class_names=["dog"], skip_invalid=True)


def test_no_warning_without_skips(tmp_path):
    voc_dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert data.from_voc(tmp_path, skip_invalid=True).skipped == {"images": {},
                                                                     "boxes": {}}


def test_check_images_none_trusts_annotation_size_then_decode_checks_it(tmp_path):
    voc_dataset(tmp_path, size=(30, 50))
    write_voc_xml(tmp_path / "annotations" / "a.xml", "a.png", 80, 60, [("dog", 1, 1, 70, 50)])
    dataset = data.from_voc(tmp_path, check_images="none")
    assert (dataset.records[0].height, dataset.records[0].width) == (60, 80)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a\.png: decoded size differs"):
        first_example(dataset)
    with pytest.raises(ValueError, match="check_images must be one of"):
        data.from_voc(tmp_path, check_images="full")
