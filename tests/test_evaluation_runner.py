"""evaluate() over an eval tf.data, the Keras callback, and the written reports."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from retinanet.evaluation import (
    COCOEvaluator,
    EvaluationCallback,
    VOCEvaluator,
    evaluate,
    flatten_metrics,
    format_table,
    split_batch,
    write_report,
)

INPUT = 128  # input images are INPUT x INPUT
MAX_GT = 6
MAX_DET = 8


def _make_dataset(examples, batch_size=3):
    """Eval batches as in docs/CONTRACTS.md. Pixel [0, 0, 0] carries the image's index so a fake
    model can look its detections up. Scales are powers of two: box scaling is exact."""
    images, boxes, classes, crowd, difficult, ids, scales, sizes = ([] for _ in range(8))
    for index, example in enumerate(examples):
        height, width = example["size"]
        scale = example["scale"]
        image = np.zeros((INPUT, INPUT, 3), np.float32)
        image[0, 0, 0] = index
        images.append(image)
        count = len(example["gt_classes"])
        padded = -np.ones((MAX_GT, 4), np.float32)
        padded[:count] = np.asarray(example["gt_boxes"], np.float32).reshape(-1, 4) * scale
        boxes.append(padded)
        padded_classes = -np.ones((MAX_GT,), np.int32)
        padded_classes[:count] = example["gt_classes"]
        classes.append(padded_classes)
        flags = np.zeros((MAX_GT,), bool)
        flags[:count] = example.get("crowd", [False] * count)
        crowd.append(flags)
        flags = np.zeros((MAX_GT,), bool)
        flags[:count] = example.get("difficult", [False] * count)
        difficult.append(flags)
        ids.append(example["id"])
        scales.append(scale)
        sizes.append([height, width])
    targets = {
        "boxes": np.stack(boxes), "classes": np.stack(classes), "image_id": np.array(ids),
        "scale": np.asarray(scales, np.float32), "original_size": np.asarray(sizes, np.int32),
        "is_crowd": np.stack(crowd), "difficult": np.stack(difficult),
    }
    return tf.data.Dataset.from_tensor_slices((np.stack(images), targets)).batch(batch_size)


class LookupModel:
    """A stand-in detector: returns, per image, the detections stored for it (original pixels),
    scaled into input pixels. Slots past num_detections hold junk (a confident class-0 box) to
    prove evaluate() cuts them off."""

    def __init__(self, examples):
        self.examples = examples

    def predict_on_batch(self, images):
        indices = np.asarray(images)[:, 0, 0, 0].astype(int)
        batch = len(indices)
        boxes = np.tile(np.float32([0, 0, 50, 50]), (batch, MAX_DET, 1))
        scores = np.full((batch, MAX_DET), 0.99, np.float32)
        classes = np.zeros((batch, MAX_DET), np.int32)
        counts = np.zeros((batch,), np.int32)
        for row, index in enumerate(indices):
            example = self.examples[index]
            dets = np.asarray(example["det_boxes"], np.float32).reshape(-1, 4) * example["scale"]
            count = len(dets)
            boxes[row, :count] = dets
            scores[row, :count] = example["det_scores"]
            classes[row, :count] = example["det_classes"]
            counts[row] = count
        return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": counts}


def _examples(seed=0, count=7):
    rng = np.random.default_rng(seed)
    sizes = [((256, 200), 0.5), ((512, 300), 0.25), ((64, 40), 2.0)]
    examples = []
    for index in range(count):
        (height, width), scale = sizes[index % 3]
        num_gt = int(rng.integers(0, 5)) if index else 0  # the first image has no objects
        xy = rng.uniform(0, 0.6, size=(num_gt, 2)) * [width, height]
        wh = rng.uniform(0.1, 0.4, size=(num_gt, 2)) * [width, height]
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        dets = gt_boxes + rng.normal(0, 0.05, size=gt_boxes.shape) * np.tile(wh, 2)
        dets = np.concatenate([dets, [[-10, -10, width + 10, height * 0.5]]])  # spills outside
        corners = (np.minimum(dets[:, :2], dets[:, 2:]), np.maximum(dets[:, :2], dets[:, 2:]))
        dets = np.concatenate(corners, axis=1)
        examples.append({
            "id": f"photo_{index}", "size": (height, width), "scale": scale,
            "gt_boxes": gt_boxes, "gt_classes": rng.integers(0, 3, size=num_gt),
            "crowd": rng.random(num_gt) < 0.2, "difficult": rng.random(num_gt) < 0.2,
            "det_boxes": dets, "det_scores": rng.random(len(dets)),
            "det_classes": rng.integers(0, 3, size=len(dets)),
        })
    return examples


def test_split_batch_hand_worked():
    # scale 0.5, original 20 x 30 (h x w). gt [2, 2, 10, 10] -> [4, 4, 20, 20]; a detection
    # [0, 0, 20, 15] -> [0, 0, 40, 30] -> clipped to [0, 0, 30, 20]; padding is dropped.
    targets = {
        "boxes": np.float32([[[2, 2, 10, 10], [-1, -1, -1, -1]]]),
        "classes": np.int32([[1, -1]]),
        "image_id": np.array([b"im"]),
        "scale": np.float32([0.5]),
        "original_size": np.int32([[20, 30]]),
    }
    detections = {
        "boxes": np.float32([[[0, 0, 20, 15], [0, 0, 0, 0]]]),
        "scores": np.float32([[0.7, 0]]),
        "classes": np.int32([[2, -1]]),
        "num_detections": np.int32([1]),
    }
    (image,) = split_batch(targets, detections)
    assert image["image_id"] == b"im"
    np.testing.assert_array_equal(image["gt_boxes"], [[4, 4, 20, 20]])
    np.testing.assert_array_equal(image["gt_classes"], [1])
    np.testing.assert_array_equal(image["det_boxes"], [[0, 0, 30, 20]])
    np.testing.assert_array_equal(image["det_classes"], [2])
    assert image["gt_iscrowd"] is None


def test_evaluate_maps_boxes_back_and_matches_direct_evaluators():
    examples = _examples()
    names = ["a", "b", "c"]
    results = evaluate(LookupModel(examples), _make_dataset(examples), class_names=names,
                       verbose=0)
    coco, voc = COCOEvaluator(class_names=names), VOCEvaluator(class_names=names)
    for example in examples:
        height, width = example["size"]
        dets = np.asarray(example["det_boxes"], np.float32).astype(np.float64)
        dets = np.clip(dets, 0, [width, height, width, height])
        gt = np.asarray(example["gt_boxes"], np.float32).astype(np.float64).reshape(-1, 4)
        for evaluator in (coco, voc):
            evaluator.update(example["id"], gt, example["gt_classes"], dets,
                             np.float32(example["det_scores"]), example["det_classes"],
                             gt_iscrowd=example["crowd"], gt_difficult=example["difficult"])
    expected_coco, expected_voc = coco.result(), voc.result()
    for key in ("AP", "AP50", "AR100", "APs", "APl"):
        assert results["coco"][key] == expected_coco[key], key
    assert results["voc"]["mAP"] == expected_voc["mAP"]
    assert results["coco"]["per_class"]["b"]["num_gt"] == expected_coco["per_class"]["b"]["num_gt"]
    assert 0 < results["coco"]["AP"] < 1


def test_perfect_and_empty_detectors():
    examples = _examples(seed=1)
    for example in examples:
        count = len(example["gt_classes"])
        example.update(det_boxes=example["gt_boxes"], det_scores=np.full(count, 0.9),
                       det_classes=example["gt_classes"], crowd=[False] * count,
                       difficult=[False] * count)
    results = evaluate(LookupModel(examples), _make_dataset(examples), verbose=0)
    assert results["coco"]["AP"] == pytest.approx(1.0, abs=1e-9)
    assert results["voc"]["mAP"] == 1.0
    for example in examples:
        example.update(det_boxes=np.zeros((0, 4)), det_scores=[], det_classes=[])
    results = evaluate(LookupModel(examples), _make_dataset(examples), voc=False, verbose=0)
    assert results["coco"]["AP"] == 0.0 and "voc" not in results


def test_evaluate_progress_bar_and_steps(capsys):
    examples = _examples(count=6)
    dataset = _make_dataset(examples, batch_size=2)
    results = evaluate(LookupModel(examples), dataset, steps=1, coco=False, verbose=0)
    assert capsys.readouterr().out == ""
    # only the first batch (2 images) was evaluated
    num_gt = sum(int(np.sum(~(np.asarray(e["crowd"]) | np.asarray(e["difficult"]))))
                 for e in examples[:2])
    assert sum(entry["num_gt"] for entry in results["voc"]["per_class"].values()) == num_gt
    evaluate(LookupModel(examples), dataset, coco=False, verbose=1)
    assert "3/3" in capsys.readouterr().out
    with pytest.raises(ValueError, match="infinite"):
        evaluate(LookupModel(examples), dataset.repeat(), verbose=0)


class ToyDetector(keras.Model):
    """Trains a throwaway dense layer; predicts one box [8, 8, 24, 24] of class 0 per image."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, images):
        return self.dense(keras.ops.mean(images, axis=(1, 2)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.ops.square(y_pred - y))

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        batch = keras.ops.shape(images)[0]
        return {
            "boxes": keras.ops.tile(
                keras.ops.convert_to_tensor([[[8.0, 8.0, 24.0, 24.0]]]), [batch, 1, 1]
            ),
            "scores": keras.ops.ones((batch, 1)),
            "classes": keras.ops.zeros((batch, 1), dtype="int32"),
            "num_detections": keras.ops.ones((batch,), dtype="int32"),
        }


def test_callback_puts_metrics_in_history_and_checkpoint(tmp_path):
    # Eval images are 32 x 32, scaled 0.5 from 64 x 64 originals whose object is [16, 16, 48, 48]
    # -> the toy's [8, 8, 24, 24] maps back onto it exactly: AP = 1 (pycocotools: 1 - 2e-16).
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    targets = {
        "boxes": np.tile(np.float32([[[8, 8, 24, 24], [-1, -1, -1, -1]]]), (4, 1, 1)),
        "classes": np.tile(np.int32([[0, -1]]), (4, 1)),
        "image_id": np.array([f"val{i}" for i in range(4)]),
        "scale": np.full((4,), 0.5, np.float32),
        "original_size": np.tile(np.int32([[64, 64]]), (4, 1)),
    }
    eval_dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(2)
    train_dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros((4, 1), np.float32))
    ).batch(2)
    model = ToyDetector()
    model.compile(optimizer="sgd")
    every_epoch = EvaluationCallback(eval_dataset, class_names=["raccoon"], per_class_logs=True,
                                     report_dir=str(tmp_path / "reports"))
    every_second = EvaluationCallback(eval_dataset, every_n_epochs=2, prefix="slow_", coco=False)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"), monitor="val_AP", mode="max", save_best_only=True,
        save_weights_only=True,
    )
    history = model.fit(train_dataset, epochs=2, verbose=0, shuffle=False,
                        callbacks=[every_epoch, every_second, checkpoint])
    logs = history.history
    for key in ("val_AP", "val_AP50", "val_AP75", "val_APs", "val_AR100", "val_mAP_voc",
                "val_AP/raccoon", "val_AP_voc/raccoon", "loss"):
        assert len(logs[key]) == 2, key
    assert logs["val_AP"] == [pytest.approx(1.0, abs=1e-9)] * 2
    assert logs["val_mAP_voc"] == [1.0, 1.0]
    assert logs["slow_mAP_voc"] == [1.0] and "slow_AP" not in logs
    assert (tmp_path / "best.weights.h5").exists()
    assert (tmp_path / "reports" / "epoch_002" / "report.md").exists()
    assert every_epoch.last_results["coco"]["per_class"]["raccoon"]["num_gt"] == 4
    with pytest.raises(ValueError, match="every_n_epochs"):
        EvaluationCallback(eval_dataset, every_n_epochs=0)


def _duplicate_example_results():
    # The hand-worked VOC case (duplicate = FP): AP_voc 5/6, tp 2, fp 1, final precision 2/3.
    coco, voc = COCOEvaluator(class_names=["car", "bus"]), VOCEvaluator(class_names=["car", "bus"])
    for evaluator in (coco, voc):
        evaluator.update("only", [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0],
                         [[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]], [0.9, 0.8, 0.7],
                         [0, 0, 0])
    return {"coco": coco.result(), "voc": voc.result()}


def test_write_report_files(tmp_path, capsys):
    results = _duplicate_example_results()
    paths = write_report(results, str(tmp_path / "out"))
    printed = capsys.readouterr().out
    assert "| car |" in printed and "| bus |" in printed
    assert open(paths["markdown"]).read() == format_table(results)
    with open(paths["csv"]) as handle:
        rows = {row["class"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"car", "bus"}
    assert int(rows["car"]["num_gt"]) == 2 and int(rows["car"]["tp"]) == 2
    assert float(rows["car"]["AP_voc"]) == pytest.approx(5 / 6)
    assert float(rows["car"]["precision"]) == pytest.approx(2 / 3)
    assert rows["bus"]["AP"] == ""  # "not available" (pycocotools' -1) is an empty cell

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    with open(paths["json"]) as handle:
        saved = json.load(handle, parse_constant=no_nan)
    assert saved["voc"]["per_class"]["bus"]["AP"] is None  # NaN -> null
    assert saved["voc"]["per_class"]["car"]["precision"] == pytest.approx([1, 0.5, 2 / 3])
    with open(paths["pr_curves"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["pr_curves"]) > 1000


def test_report_from_a_single_evaluator_and_flat_metrics(tmp_path):
    results = _duplicate_example_results()
    coco_only = write_report(results["coco"], str(tmp_path / "coco"), print_table=False)
    assert coco_only["pr_curves"] is None and os.path.exists(coco_only["csv"])
    voc_only = write_report(results["voc"], str(tmp_path / "voc"), print_table=False)
    assert os.path.exists(voc_only["pr_curves"])
    flat = flatten_metrics(results, prefix="val_")
    assert set(flat) == {"val_" + k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
                                               "AR10", "AR100", "ARs", "ARm", "ARl", "mAP_voc")}
    assert flat["val_mAP_voc"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="not an evaluation result"):
        write_report({"foo": 1}, str(tmp_path / "bad"))
