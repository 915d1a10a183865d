"""The ``retinanet`` command line (an absl app): train, evaluate, predict, export, debug-anchors.

    retinanet train --config=configs/shapes.py --workdir=runs/shapes [--config.train.epochs=3]
    retinanet evaluate --workdir=runs/shapes [--split=val|train] [--checkpoint=best|last|PATH]
    retinanet predict --workdir=runs/shapes --images=FILE_OR_DIR --output=DIR
    retinanet export --workdir=runs/shapes --output=DIR [--format=saved_model|litert|onnx]
    retinanet debug-anchors --config=configs/shapes.py [--output=DIR] [--split=train]

The workdir of a training run holds:

    config.json, config.py      the full config (config.py loads with --config=)
    classes.json                class names and dataset category ids
    checkpoints/last.keras      after every epoch (written atomically)
    checkpoints/best.keras      the best epoch by val_AP, with checkpoints/best.json
    backup/                     BackupAndRestore state: rerun the same command to resume
    logs/                       TensorBoard (train/ and validation/)
    training_log.csv            one row per epoch (loss, val_AP, ..., optimizer step)
    metrics.json, report.md,    the final evaluation (COCO metrics and VOC mAP), the
    per_class.csv, pr_curves.png  per-class table and PR curves

Bad input (a wrong config field, a missing dataset path, an unknown format or flag value)
ends with one line ``retinanet <command>: error: ...`` on stderr and exit status 2; pass
``--debug`` for the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retinanet import atomic  # noqa: E402
from retinanet import config as rconfig  # noqa: E402
from retinanet import trainer  # noqa: E402
from retinanet.trainer import PRECISIONS, STRATEGIES, UsageError  # noqa: E402

COMMANDS = ("train", "evaluate", "predict", "export", "debug-anchors")
EXIT_USAGE = 2

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py with get_config()); override any field with "
    "--config.<section>.<field>=VALUE. evaluate/predict/export default to WORKDIR/config.json.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Training run folder (checkpoints, logs, config, metrics).")
flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy for training.")
flags.DEFINE_string("tpu", "", "--strategy=tpu: TPU name or grpc:// address ('' = local TPU VM).")
flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy.")
flags.DEFINE_enum("split", None, ["train", "val"],
                  "Dataset split (evaluate: default val; debug-anchors: default train).")
flags.DEFINE_string("checkpoint", "best",
                    "evaluate/predict/export: best, last, or the path of a .keras file.")
flags.DEFINE_string("images", None, "predict: an image file or a folder (searched recursively).")
flags.DEFINE_string("output", None, "predict/export/debug-anchors/evaluate: output folder.")
flags.DEFINE_string("format", "saved_model", "export: saved_model, litert or onnx.")
flags.DEFINE_string("quantization", "", "export --format=litert: '', float16 or dynamic_range.")
flags.DEFINE_float("score_threshold", None,
                   "predict: keep detections with at least this score (default: 0.3 for the "
                   "drawings, the config's postprocess.score_threshold for the JSON).")
flags.DEFINE_integer("num_images", 16, "debug-anchors: how many images to draw.")
flags.DEFINE_integer("verbose", 1, "Progress output: 0 silent, 1 progress bars, 2 one line "
                     "per epoch.")
flags.DEFINE_bool("keep_worker_dirs", False,
                  "multi-worker: keep non-chief workers' checkpoints in WORKDIR/workers/ "
                  "(default: temporary folders, removed at the end).")
flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")


def _fail(command: str, message) -> None:
    text = " ".join(str(message).split())  # one line
    print(f"retinanet {command}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _usage() -> str:
    return ("usage: retinanet {" + ",".join(COMMANDS) + "} [flags]\n"
            + (__doc__ or "").split("\n\n")[1] + "\n"
            "Run `retinanet <command> --helpfull` for every flag.")


# -- shared helpers -----------------------------------------------------------------------


def _require(name: str) -> str:
    value = FLAGS[name].value
    if not value:
        raise UsageError(f"--{name} is required")
    return value


def _config(required: bool = True):
    """The --config, or WORKDIR/config.json; validated."""
    config = FLAGS.config
    if config is None:
        workdir = FLAGS.workdir
        if required or not workdir:
            raise UsageError("--config is required (e.g. --config=configs/shapes.py)")
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            raise UsageError(f"--workdir={workdir}: no config.json (not a training run folder?); "
                             "pass --config")
        config = rconfig.load_json(path)
    rconfig.validate(config)
    return config


def _class_info(workdir: str):
    path = os.path.join(workdir, "classes.json")
    if not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8") as file:
        info = json.load(file)
    return info["class_names"], info.get("category_ids")


def _checkpoint_path(workdir: str) -> str:
    choice = FLAGS.checkpoint
    if choice in ("best", "last"):
        path = os.path.join(workdir, "checkpoints", f"{choice}.keras")
        if choice == "best" and not os.path.isfile(path):
            path = os.path.join(workdir, "checkpoints", "last.keras")  # no evaluation ran yet
    else:
        path = choice
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint={choice}: checkpoint not found: {path}")
    return path


def _load_model(workdir: str):
    import keras

    import retinanet  # noqa: F401  (registers the custom objects)

    path = _checkpoint_path(workdir)
    print(f"Loading {path}", flush=True)
    return keras.saving.load_model(path), path


def _set_precision():
    import keras

    keras.mixed_precision.set_global_policy(FLAGS.precision)


# -- train --------------------------------------------------------------------------------


def cmd_train():
    """Trains the configured model in --workdir, resuming where a previous run stopped."""
    config = _config()
    workdir = _require("workdir")
    trainer.train(config, workdir, strategy=FLAGS.strategy, precision=FLAGS.precision,
                  verbose=FLAGS.verbose, tpu=FLAGS.tpu, keep_worker_dirs=FLAGS.keep_worker_dirs)


# -- evaluate -----------------------------------------------------------------------------


def cmd_evaluate():
    """Evaluates a checkpoint of --workdir on a split; writes metrics.json and the reports."""
    workdir = _require("workdir")
    config = _config(required=False)
    split = FLAGS.split or "val"
    from retinanet.evaluation import evaluate, write_report

    _set_precision()
    dataset = rconfig.load_datasets(config, (split,))[split]
    class_names, category_ids = _class_info(workdir)
    if class_names is not None and class_names != dataset.class_names:
        raise UsageError(f"the {split} split's classes {dataset.class_names} differ from the "
                         f"trained model's {class_names}")
    model, _ = _load_model(workdir)
    output = FLAGS.output or os.path.join(workdir, "eval", split)
    print(f"Evaluating on {len(dataset)} {split} images", flush=True)
    results = evaluate(model, rconfig.eval_pipeline(config, dataset),
                       class_names=dataset.class_names,
                       category_ids=category_ids or dataset.category_ids,
                       verbose=FLAGS.verbose,
                       voc_iou_threshold=config.eval.voc_iou_threshold,
                       voc_method=config.eval.voc_method)
    write_report(results, output, print_table=FLAGS.verbose > 0)
    trainer.summary(results, output)


# -- predict ------------------------------------------------------------------------------


def _image_records(images: str):
    from retinanet.data import Record
    from retinanet.data.validation import IMAGE_EXTENSIONS, ImageProblem, list_images, \
        probe_image

    import numpy as np

    if os.path.isdir(images):
        relative = list_images(images)
        paths = [os.path.join(images, name) for name in relative]
        if not paths:
            raise UsageError(f"--images={images}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    elif os.path.isfile(images):
        relative, paths = [os.path.basename(images)], [images]
    else:
        raise UsageError(f"--images={images}: file or folder not found")
    records = []
    for name, path in zip(relative, paths):
        try:
            height, width = probe_image(path)
        except ImageProblem as problem:
            raise UsageError(f"--images: {problem}") from None
        records.append(Record(image_id=os.path.splitext(name)[0], path=path, height=height,
                              width=width, boxes=np.zeros((0, 4), np.float32),
                              classes=np.zeros(0, np.int32), is_crowd=np.zeros(0, bool),
                              difficult=np.zeros(0, bool)))
    return records, relative


def cmd_predict():
    """Detections for image files: COCO-results JSON plus annotated copies of the images."""
    workdir = _require("workdir")
    images = _require("images")
    output = _require("output")
    config = _config(required=False)
    import keras
    import numpy as np
    import tensorflow as tf

    from retinanet import visualization
    from retinanet.data import DetectionDataset
    from retinanet.evaluation import split_batch

    records, relative = _image_records(images)
    class_names, category_ids = _class_info(workdir)
    _set_precision()
    model, _ = _load_model(workdir)
    if class_names is None:
        class_names = [str(i) for i in range(model.num_classes)]
    threshold = FLAGS.score_threshold
    if threshold is not None and threshold < model.postprocessor.score_threshold:
        # Read when the predict function is traced, i.e. on the first batch below.
        model.postprocessor.score_threshold = float(threshold)
    dataset = DetectionDataset(class_names, records, name=images)
    batches = rconfig.eval_pipeline(config, dataset)
    os.makedirs(output, exist_ok=True)
    results = []
    progbar = keras.utils.Progbar(len(records), verbose=FLAGS.verbose, unit_name="image")
    done = 0
    for batch_images, targets in batches:
        detections = model.predict_on_batch(batch_images)
        for found in split_batch(targets, detections, tuple(batch_images.shape[1:3]),
                                 first_index=done):
            record, name = records[done], relative[done]
            keep = np.ones(len(found["det_scores"]), bool) if threshold is None else \
                found["det_scores"] >= threshold
            boxes = found["det_boxes"][keep]
            scores, classes = found["det_scores"][keep], found["det_classes"][keep]
            for box, score, cls in zip(boxes, scores, classes):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append({
                    "image_id": record.image_id,
                    "file_name": name,
                    "category_id": int(category_ids[cls]) if category_ids else int(cls),
                    "category_name": class_names[cls],
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                })
            pixels = tf.io.decode_image(tf.io.read_file(record.path), channels=3,
                                        expand_animations=False).numpy()
            drawn = visualization.draw_detections(
                pixels, boxes, classes, scores, class_names,
                score_threshold=0.3 if threshold is None else threshold)
            stem, extension = os.path.splitext(name)
            extension = ".jpg" if extension.lower() in (".jpg", ".jpeg") else ".png"
            visualization.save_image(drawn, os.path.join(output, stem + extension))
            done += 1
            progbar.update(done)
    path = os.path.join(output, "detections.json")
    atomic.write_json(path, results)
    print(f"{len(results)} detections in {done} images -> {path} (COCO results format; "
          f"category_id is the {'dataset category id' if category_ids else '0-based class'})",
          flush=True)


# -- export -------------------------------------------------------------------------------


def cmd_export():
    """Exports a checkpoint of --workdir as a SavedModel, LiteRT or ONNX model."""
    workdir = _require("workdir")
    output = _require("output")
    from retinanet import export as rexport

    if FLAGS.format not in rexport.FORMATS:
        raise UsageError(f"--format={FLAGS.format}: unknown format; expected one of "
                         f"{', '.join(rexport.FORMATS)}")
    config = _config(required=False)
    model, path = _load_model(workdir)
    size = rconfig.image_size(config)
    kwargs = {}
    if FLAGS.format == "litert":
        side = size if isinstance(size, int) else size[1]
        side = -(-side // 128) * 128
        kwargs = {"image_size": (side, side), "quantization": FLAGS.quantization or None}
    else:
        if FLAGS.quantization:
            raise UsageError("--quantization applies to --format=litert only")
        kwargs = {"resize": size}
    print(f"Exporting {path} as {FLAGS.format} to {output}", flush=True)
    written = rexport.export(model, output, format=FLAGS.format, **kwargs)
    print(f"Wrote {written}", flush=True)


# -- debug-anchors ------------------------------------------------------------------------


def anchor_coverage(config, dataset, num_images_to_draw=0, output=None, verbose=1):
    """How many ground-truth boxes get a positive anchor at the configured thresholds.

    Runs the configured `LabelEncoder` on evaluation-style batches (resized as in training,
    without augmentation). A box counts as matched when some anchor's IoU with it reaches
    ``positive_iou``; with ``allow_low_quality_matches`` every box also claims its best anchor,
    reported separately, since such a box trains on an anchor that covers it poorly.

    Returns:
        A dict: num_boxes, matched (share with an IoU >= positive_iou anchor),
        matched_with_low_quality (share with any positive anchor), by_size (COCO small /
        medium / large by area in the resized image: num_boxes, matched), best_iou
        percentiles, and the lists of drawn image files.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from retinanet import ops, visualization

    anchor_generator = rconfig.build_anchor_generator(config)
    encoder = rconfig.build_label_encoder(config, anchor_generator)
    batches = rconfig.eval_pipeline(config, dataset)
    sizes = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, np.inf)}
    counts = {name: [0, 0] for name in sizes}
    best_ious, matched_all, low_quality_all, drawn = [], [], [], []
    progbar = keras.utils.Progbar(len(dataset), verbose=verbose, unit_name="image")
    done = 0
    for images, targets in batches:
        height, width = int(images.shape[1]), int(images.shape[2])
        anchors = anchor_generator(height, width)
        matched_index, states = encoder.match(anchors, targets["boxes"], targets["classes"])
        for index in range(int(images.shape[0])):
            valid = targets["classes"][index].numpy() >= 0
            boxes = targets["boxes"][index].numpy()[valid]
            iou = ops.box_iou(tf.constant(boxes), anchors).numpy() if len(boxes) else \
                np.zeros((0, 1))
            best = iou.max(axis=1) if len(boxes) else np.zeros(0)
            positive = states[index].numpy() == 1
            claimed = matched_index[index].numpy()[positive]
            low_quality = np.isin(np.arange(len(boxes)), claimed)
            matched = best >= encoder.positive_iou
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for name, (low, high) in sizes.items():
                in_range = (areas >= low) & (areas < high)
                counts[name][0] += int(in_range.sum())
                counts[name][1] += int((matched & in_range).sum())
            best_ious.extend(best.tolist())
            matched_all.extend(matched.tolist())
            low_quality_all.extend(low_quality.tolist())
            if output and len(drawn) < num_images_to_draw:
                best_anchor = anchors.numpy()[iou.argmax(axis=1)] if len(boxes) else None
                picture = visualization.draw_anchor_matches(
                    images[index].numpy(), boxes, matched, best_anchor)
                image_id = targets["image_id"][index].numpy().decode()
                path = os.path.join(output, f"{len(drawn):03d}_{image_id.replace('/', '_')}.png")
                visualization.save_image(picture, path)
                drawn.append(path)
            done += 1
        progbar.update(done)
    total = len(matched_all)
    share = (lambda values: float(np.mean(values)) if values else float("nan"))
    percentiles = np.percentile(best_ious, [5, 25, 50]).tolist() if best_ious else []
    return {
        "num_images": done,
        "num_boxes": total,
        "positive_iou": encoder.positive_iou,
        "negative_iou": encoder.negative_iou,
        "matched": share(matched_all),
        "matched_with_low_quality": share(low_quality_all),
        "by_size": {name: {"num_boxes": n, "matched": (m / n if n else float("nan"))}
                    for name, (n, m) in counts.items()},
        "best_iou_percentiles": dict(zip(("p5", "p25", "p50"), percentiles)),
        "images": drawn,
    }


def cmd_debug_anchors():
    """Reports the share of ground-truth boxes matched by a positive anchor, and draws them."""
    config = _config(required=False)
    split = FLAGS.split or "train"
    output = FLAGS.output or os.path.join(FLAGS.workdir or "runs", "debug_anchors")
    dataset = rconfig.load_datasets(config, (split,))[split]
    os.makedirs(output, exist_ok=True)
    print(f"Matching anchors to the boxes of {len(dataset)} {split} images", flush=True)
    report = anchor_coverage(config, dataset, FLAGS.num_images, output, FLAGS.verbose)
    path = os.path.join(output, "report.json")
    atomic.write_json(path, report)
    sizes = ", ".join(f"{name} {v['matched']:.1%} of {v['num_boxes']}"
                      for name, v in report["by_size"].items() if v["num_boxes"])
    print(f"{report['matched']:.1%} of {report['num_boxes']} ground-truth boxes have an anchor "
          f"with IoU >= {report['positive_iou']} ({sizes}); "
          f"{report['matched_with_low_quality']:.1%} with low-quality matches. "
          f"Drawings (green matched, red not, yellow best anchor) and report.json in {output}",
          flush=True)


# -- entry point --------------------------------------------------------------------------

HANDLERS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "debug-anchors": cmd_debug_anchors,
}


def _main(command, argv):
    if len(argv) > 1:
        _fail(command, f"unexpected arguments {argv[1:]} (flags are --name=value)")
    if FLAGS.debug:
        import keras

        keras.config.disable_traceback_filtering()
    if FLAGS.verbose < 2:
        logging.set_verbosity(logging.WARNING)  # not absl's INFO lines of SavedModel writing
    try:
        HANDLERS[command]()
    except KeyboardInterrupt as interrupt:  # the trainer has said what was saved
        sys.exit(getattr(interrupt, "exit_code", 128 + signal.SIGINT))
    except (ValueError, TypeError, OSError, KeyError, AttributeError,
            FloatingPointError) as error:
        if FLAGS.debug:
            raise
        _fail(command, error)
    except Exception as error:  # noqa: BLE001 - TensorFlow runtime errors (bad data)
        import tensorflow as tf

        if FLAGS.debug or not isinstance(error, tf.errors.OpError):
            raise
        _fail(command, error.message.strip().split("\n")[0])


def _parse_flags(command, argv):
    try:
        return FLAGS(argv)
    except (flags.Error, ValueError, TypeError, AttributeError, KeyError, OSError) as error:
        # config_flags: a config file that fails to load, or an override of an unknown field
        # (its message is the repr of a KeyError: the field and a "Did you mean" hint).
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        if message[:1] in "'\"" and message[-1:] == message[:1]:
            message = message[1:-1].encode().decode("unicode_escape")
        overrides = [arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
        culprit = [flag for flag in overrides
                   if any(part and f"'{part}'" in message for part in flag.split(".")[1:])]
        if culprit:
            message = f"{culprit[0]}: no such config field ({message})"
        _fail(command, message)


def run(argv=None):
    """Console entry point: ``retinanet <command> [flags]``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else EXIT_USAGE)
    command = argv[1].replace("_", "-")
    if command not in HANDLERS:
        print(f"retinanet: error: unknown command {argv[1]!r}; expected one of "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    app.run(functools.partial(_main, command), argv=[f"retinanet {command}"] + argv[2:],
            flags_parser=functools.partial(_parse_flags, command))


if __name__ == "__main__":
    run()
