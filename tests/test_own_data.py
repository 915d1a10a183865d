"""Your own data, end to end: the README's own-data commands on a small dataset of each format.

The slow tests run the README's "Your own data" block (read from README.md, with
`--config.model.backbone_weights=` and small sizes added) as subprocesses, once per file
format (voc, coco, yolo, csv), the four chains concurrently. The fast tests check the pieces:
`--help` without TensorFlow, strict JSON, hints in command-line spelling, the warm-up cap.
"""

import concurrent.futures
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORMATS = ("voc", "coco", "yolo", "csv")
CLASSES = ("block", "bar")
# TensorFlow's C++ start-up lines, for the tests that look at the program's own stderr.
NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages", "To enable the following")
# Small, CPU-fast settings added to the README's commands that read --config.
TINY = ("--config.model.backbone=simple", "--config.model.backbone_weights=",
        "--config.model.fpn_filters=16", "--config.model.head_convs=1",
        "--config.model.head_filters=16", "--config.model.anchors.anchor_size=2.0",
        "--config.data.image_size=64", "--config.data.batch_size=2",
        "--config.data.eval_batch_size=2", "--config.train.epochs=1",
        "--config.train.steps_per_epoch=2", "--config.train.learning_rate=1e-3")


def strict_json(text):
    """`json.loads` that refuses NaN and Infinity (which Python's json accepts)."""
    def refuse(constant):
        raise ValueError(f"non-finite JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def cli(*args, cwd=ROOT, env=None, timeout=900):
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "retinanet", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def program_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(NOISE)]


# -- a small dataset in each format ---------------------------------------------------------


def _images(seed, count):
    """(name, pixels uint8 [H, W, 3], boxes [(class, x1, y1, x2, y2)]) with bright shapes."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = np.full((64, 80, 3), 30, np.uint8)
        boxes = []
        for class_index, (width, height) in enumerate(((20, 20), (30, 10))):
            x1, y1 = int(rng.integers(0, 80 - width)), int(rng.integers(0, 64 - height))
            pixels[y1:y1 + height, x1:x1 + width] = 220 if class_index == 0 else 140
            boxes.append((CLASSES[class_index], x1, y1, x1 + width, y1 + height))
        yield f"img{seed}_{index}.png", pixels, boxes


def _write_split(fmt, root, split, seed, count):
    """Writes one split under root/data; returns the path README's `data/<split>` becomes."""
    data = root / "data"
    items = list(_images(seed, count))
    folder = data / split
    image_dir = folder / "images" if fmt in ("voc", "yolo") else folder
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, pixels, _ in items:
        Image.fromarray(pixels).save(image_dir / name)
    if fmt == "voc":
        (folder / "annotations").mkdir()
        for name, _, boxes in items:
            objects = "".join(
                f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for c, x1, y1, x2, y2 in boxes)
            (folder / "annotations" / name.replace(".png", ".xml")).write_text(
                f"<annotation><filename>{name}</filename><size><width>80</width>"
                f"<height>64</height><depth>3</depth></size>{objects}</annotation>")
        return f"data/{split}"
    if fmt == "yolo":
        (folder / "labels").mkdir()
        (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        for name, _, boxes in items:
            (folder / "labels" / name.replace(".png", ".txt")).write_text("".join(
                f"{CLASSES.index(c)} {(x1 + x2) / 160:.6f} {(y1 + y2) / 128:.6f} "
                f"{(x2 - x1) / 80:.6f} {(y2 - y1) / 64:.6f}\n" for c, x1, y1, x2, y2 in boxes))
        return f"data/{split}"
    if fmt == "csv":
        rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
        rows += [f"{name},80,64,{c},{x1 + 1},{y1 + 1},{x2},{y2}"
                 for name, _, boxes in items for c, x1, y1, x2, y2 in boxes]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
        return f"data/{split}/{split}.csv"
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    for image_id, (name, _, boxes) in enumerate(items, 1):
        coco["images"].append({"id": image_id, "file_name": name, "width": 80, "height": 64})
        coco["annotations"] += [
            {"id": len(coco["annotations"]) + 1, "image_id": image_id,
             "category_id": CLASSES.index(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
             "area": (x2 - x1) * (y2 - y1), "iscrowd": 0} for c, x1, y1, x2, y2 in boxes]
    (folder / f"{split}.json").write_text(json.dumps(coco))
    return f"data/{split}/{split}.json"


def readme_commands():
    """The README's own-data commands, continuation lines joined and comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Your own data"):]
    block = section[section.index("```bash") + 7:section.index("```", section.index("```bash") + 7)]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("retinanet "):
            commands.append(shlex.split(line)[1:])
    return commands


def _run_chain(fmt, root):
    """Writes the dataset under root and runs the README's commands there; returns results."""
    paths = {split: _write_split(fmt, root, split, seed, count)
             for split, seed, count in (("train", 0, 4), ("val", 1, 2))}
    photos = root / "photos"
    photos.mkdir()
    for name in os.listdir(root / pathlib.Path(paths["val"]).parent
                           if fmt in ("coco", "csv") else root / paths["val"] / "images"):
        if name.endswith(".png"):
            source = (root / pathlib.Path(paths["val"]).parent / name if fmt in ("coco", "csv")
                      else root / paths["val"] / "images" / name)
            (photos / name).write_bytes(source.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    results = []
    for args in readme_commands():
        args = [arg.replace("configs/custom.py", str(ROOT / "configs" / "custom.py"))
                .replace("--config.data.format=voc", f"--config.data.format={fmt}")
                .replace("data/train", paths["train"]).replace("data/val", paths["val"])
                for arg in args]
        if any(arg.startswith("--config=") for arg in args) and args[0] != "config":
            args += TINY
        results.append((args, cli(*args, cwd=root)))
    return results


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """{format: (root, [(args, CompletedProcess)])}, the four chains run concurrently."""
    roots = {fmt: tmp_path_factory.mktemp(fmt) for fmt in FORMATS}
    with concurrent.futures.ThreadPoolExecutor(len(FORMATS)) as pool:
        futures = {fmt: pool.submit(_run_chain, fmt, roots[fmt]) for fmt in FORMATS}
        return {fmt: (roots[fmt], futures[fmt].result()) for fmt in FORMATS}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_readme_own_data_commands(chains, fmt):
    root, results = chains[fmt]
    commands = [args[0] for args, _ in results]
    assert commands == ["debug-anchors", "train", "evaluate", "evaluate", "predict", "export",
                        "config"]
    for args, result in results:
        assert result.returncode == 0, (f"retinanet {' '.join(args)}:\n{result.stdout[-2000:]}"
                                        f"\n{result.stderr[-3000:]}")
    run = root / "runs" / "mine"
    for path in ("checkpoints/last.keras", "config.json", "classes.json", "metrics.json",
                 "eval/val/metrics.json", "eval/val/per_class.csv", "eval/train/metrics.json",
                 "predictions/detections.json", "export/saved_model.pb"):
        assert (run / path).is_file(), path
    assert (root / "runs" / "anchors" / "report.json").is_file()
    assert strict_json((run / "classes.json").read_text())
    # The val split was read from its own path: 2 images (train has 4).
    evaluate_val, evaluate_train = results[2][1], results[3][1]
    assert "Evaluating on 2 val images" in evaluate_val.stdout
    assert "Evaluating on 4 train images" in evaluate_train.stdout
    # predict named and counted the unreadable file and predicted the others.
    predict = results[4][1]
    assert "broken.jpg" in predict.stderr
    assert "in 2 images, 1 unreadable images skipped" in predict.stdout
    detections = strict_json((run / "predictions" / "detections.json").read_text())
    assert {d["file_name"] for d in detections} <= {p.name for p in (root / "photos").iterdir()
                                                     if p.suffix == ".png"}
    # No JSON anywhere holds NaN or Infinity; no "nan" or "-1.0" in the per-class table.
    for path in root.rglob("*.json"):
        strict_json(path.read_text())
    table = (run / "eval" / "val" / "per_class.csv").read_text()
    assert "nan" not in table and ",-1.0" not in table
    # The debug-anchors report of the val split is about the val split, no training warning.
    assert "validating" not in results[0][1].stderr
    assert "Matching anchors to the boxes of 2 val images" in results[0][1].stdout


# -- offline ImageNet weights ---------------------------------------------------------------


@pytest.mark.slow
def test_offline_imagenet_weights_fail_in_one_line_and_write_nothing(tmp_path):
    train = _write_split("voc", tmp_path, "train", 0, 2)
    workdir = tmp_path / "runs" / "mine"
    # An empty Keras cache, and every download refused at once by a proxy nobody listens on.
    refused = "http://127.0.0.1:9"
    env = {"KERAS_HOME": str(tmp_path / "keras_home"), "https_proxy": refused,
           "HTTPS_PROXY": refused, "http_proxy": refused, "HTTP_PROXY": refused}
    result = cli("train", f"--config={ROOT / 'configs' / 'custom.py'}", f"--workdir={workdir}",
                 "--config.data.format=voc", f"--config.data.train={train}",
                 "--config.data.val_fraction=0.5", "--config.data.image_size=64",
                 "--config.data.batch_size=1",
                 cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = program_lines(result.stderr)
    assert len(lines) == 1, lines
    assert "config.model.backbone_weights" in lines[0]
    assert ".weights.h5" in lines[0] and "--config.model.backbone_weights=)" in lines[0]
    assert not workdir.exists() or not any(workdir.iterdir())


# -- help, start-up, messages (fast) --------------------------------------------------------


def test_every_subcommand_help_lists_its_flags():
    from retinanet.apps import cli as app

    for command in app.COMMANDS:
        result = cli(command, "--help", timeout=120)
        assert result.returncode == 0, result.stderr
        flag_lines = [line for line in result.stdout.splitlines() if line.startswith("  --")]
        assert [line.split(":")[0].strip() for line in flag_lines] == \
            [f"--{name}" for name in app.COMMAND_FLAGS[command]]
        assert f"retinanet {command}" in result.stdout


def test_top_level_help_imports_no_tensorflow():
    code = ("import sys; sys.argv = ['retinanet', '--help']\n"
            "from retinanet.apps import cli\n"
            "try:\n    cli.run()\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False False"
    plain = cli("--help", timeout=120)
    assert plain.returncode == 0 and plain.stderr == ""


def test_config_command_prints_every_field():
    from retinanet import config as rconfig

    result = cli("config", f"--config={ROOT / 'configs' / 'custom.py'}",
                 "--config.model.frozen_batchnorm=false", "--config.train.epochs=3",
                 timeout=120)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(" = ", 1) for line in result.stdout.splitlines() if " = " in line)
    assert printed["config.train.epochs"] == "3"
    assert printed["config.model.frozen_batchnorm"] == "False"
    assert printed["config.model.frozen_early_stages"] == "None"

    def count(values):
        return sum(count(v) if isinstance(v, dict) else 1 for v in values.values())
    assert len(printed) == count(rconfig.to_dict(rconfig.default_config()))


def test_hints_use_command_line_spelling():
    from retinanet.apps.cli import cli_spelling

    assert cli_spelling("bad box (pass skip_invalid=True to skip such input)") == \
        "bad box (pass --config.data.skip_invalid=true to skip such input)"


def test_write_json_refuses_nan_by_writing_null(tmp_path):
    from retinanet import atomic

    path = tmp_path / "a.json"
    atomic.write_json(str(path), {"small": float("nan"), "sizes": [1.0, float("inf")],
                                  "array": np.array([np.nan, 2.0]), "n": np.int64(3)})
    assert strict_json(path.read_text()) == {"small": None, "sizes": [1.0, None],
                                             "array": [None, 2.0], "n": 3}


def test_per_class_csv_marks_not_available_with_one_empty_value(tmp_path):
    from retinanet.evaluation import write_report

    coco = {name: 0.5 for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
                                   "AR100", "ARs", "ARm", "ARl")}
    coco["per_class"] = {"a": {"num_gt": 0, "num_detections": 0, "AP": -1.0, "AP50": -1.0,
                               "AP75": -1.0, "APs": -1.0, "APm": -1.0, "APl": -1.0,
                               "AR100": -1.0}}
    voc = {"mAP": math.nan, "per_class": {"a": {"num_gt": 0, "AP": math.nan, "tp": 0, "fp": 0,
                                                "precision": np.zeros(0), "recall": np.zeros(0)}}}
    paths = write_report({"coco": coco, "voc": voc}, str(tmp_path), print_table=False)
    header, row = pathlib.Path(paths["csv"]).read_text().splitlines()
    assert "nan" not in row and "-1" not in row
    cells = dict(zip(header.split(","), row.split(",")))
    assert cells["AP"] == cells["AP_voc"] == cells["precision"] == ""
    assert cells["num_gt"] == "0"
    strict_json(pathlib.Path(paths["json"]).read_text())


def test_warmup_is_capped_at_a_tenth_of_the_run():
    from retinanet import config as rconfig
    from retinanet.training import builders

    config = rconfig.default_config()
    config.train.learning_rate = 0.01
    config.train.warmup_steps = 200
    config.train.schedule = "cosine"
    assert float(builders.build_learning_rate(config, total_steps=2)(0)) == \
        pytest.approx(0.01)  # 2 steps: no warm-up at all
    rate = builders.build_learning_rate(config, total_steps=100)  # warm-up 10 steps
    assert float(rate(10)) == pytest.approx(0.01, rel=1e-3)
    assert float(rate(0)) == pytest.approx(0.01 * 0.001, rel=1e-3)


def test_val_split_alone_reads_the_val_path(tmp_path):
    """`evaluate` / `debug-anchors --split=val` with an explicit data.val (issue: it crashed)."""
    from retinanet import config as rconfig
    from retinanet.training import datasets

    train = _write_split("csv", tmp_path, "train", 0, 3)
    val = _write_split("csv", tmp_path, "val", 1, 2)
    config = rconfig.default_config()
    config.data.format = "csv"
    config.data.train, config.data.val = str(tmp_path / train), str(tmp_path / val)
    splits = datasets.load_datasets(config, ("val",))
    assert list(splits) == ["val"] and len(splits["val"]) == 2
    assert splits["val"].class_names == sorted(CLASSES)  # CSV: names sorted


def test_predict_checks_output_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("predict", f"--workdir={tmp_path}", f"--images={tmp_path}",
                 f"--output={blocker / 'out'}", timeout=120)
    assert result.returncode == 2
    lines = program_lines(result.stderr)
    assert len(lines) == 1 and "--output=" in lines[0] and "not a folder" in lines[0]
    assert "Loading" not in result.stdout


def test_export_accepts_tflite_as_litert(tmp_path):
    tflite = cli("export", f"--workdir={tmp_path}", f"--output={tmp_path / 'out'}",
                 "--format=tflite", timeout=120)
    bogus = cli("export", f"--workdir={tmp_path}", f"--output={tmp_path / 'out'}",
                "--format=tfjs", timeout=120)
    assert tflite.returncode == bogus.returncode == 2
    assert "unknown format" in bogus.stderr
    # tflite passes the format check and stops at the next one: the run folder's config.
    assert "unknown format" not in tflite.stderr and "config.json" in tflite.stderr
