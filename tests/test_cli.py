"""The `retinanet` command line, end to end through subprocesses, on configs/tiny.py.

One training run (module fixture) serves the evaluate, predict and export tests; the resume
and multi-worker tests train on their own and are marked slow.
"""

import csv
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
# TensorFlow's C++ start-up lines (CUDA probing, CPU features) that no setting silences.
NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages", "To enable the following")


def cli(*args, env=None, timeout=600, check=True):
    """Runs `python -m retinanet ARGS`; returns the CompletedProcess."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    result = subprocess.run([sys.executable, "-m", "retinanet", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"retinanet {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def program_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(NOISE)]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained by `retinanet train` on the tiny config (2 epochs of 2 steps)."""
    workdir = tmp_path_factory.mktemp("run") / "tiny"
    result = cli("train", f"--config={TINY}", f"--workdir={workdir}", "--verbose=2")
    return workdir, result


def test_train_writes_checkpoints_logs_config_and_metrics(trained):
    workdir, result = trained
    assert "Epoch 2/2" in result.stdout  # Keras progress output
    for name in ("config.json", "config.py", "classes.json", "checkpoints/last.keras",
                 "checkpoints/best.keras", "checkpoints/best.json", "training_log.csv",
                 "metrics.json", "report.md", "per_class.csv",
                 "analysis.md", "analysis.json", "confusion_matrix.csv", "confusion_matrix.png",
                 "errors.png", "backup/training_metadata.json"):
        assert (workdir / name).is_file(), name
    assert any((workdir / "logs" / "train").iterdir())  # TensorBoard event files
    rows = read_csv(workdir / "training_log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert "val_AP" in rows[0] and "val_mAP_voc" in rows[0]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert 0.0 <= metrics["coco"]["AP"] <= 1.0 and "AP50" in metrics["coco"]
    assert "mAP" in metrics["voc"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["name"] == "tiny"
    classes = json.loads((workdir / "classes.json").read_text())
    assert classes["class_names"][0] == "circle"


def test_evaluate_writes_metrics_table_and_curves(trained, tmp_path):
    workdir, _ = trained
    result = cli("evaluate", f"--workdir={workdir}", "--checkpoint=last",
                 f"--output={tmp_path}")
    assert "AP50" in result.stdout
    for name in ("metrics.json", "report.md", "per_class.csv"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"coco", "voc"}
    assert "per_class" in metrics["coco"]


def test_evaluate_with_test_time_flip(trained, tmp_path):
    workdir, _ = trained
    result = cli("evaluate", f"--workdir={workdir}", "--checkpoint=last", "--test_time_flip",
                 f"--output={tmp_path}", "--verbose=0")
    assert "Test-time flip" in result.stdout
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"coco", "voc"}


def test_a_checkpoint_with_an_unknown_class_gives_a_short_error(trained, tmp_path):
    import zipfile

    workdir, _ = trained
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(workdir / "checkpoints" / "last.keras") as source, \
            zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "config.json":
                content = content.replace(b"FeaturePyramid", b"NoSuchPyramid")
            target.writestr(item, content)
    result = cli("evaluate", f"--workdir={workdir}", f"--checkpoint={broken}",
                 f"--output={tmp_path / 'eval'}", check=False)
    lines = program_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "'NoSuchPyramid'" in lines[0] and len(lines[0]) < 400


def test_a_truncated_checkpoint_is_named_as_such_not_as_missing(trained, tmp_path):
    workdir, _ = trained
    whole = (workdir / "checkpoints" / "last.keras").read_bytes()
    half = tmp_path / "half.keras"
    half.write_bytes(whole[: len(whole) // 2])
    result = cli("evaluate", f"--workdir={workdir}", f"--checkpoint={half}",
                 f"--output={tmp_path / 'eval'}", check=False)
    assert result.returncode == 2
    (line,) = program_lines(result.stderr)
    assert line == (f"retinanet evaluate: error: {half}: not a readable .keras file "
                    f"({len(whole) // 2} bytes, not a complete zip archive: truncated or "
                    "corrupt)")


def test_predict_names_a_truncated_jpeg_without_tensorflows_log_lines(trained, tmp_path):
    from PIL import Image

    workdir, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3)).astype(np.uint8)
    Image.fromarray(noise).save(images / "good.jpg")
    whole = (images / "good.jpg").read_bytes()
    (images / "bad.jpg").write_bytes(whole[: len(whole) // 2])
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "retinanet", "predict",
                             f"--workdir={workdir}", f"--images={images}",
                             f"--output={tmp_path / 'out'}"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("retinanet predict: skipping bad.jpg: corrupt image")
    assert not [line for line in lines if line.startswith(("E0000", "W0000", "I0000"))]


def test_predict_writes_coco_results_and_annotated_images(trained, tmp_path):
    from PIL import Image

    from retinanet import data

    workdir, _ = trained
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    examples = list(data.shapes(3, size=(96, 160), seed=5).examples.as_numpy_iterator())
    Image.fromarray(examples[0]["image"]).save(images / "a.png")
    Image.fromarray(examples[1]["image"]).save(images / "b.jpg")
    Image.fromarray(examples[2]["image"]).save(images / "sub" / "c.png")
    output = tmp_path / "out"
    cli("predict", f"--workdir={workdir}", f"--images={images}", f"--output={output}",
        "--score_threshold=0.0")
    detections = json.loads((output / "detections.json").read_text())
    assert detections, "score_threshold=0 keeps every detection"
    assert {d["file_name"] for d in detections} <= {"a.png", "b.jpg", os.path.join("sub", "c.png")}
    for detection in detections:
        assert set(detection) == {"image_id", "file_name", "category_id", "category_name",
                                  "bbox", "score"}
        x, y, w, h = detection["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 160 and 0 <= y <= 96  # original pixels
    assert (output / "a.png").is_file() and (output / "b.jpg").is_file()
    assert (output / "sub" / "c.png").is_file()
    assert Image.open(output / "b.jpg").size == (160, 96)
    # One file also works, and the JSON names it.
    single = tmp_path / "single"
    cli("predict", f"--workdir={workdir}", f"--images={images / 'a.png'}", f"--output={single}")
    assert (single / "a.png").is_file() and (single / "detections.json").is_file()


def test_export_saved_model_serves_detections(trained, tmp_path):
    import tensorflow as tf

    workdir, _ = trained
    output = tmp_path / "saved_model"
    cli("export", f"--workdir={workdir}", f"--output={output}", "--format=saved_model")
    serving = tf.saved_model.load(str(output)).signatures["serving_default"]
    found = serving(images=tf.zeros([1, 100, 140, 3], tf.uint8))
    assert set(found) >= {"boxes", "scores", "classes", "num_detections"}
    assert found["boxes"].shape[0] == 1 and found["boxes"].shape[-1] == 4
    # model.json names the run's classes (classes.json), not the class ids.
    described = json.loads((output / "model.json").read_text())
    assert described["class_names"] == json.loads((workdir / "classes.json").read_text())[
        "class_names"]


def test_export_bakes_the_best_f1_thresholds_of_the_last_validation(trained, tmp_path):
    import tensorflow as tf

    workdir, _ = trained
    thresholds = json.loads((workdir / "analysis.json").read_text())["confusion"][
        "score_thresholds"]
    cli("export", f"--workdir={workdir}", f"--output={tmp_path}", "--per_class_thresholds=best_f1")
    found = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](
        images=tf.zeros([1, 128, 128, 3], tf.uint8))
    count = int(found["num_detections"][0])
    for score, cls in zip(found["scores"][0, :count].numpy(), found["classes"][0, :count].numpy()):
        assert score >= thresholds[cls]


def test_debug_anchors_reports_matches_and_draws_them(tmp_path):
    result = cli("debug-anchors", f"--config={TINY}", f"--output={tmp_path}",
                 "--num_images=3", "--config.data.shapes.num_train=6")
    assert "ground-truth boxes have an anchor" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_images"] == 6 and report["num_boxes"] > 0
    assert 0.0 <= report["recall"] <= report["recall_low_quality"] <= 1.0
    assert report["recall_low_quality"] == 1.0  # every box claims its best anchor
    assert set(report["by_size"]) == {"small", "medium", "large"}
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_doctor_writes_its_report_and_fitted_anchors(tmp_path):
    # 20 images of 1-3 shapes: enough boxes for the fit (fitting.MIN_FIT_BOXES).
    result = cli("doctor", f"--config={TINY}", f"--output={tmp_path}", "--fit_anchors",
                 "--config.data.shapes.num_train=20", "--verbose=0")
    report = json.loads((tmp_path / "report.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"{name} in report.json"))
    assert report["dataset"]["num_images"] == 20
    assert report["anchor_fit"]["after"]["recall"] >= report["anchor_fit"]["before"]["recall"]
    assert "--config.model.anchors." in result.stdout
    assert (tmp_path / "report.md").is_file() and len(list(tmp_path.glob("*.png"))) == 2


def test_debug_anchors_flags_boxes_too_small_for_the_anchors(tmp_path):
    # 12-20 px shapes against 128 px anchors: nothing reaches IoU 0.5.
    result = cli("debug-anchors", f"--config={TINY}", f"--output={tmp_path}", "--num_images=1",
                 "--config.model.anchors.anchor_size=16.0", "--config.data.shapes.max_size=20",
                 "--verbose=0")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["recall"] == 0.0, result.stdout


@pytest.mark.parametrize("args, expected", [
    (["train", f"--config={TINY}", "--config.train.epochz=3", "--workdir=W"],
     "--config.train.epochz: no such config field"),
    (["train", f"--config={TINY}", "--config.data.format=pascal", "--workdir=W"],
     "config.data.format: unknown format 'pascal'"),
    (["train", str(ROOT / "configs" / "custom.py"), "--workdir=W"], "unexpected arguments"),
    (["train", f"--config={ROOT / 'configs' / 'custom.py'}", "--config.data.train=/no/such/voc",
      "--workdir=W"], "config.data.train: folder not found: /no/such/voc"),
    (["train", f"--config={ROOT / 'configs' / 'custom.py'}", "--config.data.format=coco",
      "--config.data.train=/no/such.json", "--workdir=W"],
     "config.data.train: file not found: /no/such.json"),
    (["train", f"--config={TINY}"], "--workdir is required"),
    (["train", "--config=/no/such/config.py", "--workdir=W"], "/no/such/config.py"),
    (["export", "--workdir=W", "--output=O", "--format=tfjs"], "--format=tfjs: unknown format"),
    (["evaluate", "--workdir=/no/such/run"], "no config.json"),
    (["predict", "--workdir=W", "--images=/no/such/images", "--output=O", f"--config={TINY}"],
     "--images=/no/such/images: file or folder not found"),
    (["train", f"--config={TINY}", "--strategy=magic", "--workdir=W"], "--strategy"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_bad_input_gives_one_line_error(args, expected, tmp_path):
    args = [arg.replace("=W", f"={tmp_path / 'w'}").replace("=O", f"={tmp_path / 'o'}")
            for arg in args]
    result = cli(*args, check=False, timeout=300)
    lines = program_lines(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("retinanet") and "error:" in lines[0]
    assert expected in lines[0]


# Runs `retinanet ARGS` with training held after the backup of epoch HOLD_EPOCH is written:
# the process writes READY_FILE and waits there for the test's signal (or for a file named
# like READY_FILE with the suffix .release), so the moment of the kill is fixed however fast
# the machine trains.
HOLD_AFTER_BACKUP = """
import pathlib, signal, sys, time
# Ctrl-C raises KeyboardInterrupt, as in a terminal, even where the test runner's process
# handed down an ignored SIGINT (then Python keeps it ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
hold_epoch, ready_file = int(sys.argv[1]), pathlib.Path(sys.argv[2])
release_file = ready_file.with_suffix(".release")
from retinanet.training.callbacks import ResumableBackup
save = ResumableBackup.save
def save_then_hold(self):
    save(self)
    epoch, _ = self.progress()
    if epoch == hold_epoch:
        ready_file.write_text(str(epoch))
        deadline = time.monotonic() + 600  # only a guard against a test that never signals
        while time.monotonic() < deadline and not release_file.exists():
            time.sleep(0.05)
ResumableBackup.save = save_then_hold
from retinanet.apps import cli
cli.run(["retinanet"] + sys.argv[3:])
"""


def _start_held(args, workdir, after_epoch=1):
    """Starts the `retinanet` ARGS (from `_train_args`) and returns (process, ready, release)
    once training is held right after the backup of `after_epoch` epochs was written."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    script = workdir.parent / "hold_after_backup.py"
    script.write_text(HOLD_AFTER_BACKUP)
    ready = workdir.parent / "held.txt"
    process = subprocess.Popen(
        [sys.executable, str(script), str(after_epoch), str(ready), *args[3:]], cwd=ROOT,
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Waits for the other process, whatever its speed; the limit only guards a hang.
    deadline = time.monotonic() + 1200
    while not ready.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ready.is_file():
        process.kill()
        raise AssertionError("training ended or hung before reaching the hold: "
                             + process.communicate()[1][-3000:])
    return process, ready, ready.with_suffix(".release")


def _train_and_kill(args, workdir, after_epoch=1, sig=signal.SIGKILL):
    """Runs ARGS and sends `sig` while training is held after `after_epoch` epochs.

    Returns (epochs in the backup, the process's exit code, its stderr).
    """
    process, _, _ = _start_held(args, workdir, after_epoch)
    try:
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    metadata = workdir / "backup" / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"], process.returncode, stderr


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses_and_leaves_the_first_intact(tmp_path):
    workdir = tmp_path / "run"
    first, _, release = _start_held(_train_args(workdir, "--config.data.shapes.train_seed=1"),
                                    workdir)
    try:
        second = cli(*_train_args(workdir, "--config.data.shapes.train_seed=2")[3:],
                     check=False)
        lines = program_lines(second.stderr)
        assert second.returncode == 2, second.stderr[-3000:]
        assert len(lines) == 1 and "is in use by another run" in lines[0]
        assert f"pid {first.pid}" in lines[0] and ".lock" in lines[0]
        release.write_text("go")
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["shapes"]["train_seed"] == 1  # the first run's, not overwritten
    assert [int(r["epoch"]) for r in read_csv(workdir / "training_log.csv")] == [0, 1, 2, 3]
    assert (workdir / "metrics.json").is_file() and not (workdir / ".lock").exists()


def _train_args(workdir, *overrides):
    return [sys.executable, "-m", "retinanet", "train", f"--config={TINY}",
            f"--workdir={workdir}", "--config.train.epochs=4", "--config.train.steps_per_epoch=3",
            "--config.train.eval_every_n_epochs=2", "--verbose=2", *overrides]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_killed_training_resumes_where_it_stopped(tmp_path, sig):
    workdir = tmp_path / "run"
    args = _train_args(workdir)
    done, returncode, stderr = _train_and_kill(args, workdir, sig=sig)
    assert done == 1
    if sig == signal.SIGKILL:
        assert returncode == -signal.SIGKILL
    else:  # a clean stop that says what was kept
        assert returncode == 128 + sig, stderr[-3000:]
        cause = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
        assert f"Training interrupted ({cause}): {done} of 4 epochs are saved in " \
            f"{workdir / 'backup'}" in stderr
        assert "Traceback" not in stderr
    metadata = workdir / "backup" / "training_metadata.json"

    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert f"Resuming from the backup in {workdir / 'backup'}: {done} of 4 epochs done" in \
        result.stdout
    assert f"Epoch {done + 1}/4" in result.stdout and "Epoch 1/4" not in result.stdout
    rows = read_csv(workdir / "training_log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # each epoch once
    # The optimizer's step count continued from the backup rather than restarting.
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert json.loads(metadata.read_text())["epoch"] == 4
    assert (workdir / "metrics.json").is_file()
    best = json.loads((workdir / "checkpoints" / "best.json").read_text())
    assert best["epoch"] in (2, 4)
    # A finished run is not trained again: the same command only evaluates.
    again = subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "4 of 4 epochs done" in again.stdout
    assert len(read_csv(workdir / "training_log.csv")) == 4


@pytest.mark.slow
def test_deterministic_resume_matches_an_uninterrupted_run(tmp_path):
    import keras

    import retinanet.model  # noqa: F401  (registers the custom objects)

    deterministic = ("--config.train.deterministic=True", "--config.train.eval_every_n_epochs=0")
    straight = tmp_path / "straight"
    cli(*_train_args(straight, *deterministic)[3:])
    resumed = tmp_path / "resumed"
    args = _train_args(resumed, *deterministic)
    assert _train_and_kill(args, resumed)[0] == 1
    cli(*args[3:])
    weights = [keras.saving.load_model(run / "checkpoints" / "last.keras").get_weights()
               for run in (straight, resumed)]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# Runs `retinanet ARGS` with FUNCTION (module:attribute) replaced so that its CALL-th call
# SIGKILLs the process: "torn" lets the call write its file, cuts the file in half and then
# dies (the file system state of a kill mid-write); "before" dies before the call runs.
KILL_DURING = """
import importlib, os, signal, sys
target, call, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module_name, _, attribute = target.partition(":")
owner = importlib.import_module(module_name)
for part in attribute.split(".")[:-1]:
    owner = getattr(owner, part)
name = attribute.split(".")[-1]
original, calls = getattr(owner, name), []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == call and mode == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if len(calls) == call:
        path = str(args[1] if isinstance(owner, type) else args[0])
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, dying)
from retinanet.apps import cli
cli.run(["retinanet"] + sys.argv[4:])
"""


@pytest.mark.slow
def test_a_kill_during_any_save_leaves_checkpoints_that_load_and_resume(tmp_path):
    import keras

    import retinanet.model  # noqa: F401  (registers the custom objects)

    workdir = tmp_path / "run"
    script = tmp_path / "kill_during.py"
    script.write_text(KILL_DURING)
    args = _train_args(workdir, "--config.train.eval_every_n_epochs=0")[3:]
    backup, last = workdir / "backup", workdir / "checkpoints" / "last.keras"
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # Each run resumes and then dies in a different save; (last.keras, backup) epochs after.
    crashes = [("keras:Model.save", 2, "torn", 1, 1),          # last.keras of epoch 2
               ("keras:Model.save_weights", 2, "torn", 3, 2),  # the backup of epoch 3
               ("retinanet.training.callbacks:write_json", 2, "before", 4, 3)]  # its metadata, epoch 4
    for target, call, mode, last_epochs, backup_epochs in crashes:
        run = subprocess.run([sys.executable, str(script), target, str(call), mode, *args],
                             cwd=ROOT, env=environment, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        if mode == "torn":  # the kill did leave a half-written file behind
            assert list(workdir.rglob("*tmp*")), "no torn temporary file"
        # Both files load and hold whole epochs: 3 optimizer steps each.
        model = keras.saving.load_model(last)
        assert int(model.optimizer.iterations.numpy()) == 3 * last_epochs
        metadata = json.loads((backup / "training_metadata.json").read_text())
        assert metadata["epoch"] == backup_epochs
        model.load_weights(backup / metadata["weights"])
        assert int(model.optimizer.iterations.numpy()) == 3 * backup_epochs
    finished = cli(*args)
    assert "3 of 4 epochs done" in finished.stdout
    assert int(keras.saving.load_model(last).optimizer.iterations.numpy()) == 12
    assert [int(row["epoch"]) for row in read_csv(workdir / "training_log.csv")] == [0, 1, 2, 3]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_multi_worker_training_keeps_workers_in_sync(tmp_path):
    import keras

    import retinanet.model  # noqa: F401  (registers the custom objects)

    workdir = tmp_path / "run"
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "retinanet", "train", f"--config={TINY}",
             f"--workdir={workdir}", "--strategy=multi_worker_mirrored", "--keep_worker_dirs",
             "--config.train.epochs=1", "--config.train.steps_per_epoch=3", "--verbose=2"],
            cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-5000:]
    assert "(2 replicas)" in outputs[0]
    chief = workdir / "checkpoints" / "last.keras"
    other = workdir / "workers" / "worker_1" / "checkpoints" / "last.keras"
    assert chief.is_file() and other.is_file()
    assert (workdir / "metrics.json").is_file()  # the chief evaluated
    assert not (workdir / "workers" / "worker_1" / "metrics.json").exists()
    weights = [keras.saving.load_model(path).get_weights() for path in (chief, other)]
    assert [int(r["step"]) for r in read_csv(workdir / "training_log.csv")] == [3]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_message_and_saves_nothing(tmp_path):
    workdir = tmp_path / "run"
    result = cli("train", f"--config={TINY}", f"--workdir={workdir}",
                 # An infinite step makes the weights inf or NaN on any CPU, so the next loss
                 # is NaN for certain (a merely huge one, 1e30, was absorbed by batch norm).
                 "--config.train.learning_rate=inf", "--config.train.clipnorm=0.0",
                 "--config.train.eval_every_n_epochs=0", "--verbose=0", check=False)
    lines = program_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "The training loss became" in lines[-1] and "learning rate" in lines[-1]
    assert not (workdir / "checkpoints" / "last.keras").exists()
    assert not (workdir / "backup" / "training_metadata.json").exists()


@pytest.mark.parametrize("overrides, cause", [
    # An image's own boxes: the records answer before any graph runs, naming the image.
    (["--config.data.max_boxes=1"],
     r"config\.data: max_boxes=1: image \S+ has [23] boxes \(\d images have more than 1, the "
     r"most 3\); raise max_boxes to 3"),
    # A mosaic's boxes exist only in the graph: its assertion's text, not "Graph execution".
    (["--config.data.mosaic=1.0", "--config.data.max_boxes=3"],
     r"image a mosaic of 4 training images \(config\.data\.mosaic\): more boxes than "
     r"max_boxes, raise max_boxes; boxes and max_boxes: \d+ 3"),
])
def test_too_many_boxes_names_the_cause_and_leaves_no_workdir(tmp_path, overrides, cause):
    workdir = tmp_path / "fresh"
    result = cli("train", f"--config={TINY}", f"--workdir={workdir}", *overrides, check=False)
    assert result.returncode == 2
    (line,) = [line for line in program_lines(result.stderr) if "error:" in line]
    assert re.fullmatch(r"retinanet train: error: " + cause, line), line
    assert "Graph execution error" not in result.stderr
    assert not workdir.exists()


def test_graph_error_cause_reads_tensorflow_messages():
    from retinanet.apps.cli import graph_error_cause

    data_error = (
        "Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call "
        "last):\n<stack traces unavailable>\nError in user-defined function passed to "
        "ParallelMapDatasetV2:4 transformation with iterator: Iterator::Root::Prefetch::"
        "ParallelMapV2: assertion failed: [image 1: more boxes than max_boxes; boxes and "
        "max_boxes:] [2] [1]\n\t [[{{node Assert/Assert}}]]\n\t [[IteratorGetNext]]")
    assert graph_error_cause(data_error) == \
        "image 1: more boxes than max_boxes; boxes and max_boxes: 2 1"
    assert graph_error_cause("Graph execution error:\n\nDetected at node r\nInput to reshape "
                             "has 3 values\n\t [[{{node r}}]]") == "Input to reshape has 3 values"
    assert graph_error_cause("plain message") == "plain message"


@pytest.mark.slow
def test_a_truncated_newest_backup_is_named_and_everything_follows_the_one_loaded(tmp_path):
    workdir = tmp_path / "run"
    args = _train_args(workdir)
    assert _train_and_kill(args, workdir, after_epoch=2)[0] == 2
    metadata = json.loads((workdir / "backup" / "training_metadata.json").read_text())
    newest = workdir / "backup" / metadata["weights"]
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up mid-copy

    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert f"warning: the backup {newest} (epoch 2): " in result.stderr
    assert "resuming from the backup of epoch 1 instead" in result.stderr
    assert f"Resuming from the backup in {workdir / 'backup'}: 1 of 4 epochs done" in \
        result.stdout
    assert "Epoch 2/4" in result.stdout
    rows = read_csv(workdir / "training_log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # epoch 2 once, not twice
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]


def test_evaluate_refuses_a_saved_model_that_touches_files(trained, tmp_path):
    from test_safety import _file_thief

    workdir, _ = trained
    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("private")
    _file_thief(tmp_path / "thief", str(secret), str(stolen))
    result = cli("evaluate", f"--workdir={workdir}", f"--checkpoint={tmp_path / 'thief'}",
                 f"--output={tmp_path / 'eval'}", check=False)
    assert result.returncode == 2
    (line,) = program_lines(result.stderr)
    assert "refusing to run this SavedModel" in line and "WriteFile" in line
    assert "--trust_checkpoint" in line
    assert not stolen.exists()


DISK_FULL_AT_SECOND_SAVE = """
import errno, sys
import keras
saves = []
save = keras.Model.save
def save_until_full(self, *args, **kwargs):
    saves.append(args[0])
    if len(saves) == 2:  # epoch 1 wrote last.keras (no evaluation yet); epoch 2's fails
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, *args, **kwargs)
keras.Model.save = save_until_full
from retinanet.apps import cli
cli.run(["retinanet"] + sys.argv[1:])
"""


def test_a_full_disk_names_the_file_and_the_epoch_that_is_safe(tmp_path):
    workdir = tmp_path / "run"
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_AT_SECOND_SAVE)
    result = subprocess.run([sys.executable, str(script), *_train_args(workdir)[3:]], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in program_lines(result.stderr) if "error:" in line]
    assert line == (
        f"retinanet train: error: [Errno 28] No space left on device while writing "
        f"{workdir / 'checkpoints' / 'last.keras'}; the backup of epoch 1 in "
        f"{workdir / 'backup'} is intact: free some space and run the same command again to "
        "resume")
    assert (workdir / "checkpoints" / "last.keras").is_file()  # epoch 1's, untouched
