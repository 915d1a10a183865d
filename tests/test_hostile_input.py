"""Hostile and careless input: decompression bombs, alias bombs, deep nesting, odd fields."""

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retinanet import atomic, data
from retinanet.data import DataWarning, image_files
from retinanet.data.dataset import MAX_CLASSES, validate_class_names
from retinanet.data.image_header import (DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError,
                                         check_image_pixels, decode_image_within_limit,
                                         encoded_image_size, read_image_size)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOMB_SIDE = 23000  # 529 M pixels: under TensorFlow's 2^29 cap, 1.6 GB as RGB


def png_bomb(side):
    """A valid 1-bit grayscale PNG of side x side zero pixels, built without holding them."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 256) for _ in range(side // 256)]
    parts += [compressor.compress(row * (side % 256)), compressor.flush()]

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb_bytes():
    return png_bomb(BOMB_SIDE)


def write_image(path, height, width, fmt="PNG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), (90, 30, 200)).save(path, format=fmt)
    return str(path)


def write_voc_xml(path, filename, objects, width=50, height=30):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
                   for n, a, b, c, d in objects)
    with open(path, "w") as file:
        file.write(f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
                   f"<height>{height}</height></size>{body}</annotation>")


def write_datasets(root, bomb_bytes):
    """One dataset per reader, each with a good 30x50 image and the bomb ("bomb.png").

    Returns {reader: (callable(**kwargs) -> DetectionDataset, bomb path)}.
    """
    root = str(root)
    readers = {}
    # CSV
    folder = os.path.join(root, "csv")
    write_image(os.path.join(folder, "good.png"), 30, 50)
    with open(os.path.join(folder, "bomb.png"), "wb") as file:
        file.write(bomb_bytes)
    with open(os.path.join(folder, "labels.csv"), "w") as file:
        file.write("filename,class,xmin,ymin,xmax,ymax\ngood.png,dog,1,1,10,10\n"
                   "bomb.png,dog,1,1,10,10\n")
    readers["csv"] = (lambda f=folder, **k: data.from_csv(os.path.join(f, "labels.csv"), **k),
                      os.path.join(folder, "bomb.png"))
    # VOC
    folder = os.path.join(root, "voc")
    write_image(os.path.join(folder, "images", "good.png"), 30, 50)
    with open(os.path.join(folder, "images", "bomb.png"), "wb") as file:
        file.write(bomb_bytes)
    for name in ("good", "bomb"):
        write_voc_xml(os.path.join(folder, "annotations", f"{name}.xml"), f"{name}.png",
                      [("dog", 1, 1, 10, 10)])
    readers["voc"] = (lambda f=folder, **k: data.from_voc(f, **k),
                      os.path.join(folder, "images", "bomb.png"))
    # COCO
    folder = os.path.join(root, "coco")
    write_image(os.path.join(folder, "good.png"), 30, 50)
    with open(os.path.join(folder, "bomb.png"), "wb") as file:
        file.write(bomb_bytes)
    with open(os.path.join(folder, "instances.json"), "w") as file:
        json.dump({"images": [{"id": 1, "file_name": "good.png"},
                              {"id": 2, "file_name": "bomb.png"}],
                   "categories": [{"id": 1, "name": "dog"}],
                   "annotations": [{"id": 1, "image_id": 2, "category_id": 1,
                                    "bbox": [1, 1, 5, 5]}]}, file)
    readers["coco"] = (
        lambda f=folder, **k: data.from_coco(os.path.join(f, "instances.json"), f, **k),
        os.path.join(folder, "bomb.png"))
    # YOLO
    folder = os.path.join(root, "yolo")
    write_image(os.path.join(folder, "images", "good.png"), 30, 50)
    with open(os.path.join(folder, "images", "bomb.png"), "wb") as file:
        file.write(bomb_bytes)
    with open(os.path.join(folder, "classes.txt"), "w") as file:
        file.write("dog\n")
    readers["yolo"] = (lambda f=folder, **k: data.from_yolo(f, **k),
                       os.path.join(folder, "images", "bomb.png"))
    return readers


# ---------------------------------------------------------------------------- image headers


def encoded_samples():
    """(name, encoded bytes) of a 37x53 image in every format decode_image reads."""
    pixels = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    image = Image.fromarray(pixels)
    samples = []
    for name, fmt, options in [
            ("jpeg", "JPEG", {}), ("jpeg_progressive", "JPEG", {"progressive": True}),
            # A 60 KB APP1 segment and an ICC profile: the frame header comes late.
            ("jpeg_exif", "JPEG", {"exif": b"Exif\0\0" + b"\0" * 60000,
                                   "icc_profile": b"\0" * 3000}),
            ("png", "PNG", {}), ("gif", "GIF", {}), ("bmp", "BMP", {}),
            ("webp_lossy", "WEBP", {}), ("webp_lossless", "WEBP", {"lossless": True}),
            ("webp_extended", "WEBP", {"exif": b"Exif\0\0abc"})]:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        samples.append((name, buffer.getvalue()))
    # A top-down BMP stores its height negated.
    bmp = bytearray(dict(samples)["bmp"])
    bmp[22:26] = struct.pack("<i", -37)
    samples.append(("bmp_top_down", bytes(bmp)))
    return samples


@pytest.mark.parametrize("name, encoded", encoded_samples())
def test_header_sizes_match_pillow_and_tensorflow(tmp_path, name, encoded):
    path = tmp_path / "image"
    path.write_bytes(encoded)
    decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    assert tuple(decoded.shape[:2]) == (37, 53)
    if name != "bmp_top_down":  # Pillow reads it too, but cannot write it
        with Image.open(io.BytesIO(encoded)) as image:
            assert image.size == (53, 37)
    assert read_image_size(str(path)) == (37, 53)
    graph = tf.function(encoded_image_size, input_signature=[tf.TensorSpec([], tf.string)],
                        autograph=False)
    np.testing.assert_array_equal(graph(encoded), [37, 53])
    assert encoded_image_size(encoded).dtype == tf.int32


def test_header_sizes_of_the_bomb_and_of_garbage(tmp_path, bomb_bytes):
    assert len(bomb_bytes) < 100_000
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_bytes)
    assert read_image_size(str(path)) == (BOMB_SIDE, BOMB_SIDE)
    np.testing.assert_array_equal(encoded_image_size(bomb_bytes), [BOMB_SIDE, BOMB_SIDE])
    for garbage in (b"", b"BM", b"not an image at all", b"\x89PNG"):
        assert encoded_image_size(garbage).numpy().tolist() in ([-1, -1], [0, 0])
    # A PNG claiming 2^32 - 1 columns: clipped, so an int64 pixel count stays positive.
    huge = bomb_bytes[:16] + struct.pack(">II", 2**32 - 1, 5) + bomb_bytes[24:]
    np.testing.assert_array_equal(encoded_image_size(huge), [5, 2**31 - 1])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match="junk.png: no readable"):
        read_image_size(str(tmp_path / "junk.png"))


def test_pixel_limit_allows_8000_squared_and_refuses_the_bomb():
    assert DEFAULT_MAX_IMAGE_PIXELS >= 64_000_000
    check_image_pixels(8000, 8000, DEFAULT_MAX_IMAGE_PIXELS, "photo.jpg")
    check_image_pixels(BOMB_SIDE, BOMB_SIDE, None, "bomb.png")
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: the header claims "
                                                 r"23000x23000 = 529,000,000 pixels"):
        check_image_pixels(BOMB_SIDE, BOMB_SIDE, DEFAULT_MAX_IMAGE_PIXELS, "bomb.png")


def test_decode_image_within_limit():
    encoded = dict(encoded_samples())["png"]
    assert decode_image_within_limit(encoded).shape == (37, 53, 3)
    graph = tf.function(lambda b: decode_image_within_limit(b, max_pixels=37 * 53 - 1),
                        input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=1960"):
        graph(encoded)


# ---------------------------------------------------------------------------- bombs in readers


@pytest.fixture
def no_decoding(monkeypatch):
    """Makes a full decode, or Pillow's header read, of a file named bomb* fail the test."""
    def guard(function):
        def guarded(path, *args):
            assert not os.path.basename(path).startswith("bomb"), f"{path} reached a decoder"
            return function(path, *args)
        return guarded

    monkeypatch.setattr(image_files, "_tf_decode_size", guard(image_files._tf_decode_size))
    monkeypatch.setattr(image_files, "_header_size", guard(image_files._header_size))


@pytest.mark.parametrize("reader", ["csv", "voc", "coco", "yolo"])
def test_readers_refuse_the_bomb_before_decoding(tmp_path, bomb_bytes, no_decoding, reader):
    read, bomb = write_datasets(tmp_path, bomb_bytes)[reader]
    with pytest.raises(ValueError, match="image over the pixel limit") as error:
        read()
    assert bomb in str(error.value) and "23000x23000" in str(error.value)
    with pytest.raises(ValueError, match="image over the pixel limit"):
        read(check_images="decode")


@pytest.mark.parametrize("reader", ["csv", "voc", "coco", "yolo"])
def test_readers_skip_the_bomb_and_count_it(tmp_path, bomb_bytes, reader):
    read, _ = write_datasets(tmp_path, bomb_bytes)[reader]
    with pytest.warns(DataWarning, match=r"skipped 1 images \(1 image over the pixel limit"):
        dataset = read(skip_invalid=True)
    assert dataset.skipped["images"] == {"image over the pixel limit": 1}
    assert [r.image_id for r in dataset.records] == (["1"] if reader == "coco" else ["good"])
    # A raised limit lets the image through (read from its header, still not decoded).
    assert len(read(max_image_pixels=BOMB_SIDE**2)) == 2
    with pytest.raises(ValueError, match="max_image_pixels must be a positive int"):
        read(max_image_pixels=0)


def test_size_trusted_from_the_annotation_is_capped_too(tmp_path, bomb_bytes):
    read, bomb = write_datasets(tmp_path, bomb_bytes)["voc"]
    write_voc_xml(tmp_path / "voc" / "annotations" / "bomb.xml", "bomb.png",
                  [("dog", 1, 1, 10, 10)], width=BOMB_SIDE, height=BOMB_SIDE)
    with pytest.raises(ValueError, match=r"over the pixel limit: .*bomb\.png \(size from "
                                         "the annotation\\)"):
        read(check_images="none")


def test_probe_image_used_by_predict_refuses_the_bomb(tmp_path, bomb_bytes, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_bytes)
    with pytest.raises(image_files.ImageProblem, match="over the limit") as error:
        image_files.probe_image(str(path))
    assert error.value.kind == image_files.TOO_LARGE_IMAGE


BOMB_SCRIPT = """
import sys
import tensorflow as tf
from retinanet import data
from retinanet.data.image_header import decode_image_within_limit

root = sys.argv[1]
failures = []
def expect(call, match):
    try:
        call()
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        if match not in str(error):
            failures.append(str(error)[:300])
    else:
        failures.append("no error from " + repr(call))

# Every reader, each default path: refused, naming the file.
expect(lambda: data.from_csv(root + "/csv/labels.csv"), "csv/bomb.png")
expect(lambda: data.from_csv(root + "/csv/labels.csv", check_images="decode"), "bomb.png")
expect(lambda: data.from_voc(root + "/voc"), "voc/images/bomb.png")
expect(lambda: data.from_coco(root + "/coco/instances.json", root + "/coco"), "bomb.png")
expect(lambda: data.from_yolo(root + "/yolo"), "yolo/images/bomb.png")
# A lying annotation (check_images="none"): the pipeline checks the header before decoding.
lying = data.from_voc(root + "/lying", check_images="none")
expect(lambda: next(iter(lying.examples)), "its header, read before decoding")
# The serving path.
expect(lambda: decode_image_within_limit(open(root + "/csv/bomb.png", "rb").read()),
       "max_pixels")
print("FAILURES", failures)
sys.exit(1 if failures else 0)
"""


@pytest.mark.slow
def test_bombs_never_reach_a_decoder_peak_memory(tmp_path, bomb_bytes):
    write_datasets(tmp_path, bomb_bytes)
    (tmp_path / "lying" / "images").mkdir(parents=True)
    (tmp_path / "lying" / "images" / "a.png").write_bytes(bomb_bytes)
    write_voc_xml(tmp_path / "lying" / "annotations" / "a.xml", "a.png",
                  [("dog", 1, 1, 10, 10)])
    script = tmp_path / "bomb_script.py"
    script.write_text(textwrap.dedent(BOMB_SCRIPT))
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    with open(tmp_path / "out.txt", "wb") as out:
        process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would mix in earlier ones).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    output = (tmp_path / "out.txt").read_text()
    assert process.returncode == 0, output[-3000:]
    assert "FAILURES []" in output
    peak_gb = usage.ru_maxrss * 1024 / 2**30  # Linux reports KiB
    assert peak_gb < 2.0, f"peak RSS {peak_gb:.2f} GB"


# ---------------------------------------------------------------------------- COCO


def coco_file(tmp_path, images, annotations=(), images_on_disk=("a.png", "b.png")):
    for name in images_on_disk:
        write_image(tmp_path / name, 30, 50)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": list(annotations),
                                "categories": [{"id": 1, "name": "dog"}]}))
    return str(path), str(tmp_path)


def test_coco_duplicate_image_ids(tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"},
              {"id": 2, "file_name": "b.png"}]
    annotations = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                   {"id": 8, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}]
    annotation_file, image_dir = coco_file(tmp_path, images, annotations)
    with pytest.raises(ValueError, match=r"duplicate image id: image entry 1: image id 1 is "
                                         r"used by 'a\.png' and 'b\.png'") as error:
        data.from_coco(annotation_file, image_dir)
    assert annotation_file in str(error.value)
    with pytest.warns(DataWarning, match=r"2 images \(2 duplicate image id\) and 1 boxes"):
        dataset = data.from_coco(annotation_file, image_dir, skip_invalid=True)
    assert [r.image_id for r in dataset.records] == ["2"]
    assert dataset.skipped == {"images": {"duplicate image id": 2},
                               "boxes": {"duplicate image id": 1}}


@pytest.mark.parametrize("images, annotations, message", [
    ([{"id": 1, "file_name": 123}], [],
     r"image entry 0 \(id 1\): 'file_name' must be a non-empty str, got 123"),
    (["a.png"], [], r"image entry 0 is not an object: 'a\.png'"),
    ([{"id": [1], "file_name": "a.png"}], [], r"image entry 0: 'id' must be an int or str"),
    ([{"id": 1, "file_name": "a.png"}], ["oops"],
     r"annotation at index 0 is not an object: 'oops'"),
    ([{"id": 1, "file_name": "a.png"}],
     [{"id": 3, "image_id": [1], "category_id": 1, "bbox": [1, 1, 2, 2]}],
     r"annotation 3 names image_id \[1\], which is not in 'images'"),
])
def test_coco_messages_name_the_entry(tmp_path, images, annotations, message):
    annotation_file, image_dir = coco_file(tmp_path, images, annotations)
    with pytest.raises(ValueError, match=message) as error:
        data.from_coco(annotation_file, image_dir)
    assert annotation_file in str(error.value)


def test_coco_json_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match=r"deep\.json: JSON nested too deeply"):
        data.from_coco(path, tmp_path)


def test_coco_box_messages_quote_the_json(tmp_path):
    annotation_file, image_dir = coco_file(
        tmp_path, [{"id": 1, "file_name": "a.png"}],
        [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [60, 1, 5, 5]}])
    with pytest.raises(ValueError, match=r"annotation 5: bbox \[x, y, w, h\] = \[60, 1, 5, 5\] "
                                         "does not overlap the 50x30 image"):
        data.from_coco(annotation_file, image_dir)


# ---------------------------------------------------------------------------- CSV


def csv_file(tmp_path, text):
    write_image(tmp_path / "a.png", 30, 50)
    path = tmp_path / "labels.csv"
    path.write_text("filename,class,xmin,ymin,xmax,ymax\n" + text)
    return path


def test_csv_field_over_the_limit_is_one_line(tmp_path):
    path = csv_file(tmp_path, "a.png,dog,1,1,5,5\na.png," + "x" * 200_000 + ",1,1,5,5\n")
    with pytest.raises(ValueError, match=r"labels\.csv line 3: malformed CSV: field larger"):
        data.from_csv(path)


def test_csv_unbalanced_quote_says_so(tmp_path):
    path = csv_file(tmp_path, 'a.png,"dog,1,1,5,5\na.png,cat,1,1,5,5\n')
    with pytest.raises(ValueError, match=r"labels\.csv line 2: malformed CSV: .*quote"):
        data.from_csv(path)


def test_csv_class_name_with_control_characters(tmp_path):
    path = csv_file(tmp_path, "a.png,dog,1,1,5,5\na.png,c\0t,1,1,5,5\n")
    with pytest.raises(ValueError, match=r"labels\.csv: invalid class name: line 3 \(a\.png\): "
                                         r"the class name holds the control character '\\x00'"):
        data.from_csv(path)
    with pytest.warns(DataWarning, match="1 invalid class name"):
        dataset = data.from_csv(path, skip_invalid=True)
    assert dataset.class_names == ["dog"]
    path = csv_file(tmp_path, "a.png," + "d" * 300 + ",1,1,5,5\n")
    with pytest.raises(ValueError, match="has 300 characters, over 256"):
        data.from_csv(path)


def test_csv_corrupt_image_names_the_image_and_the_line(tmp_path):
    path = csv_file(tmp_path, "a.png,dog,1,1,5,5\n")
    png = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ValueError, match=r"labels\.csv line 2: corrupt image: cannot be "
                                         "decoded: .*a\\.png"):
        data.from_csv(path)


# ---------------------------------------------------------------------------- class names


def alias_bomb(levels=9):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    last = chr(ord("a") + levels - 1)
    return "\n".join(lines) + f"\nnames: [*{last}]\n"


def test_yolo_yaml_alias_bomb_is_refused(tmp_path):
    write_image(tmp_path / "images" / "a.png", 10, 10)
    text = alias_bomb()
    assert len(text) < 400
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"data\.yaml: cannot be read \(its aliases "
                                         "expand to over"):
        data.from_yolo(tmp_path)
    # Small aliases still load, and a name that is a list is refused.
    (tmp_path / "data.yaml").write_text("base: &n [cat, dog]\nnames: *n\n")
    assert data.from_yolo(tmp_path).class_names == ["cat", "dog"]
    (tmp_path / "data.yaml").write_text("names: [cat, [dog, cow]]\n")
    with pytest.raises(ValueError, match=r"data\.yaml: class name 1 is a list"):
        data.from_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text("a: &a [*a]\nnames: [cat]\n")  # recursive alias
    with pytest.raises(ValueError, match="expand to over"):
        data.from_yolo(tmp_path)


def test_class_name_limits(tmp_path):
    with pytest.raises(ValueError, match=r"class_names\[1\] holds the control character"):
        validate_class_names(["cat", "d\tog"])
    with pytest.raises(ValueError, match="over the limit of 100,000"):
        validate_class_names([f"c{i}" for i in range(MAX_CLASSES + 1)])
    write_image(tmp_path / "images" / "a.png", 10, 10)
    (tmp_path / "classes.txt").write_text("cat\ndo\x07g\n")
    with pytest.raises(ValueError, match=r"classes\.txt\[1\] holds the control character"):
        data.from_yolo(tmp_path)


# ---------------------------------------------------------------------------- VOC boxes


def voc_folder(tmp_path, objects):
    write_image(tmp_path / "images" / "a.png", 30, 50)
    write_voc_xml(tmp_path / "annotations" / "a.xml", "a.png", objects)
    return tmp_path


def test_voc_messages_quote_the_xml_values(tmp_path):
    voc_folder(tmp_path, [("dog", 20, 1, 10, 10)])
    with pytest.raises(ValueError, match=r"object 0 \('dog'\): bndbox xmin=20 ymin=1 "
                                         "xmax=10 ymax=10"):
        data.from_voc(tmp_path)


def test_clipped_boxes_are_counted_and_warned(tmp_path):
    # 1-based (0, 1, 50, 30) is a 0-based stray one pixel out: clipped silently; the
    # second box reaches 4 pixels left and 15 below the 50x30 image.
    voc_folder(tmp_path, [("dog", 0, 1, 50, 30), ("dog", -4, 20, 60, 45)])
    with pytest.warns(DataWarning, match=r"clipped 1 boxes to their image"):
        dataset = data.from_voc(tmp_path)
    assert dataset.clipped == 1
    assert dataset.skipped == {"images": {}, "boxes": {}}
    np.testing.assert_array_equal(dataset.records[0].boxes, [[0, 0, 50, 30], [0, 19, 50, 30]])


# ---------------------------------------------------------------------------- atomic writes


def test_concurrent_atomic_writes_leave_one_whole_text(tmp_path):
    path = str(tmp_path / "config.json")
    texts = ["A" * 50_000, "B" * 70_000]
    errors = []

    def writer(text):
        try:
            for _ in range(100):
                atomic.write_text(path, text)
        except Exception as error:  # noqa: BLE001 - recorded for the assertion
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open(path, encoding="utf-8") as file:
        assert file.read() in texts
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_text(path, "old")
    os.chmod(path, 0o600)
    with pytest.raises(UnicodeEncodeError):
        atomic.write_text(path, "bad \ud800")  # a lone surrogate cannot be UTF-8
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
    atomic.write_text(path, "new")
    assert path.read_text() == "new" and (os.stat(path).st_mode & 0o777) == 0o600


def test_pixel_limit_survives_a_saved_model_round_trip(tmp_path, bomb_bytes):
    """As the SavedModel's serving_bytes uses it: map_fn over a batch, saved and reloaded."""
    def sizes(image_bytes):
        return tf.map_fn(lambda b: tf.shape(decode_image_within_limit(b))[:2], image_bytes,
                         fn_output_signature=tf.TensorSpec([2], tf.int32))

    module = tf.Module()
    module.serve = tf.function(sizes, input_signature=[tf.TensorSpec([None], tf.string)],
                               autograph=False)
    tf.saved_model.save(module, str(tmp_path / "model"))
    serve = tf.saved_model.load(str(tmp_path / "model")).serve
    samples = dict(encoded_samples())
    batch = [samples[name] for name in ("jpeg", "png", "gif", "bmp", "webp_lossy")]
    np.testing.assert_array_equal(serve(tf.constant(batch)), [[37, 53]] * 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=100000000"):
        serve(tf.constant([samples["png"], bomb_bytes]))
