"""Ultralytics datasets as their users have them: `data.yaml` with train/val folders or image
lists, train/val overlap refused, and the doctor naming label errors."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from retinanet import config as rconfig
from retinanet import data
from retinanet.data.overlap import overlapping_images
from retinanet.data.yolo import label_path, read_data_yaml
from retinanet.training import datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]


def ultralytics_dataset(root, names_yaml="names:\n  0: cat\n  1: dog\n", val="images/val"):
    """root/images/{train,val}/*.png and root/labels/{train,val}/*.txt, and data.yaml.

    train: a.png (a cat at the centre, 20 x 10 px of 40 x 40), b.png (a dog); val: c.png.
    """
    rng = np.random.default_rng(0)
    for split, files in (("train", {"a": "0 0.5 0.5 0.5 0.25", "b": "1 0.25 0.25 0.5 0.5"}),
                         ("val", {"c": "1 0.5 0.5 0.5 0.5"})):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem, line in files.items():
            pixels = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{stem}.png")
            (root / "labels" / split / f"{stem}.txt").write_text(line + "\n")
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: {val}\n{names_yaml}")
    return root / "data.yaml"


def yolo_config(**data_fields):
    config = rconfig.default_config()
    config.data.format = "yolo"
    config.data.image_size = 128
    for key, value in data_fields.items():
        config.data[key] = value
    return config


def test_label_path_is_ultralytics_rule():
    assert label_path(os.path.join("/d", "images", "train", "a.jpg")) == \
        os.path.join("/d", "labels", "train", "a.txt")
    # Only the last /images/ changes.
    assert label_path(os.path.join("/images", "x", "images", "a.png")) == \
        os.path.join("/images", "x", "labels", "a.txt")


@pytest.mark.parametrize("names_yaml", ["names:\n  0: cat\n  1: dog\n", "names: [cat, dog]\n",
                                        "names:\n  - cat\n  - dog\n"])
def test_data_yaml_folders_and_names_in_each_form(tmp_path, names_yaml):
    path = ultralytics_dataset(tmp_path, names_yaml)
    assert read_data_yaml(path)["names"] == ["cat", "dog"]
    train = data.from_data_yaml(path, "train")
    assert train.class_names == ["cat", "dog"]
    assert [r.image_id for r in train.records] == [os.path.join("images", "train", "a"),
                                                  os.path.join("images", "train", "b")]
    # 0.5 0.5 0.5 0.25 of 40 x 40: x 10..30, y 15..25.
    np.testing.assert_allclose(train.records[0].boxes, [[10, 15, 30, 25]])
    assert train.records[1].classes.tolist() == [1]
    val = data.from_data_yaml(path, "val")
    assert len(val) == 1 and val.records[0].classes.tolist() == [1]


def test_data_yaml_image_lists(tmp_path):
    ultralytics_dataset(tmp_path)
    (tmp_path / "train.txt").write_text("./images/train/a.png\n" +
                                        str(tmp_path / "images" / "train" / "b.png") + "\n")
    (tmp_path / "lists.yaml").write_text(f"path: {tmp_path}\ntrain: train.txt\n"
                                         "val: [images/val]\nnames: [cat, dog]\n")
    train = data.from_data_yaml(tmp_path / "lists.yaml", "train")
    assert [os.path.basename(r.path) for r in train.records] == ["a.png", "b.png"]
    (tmp_path / "bad.yaml").write_text("train: nowhere\nnames: [cat]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: .*nowhere is neither a folder nor a "
                                         r"\.txt list"):
        data.from_data_yaml(tmp_path / "bad.yaml", "train")


def test_the_config_takes_a_data_yaml_and_its_val(tmp_path):
    path = ultralytics_dataset(tmp_path)
    splits = datasets.load_datasets(yolo_config(train=str(path)))
    assert (len(splits["train"]), len(splits["val"])) == (2, 1)
    assert splits["val"].records[0].path.endswith(os.path.join("val", "c.png"))


def test_train_and_val_on_the_same_images_is_refused(tmp_path):
    ultralytics_dataset(tmp_path)
    same = yolo_config(train=str(tmp_path), val=str(tmp_path))
    with pytest.raises(rconfig.ConfigError, match=r"config\.data\.val: 3 of its 3 images are "
                                                  r"also training images .*same file.*"
                                                  r"allow_overlap=true"):
        datasets.load_datasets(same)
    same.data.allow_overlap = True
    assert len(datasets.load_datasets(same)["val"]) == 3


def test_a_copied_image_in_val_is_found_by_its_bytes(tmp_path):
    ultralytics_dataset(tmp_path)
    copy = tmp_path / "images" / "val" / "copy_of_a.png"
    copy.write_bytes((tmp_path / "images" / "train" / "a.png").read_bytes())
    train = data.from_data_yaml(tmp_path / "data.yaml", "train")
    val = data.from_data_yaml(tmp_path / "data.yaml", "val")
    assert overlapping_images(train.records, val.records) == [
        (str(tmp_path / "images" / "train" / "a.png"), str(copy), "same bytes")]
    with pytest.raises(rconfig.ConfigError, match=r"1 of its 2 images .*same bytes"):
        datasets.load_datasets(yolo_config(train=str(tmp_path / "data.yaml")))


def doctor(*args):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "retinanet", "doctor", "--config=tiny",
                           "--verbose=0", "--config.data.format=yolo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=environment)


@pytest.mark.slow
def test_the_doctor_names_label_errors_and_exits_non_zero(tmp_path):
    path = ultralytics_dataset(tmp_path)
    label = tmp_path / "labels" / "train" / "b.txt"
    label.write_text("1 0.25 0.25 0.5 0.5\n7 0.5 0.5 0.1 0.1\nnot a box\n")
    result = doctor(f"--config.data.train={path}", f"--output={tmp_path / 'report'}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"2 label errors: {label}: line 3: expected 'class cx cy w h', got 'not a box' " \
           "(unparsable annotation)" in result.stdout
    assert f"{label}: line 2: 7 is not one of" in result.stdout
    assert "(unknown class)" in result.stdout
    # Fixed, only warnings remain: exit 0.
    label.write_text("1 0.25 0.25 0.5 0.5\n")
    clean = doctor(f"--config.data.train={path}", f"--output={tmp_path / 'report2'}")
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert "errors:" not in clean.stdout


@pytest.mark.slow
def test_the_doctor_reports_train_val_overlap_and_names_both_duplicates(tmp_path):
    ultralytics_dataset(tmp_path)
    a = tmp_path / "images" / "train" / "a.png"
    (tmp_path / "images" / "train" / "a_again.png").write_bytes(a.read_bytes())
    result = doctor(f"--config.data.train={tmp_path}", f"--config.data.val={tmp_path}",
                    f"--output={tmp_path / 'report'}")
    assert result.returncode == 1
    assert "validation images are also training images" in result.stdout
    assert f"{a} = {tmp_path / 'images' / 'train' / 'a_again.png'}" in result.stdout
