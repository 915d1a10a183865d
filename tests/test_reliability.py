"""Messy data at scale: corrupt, empty, degenerate, off-image, huge and tiny images."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from retinanet import data


def _write_voc(root, name, size, boxes, image_bytes=None):
    """One image (or raw bytes) with a VOC annotation of ``boxes`` (xyxy, VOC 1-based)."""
    width, height = size
    image_path = os.path.join(root, "images", f"{name}.jpg")
    if image_bytes is not None:
        with open(image_path, "wb") as file:
            file.write(image_bytes)
    else:
        colour = (40, 80, 120)
        Image.new("RGB", (width, height), colour).save(image_path, quality=80)
    objects = "".join(
        f"<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for label, (x1, y1, x2, y2) in boxes
    )
    annotation = (
        f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )
    with open(os.path.join(root, "annotations", f"{name}.xml"), "w") as file:
        file.write(annotation)


@pytest.fixture(scope="module")
def messy_voc(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("messy"))
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "annotations"))
    for i in range(6):
        _write_voc(root, f"good_{i}", (160, 120), [("cat", (10, 10, 80, 90))])
    _write_voc(root, "corrupt", (160, 120), [("cat", (10, 10, 80, 90))], b"\xff\xd8\xffnot a jpeg")
    _write_voc(root, "no_boxes", (160, 120), [])
    _write_voc(root, "degenerate", (160, 120), [("cat", (50, 10, 40, 90))])
    _write_voc(root, "off_image", (160, 120), [("cat", (500, 500, 600, 600))])
    _write_voc(root, "huge", (8000, 8000), [("cat", (100, 100, 7000, 7900))])
    _write_voc(root, "tiny", (8, 8), [("cat", (1, 1, 8, 8))])
    return root


def test_without_skip_invalid_the_first_bad_item_names_its_file(messy_voc):
    with pytest.raises(ValueError, match=r"corrupt\.(jpg|xml)"):
        data.from_voc(messy_voc)


@pytest.mark.slow
def test_with_skip_invalid_it_trains_and_reports_counts(messy_voc, tiny_retinanet):
    with pytest.warns(data.DataWarning, match="skipped"):
        dataset = data.from_voc(messy_voc, skip_invalid=True)
    skipped_images = sum(dataset.skipped["images"].values())
    skipped_boxes = sum(dataset.skipped["boxes"].values())
    # The corrupt image goes; the degenerate and the off-image box go, their images stay.
    assert skipped_images == 1 and skipped_boxes == 2
    ids = {record.image_id for record in dataset.records}
    assert {"huge", "tiny", "no_boxes", "degenerate", "off_image"} <= ids
    assert len(dataset) == 11

    model = tiny_retinanet()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = data.pipeline(dataset, mode="train", batch_size=4, image_size=128, seed=0)
    history = model.fit(batches, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
