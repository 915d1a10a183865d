"""The `retinanet` command line (an absl app): train, evaluate, predict, export, debug-anchors.

    retinanet train --config=configs/shapes.py --workdir=runs/shapes [--config.train.epochs=3]
    retinanet evaluate --workdir=runs/shapes [--split=val|train] [--checkpoint=best|last|PATH]
    retinanet predict --workdir=runs/shapes --images=FILE_OR_DIR --output=DIR
    retinanet export --workdir=runs/shapes --output=DIR [--format=saved_model|litert|onnx]
    retinanet debug-anchors --config=configs/shapes.py [--output=DIR] [--split=train]

`retinanet.training.workdir` lists what a training run's workdir holds.

Bad input (a wrong config field, a missing dataset path, an unknown format or flag value)
ends with one line `retinanet <command>: error: ...` on stderr and exit status 2; pass
`--debug` for the traceback.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retinanet import atomic  # noqa: E402
from retinanet import config as rconfig  # noqa: E402
from retinanet.training import datasets, trainer  # noqa: E402
from retinanet.training import workdir as run_folder  # noqa: E402
from retinanet.training.trainer import PRECISIONS, STRATEGIES, UsageError  # noqa: E402

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
                    "evaluate/predict/export: best, last, or the path of a .keras file; "
                    "evaluate also takes an exported SavedModel directory, .tflite or .onnx.")
flags.DEFINE_string("images", None, "predict: an image file or a folder (searched recursively).")
flags.DEFINE_string("output", None, "predict/export/debug-anchors/evaluate: output folder.")
flags.DEFINE_string("format", "saved_model", "export: saved_model, litert or onnx.")
flags.DEFINE_string("quantization", "", "export: litert '', float16, dynamic_range or int8; "
                    "onnx '' or int8 (int8 calibrates on 100 training images).")
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


def _load_model(workdir: str, exported_ok: bool = False):
    """The --checkpoint of `workdir` as a `RetinaNet`; with `exported_ok`, an exported model
    (SavedModel, .tflite, .onnx) given as --checkpoint, with the same `predict_on_batch`."""
    from retinanet.export.runtime import load_exported, runtime_of

    if exported_ok and runtime_of(FLAGS.checkpoint):
        print(f"Loading {FLAGS.checkpoint} ({runtime_of(FLAGS.checkpoint)})", flush=True)
        return load_exported(FLAGS.checkpoint)
    import keras

    import retinanet  # noqa: F401  (registers the custom objects)

    path = run_folder.checkpoint_path(workdir, FLAGS.checkpoint)
    print(f"Loading {path}", flush=True)
    return keras.saving.load_model(path)


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
    dataset = datasets.load_datasets(config, (split,))[split]
    class_names, category_ids = run_folder.read_classes(workdir)
    if class_names is not None and class_names != dataset.class_names:
        raise UsageError(f"the {split} split's classes {dataset.class_names} differ from the "
                         f"trained model's {class_names}")
    model = _load_model(workdir, exported_ok=True)
    output = FLAGS.output or os.path.join(workdir, "eval", split)
    print(f"Evaluating on {len(dataset)} {split} images", flush=True)
    results = evaluate(model, datasets.eval_pipeline(config, dataset),
                       class_names=dataset.class_names,
                       category_ids=category_ids or dataset.category_ids,
                       verbose=FLAGS.verbose,
                       voc_iou_threshold=config.eval.voc_iou_threshold,
                       voc_method=config.eval.voc_method)
    write_report(results, output, print_table=FLAGS.verbose > 0)
    trainer.summary(results, output)


# -- predict ------------------------------------------------------------------------------


def cmd_predict():
    """Detections for image files: COCO-results JSON plus annotated copies of the images."""
    workdir = _require("workdir")
    images = _require("images")
    output = _require("output")
    config = _config(required=False)
    from retinanet.apps.predict import image_records, predict_images
    from retinanet.data import DetectionDataset

    records, names = image_records(images)
    class_names, category_ids = run_folder.read_classes(workdir)
    _set_precision()
    model = _load_model(workdir)
    if class_names is None:
        class_names = [str(i) for i in range(model.num_classes)]
    threshold = FLAGS.score_threshold
    if threshold is not None and threshold < model.postprocessor.score_threshold:
        # Read when the predict function is traced, i.e. on the first batch.
        model.postprocessor.score_threshold = float(threshold)
    batches = datasets.eval_pipeline(config, DetectionDataset(class_names, records, name=images))
    path, found, done = predict_images(model, batches, records, names, output, class_names,
                                       category_ids, threshold, FLAGS.verbose)
    print(f"{found} detections in {done} images -> {path} (COCO results format; "
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
    from retinanet.preprocess import round_up

    model = _load_model(workdir)
    size = rconfig.image_size(config)
    if FLAGS.format == "litert":
        # A fixed square canvas that holds the resized images of either resize rule.
        side = round_up(size if isinstance(size, int) else size[1],
                        model.anchor_generator.stride_multiple)
        kwargs = {"input_size": (side, side)}
    else:
        kwargs = {"resize": size}
    if FLAGS.quantization:
        kwargs["quantization"] = FLAGS.quantization
    if FLAGS.quantization == "int8":
        from retinanet.export.calibration import DEFAULT_CALIBRATION_IMAGES

        train = datasets.load_datasets(config, ("train",))["train"]
        print(f"Calibrating int8 on {DEFAULT_CALIBRATION_IMAGES} of {len(train)} training "
              "images", flush=True)
        kwargs["representative_data"] = datasets.eval_pipeline(config, train)
    print(f"Exporting as {FLAGS.format} to {output}", flush=True)
    written = rexport.export(model, output, format=FLAGS.format, **kwargs)
    print(f"Wrote {written}", flush=True)


# -- debug-anchors ------------------------------------------------------------------------


def cmd_debug_anchors():
    """Reports the share of ground-truth boxes matched by a positive anchor, and draws them."""
    config = _config(required=False)
    split = FLAGS.split or "train"
    output = FLAGS.output or os.path.join(FLAGS.workdir or "runs", "debug_anchors")
    dataset = datasets.load_datasets(config, (split,))[split]
    os.makedirs(output, exist_ok=True)
    print(f"Matching anchors to the boxes of {len(dataset)} {split} images", flush=True)
    from retinanet.apps.debug_anchors import anchor_coverage

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
    """Console entry point: `retinanet <command> [flags]`."""
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
