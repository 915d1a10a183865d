"""Tests of retinanet.diagnostics: anchor coverage, anchor fitting, data health, the doctor."""

import json
import math
import os

import numpy as np
import pytest

from retinanet import data
from retinanet.anchors import AnchorGenerator
from retinanet.data.dataset import DetectionDataset
from retinanet.data.validation import Record
from retinanet.diagnostics import (analytic_best_iou, anchor_coverage, data_health,
                                   fit_anchors, run_doctor, scaled_boxes, summary_text)
from retinanet.atomic import json_ready
from retinanet.matching import IoUMatcher, LabelEncoder


def make_record(image_id, boxes, classes=None, height=64, width=64, path=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.zeros(len(boxes), np.int32) if classes is None else np.asarray(classes,
                                                                                np.int32)
    return Record(str(image_id), path, height, width, boxes, classes,
                  np.zeros(len(boxes), bool), np.zeros(len(boxes), bool))


def in_memory(class_names, records):
    images = np.zeros((len(records), records[0].height, records[0].width, 3), np.uint8)
    return DetectionDataset(class_names, records, images=images)


# One 32x32 anchor per location on a stride-8 grid: centres at 4, 12, 20, ...
ONE_ANCHOR = dict(min_level=3, max_level=3, anchor_size=4.0, scales=(1.0,),
                  aspect_ratios=(1.0,))


def test_coverage_by_hand():
    # [4, 4, 36, 36] is the anchor centred at (20, 20): IoU 1. The 32x16 box centred at
    # (20, 52) covers half of the anchor [4, 36, 36, 68]: IoU 512 / 1024 = 0.5, exactly the
    # threshold. The 4x4 box inside [36, 36, 68, 68] has IoU 16 / 1024 at best: not covered,
    # but it claims that anchor as a low-quality match.
    records = [make_record(0, [[4, 4, 36, 36], [4, 44, 36, 60], [50, 50, 54, 54]], [0, 1, 1])]
    result = anchor_coverage(in_memory(["a", "b"], records), AnchorGenerator(**ONE_ANCHOR),
                             image_size=None, positive_iou=0.5, negative_iou=0.4)
    np.testing.assert_allclose(result.best_iou, [1.0, 0.5, 16 / 1024], rtol=1e-6)
    # Anchors containing a smaller box tie; any of them is a best anchor.
    np.testing.assert_allclose(result.best_anchor[0], [4, 4, 36, 36])
    for box, anchor in zip(records[0].boxes[1:], result.best_anchor[1:]):
        assert np.all(anchor[:2] <= box[:2]) and np.all(anchor[2:] >= box[2:])
        np.testing.assert_allclose(anchor[2:] - anchor[:2], [32, 32])
        assert anchor[:2] % 8 == pytest.approx([4, 4])  # centres at 4 + 8k, 16 px away
    assert result.covered.tolist() == [True, True, False]
    assert result.matched_low_quality.tolist() == [True, True, True]
    summary = result.summary
    assert summary["num_boxes"] == 3
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["recall_low_quality"] == 1.0
    assert summary["mean_best_iou"] == pytest.approx((1.5 + 16 / 1024) / 3, rel=1e-6)
    # Areas 1024 (= 32², medium), 512 and 16 (small); no large box gives None, not NaN.
    assert summary["by_size"]["small"]["num_boxes"] == 2
    assert summary["by_size"]["small"]["recall"] == 0.5
    assert summary["by_size"]["medium"]["recall"] == 1.0
    assert summary["by_size"]["large"] == {"num_boxes": 0, "recall": None,
                                           "recall_low_quality": None, "mean_best_iou": None}
    assert summary["by_class"]["a"]["recall"] == 1.0
    assert summary["by_class"]["b"]["recall"] == 0.5
    assert summary["best_iou_percentiles"]["p50"] == pytest.approx(0.5)
    drawn = result.image(0)
    # Padded to the anchors' own multiple (2**max_level = 8): the 64 px image stays 64.
    assert drawn["canvas"] == (64, 64) and drawn["scale"] == 1.0
    assert result.worst_images(5) == [0]


def test_coverage_uses_the_pipeline_resize():
    # image_size=128 doubles a 64x64 image: the 16x16 box at (2, 2) becomes the anchor
    # [4, 4, 36, 36]. Without resizing it has IoU 256 / 1024 with its best anchor.
    records = [make_record(0, [[2, 2, 18, 18]])]
    generator = AnchorGenerator(**ONE_ANCHOR)
    assert anchor_coverage(records, generator, 128).best_iou[0] == pytest.approx(1.0)
    assert anchor_coverage(records, generator, None).best_iou[0] == pytest.approx(0.25)
    scaled = scaled_boxes(records, (96, 128))  # short side 64 -> 96: scale 1.5
    np.testing.assert_allclose(scaled.boxes, [[3, 3, 27, 27]])
    assert scaled.canvas.tolist() == [[128, 128]]


def random_records(seed, num_images=12, size=160):
    rng = np.random.default_rng(seed)
    records = []
    for index in range(num_images):
        boxes = []
        for _ in range(rng.integers(0, 7)):
            width, height = rng.uniform(3, 90, size=2)
            x, y = rng.uniform(0, size - width), rng.uniform(0, size - height)
            boxes.append((x, y, x + width, y + height))
        records.append(make_record(index, boxes, height=size, width=size))
    return records


@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_agrees_with_the_matcher_and_box_iou(seed):
    import tensorflow as tf

    from retinanet import ops

    records = random_records(seed)
    generator = AnchorGenerator()
    result = anchor_coverage(records, generator, 160, positive_iou=0.5, negative_iou=0.4)
    matcher = IoUMatcher(allow_low_quality_matches=True)
    positives, best = [], []
    for record in records:
        if not len(record):
            continue
        anchors = generator(256, 256)  # 160 rounds up to a 256 canvas
        boxes = tf.constant(record.boxes[None])
        matched_index, states = matcher(anchors, boxes, tf.zeros([1, len(record)], tf.int32))
        claimed = set(matched_index[0].numpy()[states[0].numpy() == 1].tolist())
        positives += [index in claimed for index in range(len(record))]
        best += ops.box_iou(record.boxes, anchors).numpy().max(axis=1).tolist()
    assert result.matched_low_quality.tolist() == positives
    np.testing.assert_allclose(result.best_iou, best, atol=1e-6)
    assert result.summary["recall_low_quality"] == pytest.approx(np.mean(positives))
    # The closed formula the fitting searches with gives the same best IoUs.
    analytic = analytic_best_iou(result.scaled.boxes, result.scaled.canvas, 3, 7,
                                 [generator.anchor_size], generator.scales,
                                 generator.aspect_ratios)[:, 0]
    np.testing.assert_allclose(analytic, result.best_iou, atol=1e-5)


def tall_thin_records(num_images=40, size=256, seed=0):
    """Boxes with height / width between 4.5 and 5.5 (1:5), 12 to 44 px wide
    (narrower boxes can sit 4 px off every stride-8 centre, which no anchor shape fixes)."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(num_images):
        boxes = []
        for _ in range(4):
            width = rng.uniform(12, 44)
            height = width * rng.uniform(4.5, 5.5)
            x, y = rng.uniform(0, size - width), rng.uniform(0, size - height)
            boxes.append((x, y, x + width, y + height))
        records.append(make_record(index, boxes, height=size, width=size))
    return records


def test_fit_anchors_to_tall_thin_boxes():
    from absl import flags
    from ml_collections import config_dict, config_flags

    records = tall_thin_records()
    generator = AnchorGenerator()
    fit = fit_anchors(records, generator, 256)
    # A 1:5 box has IoU under 0.47 with any 1:2 anchor: the defaults cover almost none.
    assert fit["before"]["recall"] < 0.2
    assert fit["improved"]
    after = fit["after"]
    assert after["recall"] >= 0.98
    assert after["mean_best_iou"] > fit["before"]["mean_best_iou"]
    assert after["num_anchors_per_location"] == 9
    assert len(after["scales"]) == 3 and len(after["aspect_ratios"]) == 3
    assert max(after["aspect_ratios"]) > 3  # tall anchors (ratio is height / width)
    # The reported recall is that of the real coverage with the fitted values.
    fitted = AnchorGenerator(anchor_size=after["anchor_size"], scales=after["scales"],
                             aspect_ratios=after["aspect_ratios"])
    assert anchor_coverage(records, fitted, 256).summary["recall"] == after["recall"]
    # The overrides parse with ml_collections' config_flags into exactly the fitted values.
    config = config_dict.ConfigDict({"model": {"anchors": {
        "anchor_size": 4.0, "scales": (1.0, 1.26, 1.587), "aspect_ratios": (0.5, 1.0, 2.0)}}})
    flag_values = flags.FlagValues()
    argv = ["retinanet"] + fit["overrides"]
    # config_flags defines the override flags from the argv it sees at definition time.
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    anchors = flag_values.config.model.anchors
    assert anchors.anchor_size == after["anchor_size"]
    assert anchors.scales == tuple(after["scales"])
    assert anchors.aspect_ratios == tuple(after["aspect_ratios"])


def test_fit_anchors_limits():
    records = tall_thin_records(num_images=6)
    with pytest.raises(ValueError, match="max_anchors_per_location"):
        fit_anchors(records, AnchorGenerator(), 256, max_anchors_per_location=4)
    with pytest.raises(ValueError, match="0 boxes are too few"):
        fit_anchors([make_record(0, [])], AnchorGenerator(), 256)


def write_png(path, color, size=(40, 48)):
    from PIL import Image

    Image.fromarray(np.full(size + (3,), color, np.uint8)).save(path)


def test_data_health_counts_and_names(tmp_path):
    write_png(tmp_path / "a.png", 10)
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())  # duplicate of a
    write_png(tmp_path / "c.png", 30)
    write_png(tmp_path / "d.png", 40)
    write_png(tmp_path / "e.png", 50)
    (tmp_path / "f.png").write_bytes(b"not an image")
    rows = ["filename,class,xmin,ymin,xmax,ymax",
            "a.png,cat,1,1,20,20", "b.png,cat,1,1,20,20",
            "c.png,,,,,",  # no boxes
            "d.png,dog,5,5,8,30",  # 3 px wide: tiny
            "e.png,cat,1,1,10,10", "e.png,dog,2,2,12,12", "e.png,cat,3,3,14,14",
            "e.png,cat,9,9,4,20",  # x2 < x1: degenerate, skipped by the reader
            "f.png,cat,1,1,5,5",  # unreadable
            "g.png,cat,1,1,5,5"]  # missing
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(data.DataWarning, match="skipped 2 images"):
        dataset = data.from_csv(tmp_path / "boxes.csv", skip_invalid=True, one_based=False)
    # The reader's counts compare as before; the culprits ride along in `files`.
    assert dataset.skipped == {"images": {"corrupt image": 1, "missing image": 1},
                               "boxes": {"box with x2 <= x1 or y2 <= y1": 1}}
    report = data_health(dataset, image_size=None, max_boxes=2)
    assert report["num_images"] == 5 and report["num_boxes"] == 6
    unreadable = report["unreadable_images"]
    assert unreadable["count"] == 2
    assert any("f.png" in name for name in unreadable["files"])
    assert any("g.png" in name for name in unreadable["files"])
    duplicates = report["duplicate_images"]
    assert duplicates["count"] == 1 and duplicates["num_groups"] == 1
    assert [os.path.basename(p) for p in duplicates["groups"][0]] == ["a.png", "b.png"]
    assert [os.path.basename(p) for p in report["empty_images"]["files"]] == ["c.png"]
    assert report["empty_images"]["count"] == 1
    assert report["tiny_boxes"]["count"] == 1
    assert [os.path.basename(p) for p in report["tiny_boxes"]["files"]] == ["d.png"]
    assert report["too_many_boxes"]["count"] == 1
    assert [os.path.basename(p) for p in report["too_many_boxes"]["files"]] == ["e.png"]
    assert report["too_many_boxes"]["most_boxes"] == 3
    assert report["degenerate_boxes"]["count"] == 1
    assert "line 9" in report["degenerate_boxes"]["files"][0]
    assert report["outside_boxes"]["count"] == 0
    assert report["class_balance"] == {"cat": {"boxes": 4, "images": 3},
                                       "dog": {"boxes": 2, "images": 2}}
    # Judged at the training size: doubled, the 3 px box is no longer tiny.
    assert data_health(dataset, image_size=96, max_boxes=2)["tiny_boxes"]["count"] == 0


def test_data_health_caps_the_names():
    records = [make_record(i, []) for i in range(30)]
    report = data_health(in_memory(["a"], records), None, max_boxes=10, max_names=5)
    assert report["empty_images"]["count"] == 30
    assert report["empty_images"]["files"] == ["0", "1", "2", "3", "4"]
    assert report["num_not_hashed"] == 30


def test_run_doctor_writes_strict_json_markdown_and_plots(tmp_path):
    dataset = data.shapes(num_images=12, size=128, seed=0)
    generator = AnchorGenerator()
    encoder = LabelEncoder(generator)
    report = run_doctor(dataset, generator, encoder, image_size=128, max_boxes=4,
                        output_dir=str(tmp_path), fit_anchors=True, verbose=0)
    names = sorted(os.listdir(tmp_path))
    assert names == ["aspect_ratios.png", "box_sizes.png", "report.json", "report.md"]
    for name in ("aspect_ratios.png", "box_sizes.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def reject(constant):
        raise ValueError(f"not strict JSON: {constant}")

    written = json.loads((tmp_path / "report.json").read_text(), parse_constant=reject)
    assert written == report
    assert report["coverage"]["num_boxes"] == sum(len(r) for r in dataset.records)
    assert report["anchor_fit"]["after"]["recall"] >= report["anchor_fit"]["before"]["recall"]
    markdown = (tmp_path / "report.md").read_text()
    assert "## Anchor coverage" in markdown and "![box_sizes](box_sizes.png)" in markdown
    text = summary_text(report)
    assert "12 images" in text and "\n" not in text
    if report["health"]["too_many_boxes"]["count"]:
        assert any("max_boxes" in error for error in report["errors"])


def test_json_ready_makes_strict_json():
    value = json_ready({"a": float("nan"), "b": [np.float32(0.5), np.int64(3), math.inf],
                        "c": np.array([True, False])})
    assert value == {"a": None, "b": [0.5, 3, None], "c": [True, False]}
    json.dumps(value, allow_nan=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_matching_in_chunks_gives_the_same_best_ious(seed, monkeypatch):
    from retinanet.diagnostics import coverage as coverage_lib

    records = random_records(seed)
    whole = anchor_coverage(records, AnchorGenerator(), 160)
    monkeypatch.setattr(coverage_lib, "MAX_IOU_ELEMENTS", 64)  # one or two boxes a chunk
    monkeypatch.setattr(coverage_lib, "ANALYTIC_CHUNK", 3)
    chunked = anchor_coverage(records, AnchorGenerator(), 160)
    np.testing.assert_array_equal(chunked.best_iou, whole.best_iou)
    np.testing.assert_array_equal(chunked.covered, whole.covered)
    assert chunked.summary["recall"] == whole.summary["recall"]


def test_an_image_over_the_box_cap_is_named_and_its_extra_boxes_counted(monkeypatch):
    from retinanet.diagnostics import coverage as coverage_lib

    monkeypatch.setattr(coverage_lib, "MAX_MATCHED_BOXES_PER_IMAGE", 2)
    # The third box of "crowded" has no anchor near its shape: measured, it would lower the
    # recall to 4 / 5; past the cap it is counted and left out.
    crowded = make_record("crowded", [[4, 4, 36, 36], [4, 4, 36, 36], [0, 0, 2, 60]])
    plain = make_record("plain", [[4, 4, 36, 36], [36, 36, 68, 68]], height=72, width=72)
    result = anchor_coverage([crowded, plain], AnchorGenerator(**ONE_ANCHOR), None)
    assert result.summary["unmeasured"] == {"boxes": 1, "images": ["crowded"]}
    assert result.summary["num_boxes"] == 5
    assert result.summary["recall"] == 1.0
    assert result.summary["by_class"]["0"]["num_boxes"] == 4


@pytest.mark.slow
def test_the_doctor_on_a_million_boxes_in_one_image_stays_within_memory(tmp_path):
    """`doctor --fit_anchors` on a label file of 10^6 lines, with the address space capped at
    6 GB (the uncapped IoU matrix needs far more: the old code aborted with bad_alloc)."""
    import resource
    import subprocess
    import sys

    from PIL import Image

    root = tmp_path / "crowd"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "images" / "crowd.png")
    rng = np.random.default_rng(0)
    rows = np.column_stack([np.zeros(10**6), rng.uniform(0.2, 0.8, (10**6, 2)),
                            rng.uniform(0.05, 0.3, (10**6, 2))])
    np.savetxt(root / "labels" / "crowd.txt", rows, fmt=["%d", "%.4f", "%.4f", "%.4f", "%.4f"])
    (root / "classes.txt").write_text("thing\n")

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    result = subprocess.run(
        [sys.executable, "-m", "retinanet", "doctor", "--config=tiny", "--verbose=0",
         "--config.data.format=yolo", f"--config.data.train={root}", "--fit_anchors",
         f"--output={tmp_path / 'report'}"],
        capture_output=True, text=True, timeout=600, preexec_fn=cap_memory)
    # Exit 1: an image over max_boxes is an error (training would fail on it), not a crash.
    assert result.returncode == 1, result.stderr[-2000:]
    assert "more boxes than max_boxes=4" in result.stdout
    assert "990000 boxes were not matched to anchors" in result.stdout
    assert "(crowd)" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["coverage"]["num_boxes"] == 10**6
    assert report["coverage"]["unmeasured"] == {"boxes": 990_000, "images": ["crowd"]}


def test_too_few_boxes_fit_no_anchors(tmp_path):
    records = [make_record(0, [[4, 4, 36, 20]])]
    with pytest.raises(ValueError, match="1 boxes are too few to fit anchors to"):
        fit_anchors(records, AnchorGenerator(), None)
    generator = AnchorGenerator()
    report = run_doctor(in_memory(["a"], records), generator, LabelEncoder(generator),
                        image_size=None, max_boxes=4, output_dir=str(tmp_path),
                        fit_anchors=True, verbose=0)
    assert report["anchor_fit"] is None
    assert any(finding.startswith("Anchors not fitted: 1 boxes are too few")
               for finding in report["findings"])
