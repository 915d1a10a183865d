"""The `retinanet` command line (an absl app): train, evaluate, predict, export, debug-anchors.

    retinanet train --config=configs/shapes.py --workdir=runs/shapes [--config.train.epochs=3]
    retinanet evaluate --workdir=runs/shapes [--split=val|train] [--checkpoint=best|last|PATH]
    retinanet predict --workdir=runs/shapes --images=FILE_OR_DIR --output=DIR
    retinanet export --workdir=runs/shapes --output=DIR [--format=saved_model|litert|onnx]
    retinanet debug-anchors --config=configs/shapes.py [--output=DIR] [--split=train]
    retinanet doctor --config=configs/shapes.py [--output=DIR] [--split=train] [--fit_anchors]
    retinanet config --config=configs/shapes.py [--config.train.epochs=3]

`retinanet.training.workdir` lists what a training run's workdir holds.

Bad input (a wrong config field, a missing dataset path, an unknown format or flag value)
ends with one line `retinanet <command>: error: ...` on stderr and exit status 2; pass
`--debug` for the traceback. `retinanet <command> --help` lists the command's own flags, and
imports no TensorFlow.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retinanet import config as rconfig  # noqa: E402
from retinanet.training import datasets, trainer  # noqa: E402
from retinanet.training import workdir as run_folder  # noqa: E402
from retinanet.training.trainer import PRECISIONS, STRATEGIES, UsageError  # noqa: E402

COMMANDS = ("train", "evaluate", "predict", "export", "debug-anchors", "doctor", "config")
# The flags each command reads, in the order `retinanet <command> --help` lists them.
COMMAND_FLAGS = {
    "train": ("config", "workdir", "strategy", "tpu", "precision", "verbose",
              "keep_worker_dirs", "debug"),
    "evaluate": ("workdir", "config", "split", "checkpoint", "output", "precision", "verbose",
                 "debug"),
    "predict": ("workdir", "images", "output", "config", "checkpoint", "score_threshold",
                "stop_on_bad_image", "precision", "verbose", "debug"),
    "export": ("workdir", "output", "format", "quantization", "per_class_thresholds", "config",
               "checkpoint", "debug"),
    "debug-anchors": ("config", "workdir", "split", "output", "num_images", "verbose", "debug"),
    "doctor": ("config", "workdir", "split", "output", "fit_anchors", "verbose", "debug"),
    "config": ("config", "workdir", "debug"),
}
# Python spellings in library messages, as the command line spells them.
CLI_SPELLINGS = {
    "skip_invalid=True": "--config.data.skip_invalid=true",
    "download=True": "--config.data.tfds_download=true",
    "check_images='none'": "--config.data.check_images=none",
    'check_images="none"': "--config.data.check_images=none",
}
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
                  "Dataset split (evaluate: default val; debug-anchors, doctor: default train).")
flags.DEFINE_string("checkpoint", "best",
                    "evaluate/predict/export: best, last, or the path of a .keras file.")
flags.DEFINE_string("images", None, "predict: an image file or a folder (searched recursively).")
flags.DEFINE_string("output", None, "predict/export/debug-anchors/evaluate: output folder.")
flags.DEFINE_string("format", "saved_model",
                    "export: saved_model, litert (alias tflite) or onnx.")
flags.DEFINE_enum("per_class_thresholds", "", ["", "best_f1"],
                  "export --format=saved_model: best_f1 bakes each class's best-F1 score "
                  "threshold from WORKDIR/analysis.json (the last validation) into the model.")
flags.DEFINE_string("quantization", "", "export --format=litert: '', float16 or dynamic_range.")
flags.DEFINE_float("score_threshold", None,
                   "predict: keep detections with at least this score (default: 0.3 for the "
                   "drawings, the config's postprocess.score_threshold for the JSON).")
flags.DEFINE_bool("stop_on_bad_image", False,
                  "predict: stop at the first unreadable image (default: skip it, name it on "
                  "stderr and count it).")
flags.DEFINE_integer("num_images", 16, "debug-anchors: how many images to draw.")
flags.DEFINE_bool("fit_anchors", False, "doctor: search anchor sizes, scales and ratios that "
                  "cover the boxes best; prints them as --config.model.anchors.* overrides.")
flags.DEFINE_integer("verbose", 1, "Progress output: 0 silent, 1 progress bars, 2 one line "
                     "per epoch.")
flags.DEFINE_bool("keep_worker_dirs", False,
                  "multi-worker: keep non-chief workers' checkpoints in WORKDIR/workers/ "
                  "(default: temporary folders, removed at the end).")
flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")


def cli_spelling(message: str) -> str:
    """A library message with its Python hints (`skip_invalid=True`) as command-line flags."""
    for python, flag in CLI_SPELLINGS.items():
        message = message.replace(python, flag)
    return message


def _fail(command: str, message) -> None:
    text = cli_spelling(" ".join(str(message).split()))  # one line
    print(f"retinanet {command}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _usage() -> str:
    return ("usage: retinanet {" + ",".join(COMMANDS) + "} [flags]\n"
            + (__doc__ or "").split("\n\n")[1] + "\n"
            "Run `retinanet <command> --help` for the command's flags.")


def command_help(command: str) -> str:
    """`retinanet <command> --help`: the command's summary and its flags, one line each."""
    handler = HANDLERS[command]
    lines = [f"usage: retinanet {command} [flags]", "", (handler.__doc__ or "").strip(), "",
             "flags:"]
    for name in COMMAND_FLAGS[command]:
        flag = FLAGS[name]
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        text = " ".join(flag.help.split())
        lines.append(f"  --{name}: {text}{default}")
    return "\n".join(lines)


def _quiet_tensorflow_import():
    """Imports TensorFlow (and finds its devices) with its C++ start-up lines hidden.

    TensorFlow 2.21 writes some lines before its logging reads `TF_CPP_MIN_LOG_LEVEL`
    ("All log messages before absl::InitializeLog()", cuInit failures on machines without a
    GPU), so stderr's file descriptor is pointed at /dev/null meanwhile. A user who set
    `TF_CPP_MIN_LOG_LEVEL` themselves sees everything.
    """
    import retinanet

    if "tensorflow" in sys.modules or retinanet.USER_TF_LOG_LEVEL is not None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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


def _load_model(workdir: str):
    """The --checkpoint of `workdir` as a `RetinaNet`."""
    import keras

    import retinanet.model  # noqa: F401  (registers the custom objects for load_model)

    path = run_folder.checkpoint_path(workdir, FLAGS.checkpoint)
    print(f"Loading {path}", flush=True)
    try:
        return keras.saving.load_model(path)
    except TypeError as error:
        # Keras's message for an unknown class runs to thousands of characters (the whole
        # config); the class name is what the user needs.
        unknown = re.search(r"Could not locate class '([^']+)'", str(error))
        if unknown is None:
            raise
        raise ValueError(f"{path}: not a checkpoint this package can load: it holds a class "
                         f"'{unknown.group(1)}' that neither Keras nor retinanet defines") \
            from None


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
    _set_precision()
    dataset = datasets.load_datasets(config, (split,))[split]
    class_names, category_ids = run_folder.read_classes(workdir)
    if class_names is not None and class_names != dataset.class_names:
        raise UsageError(f"the {split} split's classes {dataset.class_names} differ from the "
                         f"trained model's {class_names}")
    model = _load_model(workdir)
    output = FLAGS.output or os.path.join(workdir, "eval", split)
    print(f"Evaluating on {len(dataset)} {split} images", flush=True)
    trainer.evaluate_and_report(model, config, datasets.eval_pipeline(config, dataset), output,
                                dataset.class_names, category_ids or dataset.category_ids,
                                FLAGS.verbose)


# -- predict ------------------------------------------------------------------------------


def cmd_predict():
    """Detections for image files: COCO-results JSON plus annotated copies of the images."""
    workdir = _require("workdir")
    images = _require("images")
    output = _require("output")
    _check_writable(output)
    config = _config(required=False)
    from retinanet.apps.predict import image_records, predict_images
    from retinanet.data import DetectionDataset

    def report(name, problem):
        print(f"retinanet predict: skipping {name}: {problem}", file=sys.stderr, flush=True)

    records, names, skipped = image_records(images, FLAGS.stop_on_bad_image, report)
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
    unreadable = f", {len(skipped)} unreadable images skipped" if skipped else ""
    print(f"{found} detections in {done} images{unreadable} -> {path} (COCO results format; "
          f"category_id is the {'dataset category id' if category_ids else '0-based class'})",
          flush=True)


def _check_writable(output: str):
    """Raises UsageError unless `output` is (or can be created as) a writable folder."""
    existing = os.path.abspath(output)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not a folder" if not os.path.isdir(existing) else "is not writable"
        raise UsageError(f"--output={output}: {existing} {problem}")


# -- export -------------------------------------------------------------------------------


def cmd_export():
    """Exports a checkpoint of --workdir as a SavedModel, LiteRT or ONNX model."""
    workdir = _require("workdir")
    output = _require("output")
    from retinanet import export as rexport

    export_format = {"tflite": "litert"}.get(FLAGS.format, FLAGS.format)
    if export_format not in rexport.FORMATS:
        raise UsageError(f"--format={FLAGS.format}: unknown format; expected one of "
                         f"{', '.join(rexport.FORMATS)} (tflite = litert)")
    config = _config(required=False)
    from retinanet.preprocess import round_up

    model = _load_model(workdir)
    size = rconfig.image_size(config)
    if export_format == "litert":
        # A fixed square canvas that holds the resized images of either resize rule.
        side = round_up(size if isinstance(size, int) else size[1],
                        model.anchor_generator.stride_multiple)
        kwargs = {"input_size": (side, side), "quantization": FLAGS.quantization or None}
    else:
        if FLAGS.quantization:
            raise UsageError("--quantization applies to --format=litert only")
        kwargs = {"resize": size}
    if FLAGS.per_class_thresholds:
        kwargs["class_score_thresholds"] = run_folder.best_f1_thresholds(workdir)
    print(f"Exporting as {export_format} to {output}", flush=True)
    written = rexport.export(model, output, format=export_format, **kwargs)
    print(f"Wrote {written}", flush=True)


# -- debug-anchors ------------------------------------------------------------------------


def cmd_debug_anchors():
    """Reports the share of ground-truth boxes matched by a positive anchor, and draws them."""
    config = _config(required=False)
    split = FLAGS.split or "train"
    output = FLAGS.output or os.path.join(FLAGS.workdir or "runs", "debug_anchors")
    from retinanet.apps.debug_anchors import debug_anchors

    dataset = datasets.load_datasets(config, (split,))[split]
    print(f"Matching anchors to the boxes of {len(dataset)} {split} images", flush=True)
    report = debug_anchors(config, dataset, output, FLAGS.num_images, FLAGS.verbose)
    sizes = ", ".join(f"{name} {v['recall']:.1%} of {v['num_boxes']}"
                      for name, v in report["by_size"].items() if v["num_boxes"])
    print(f"{report['recall']:.1%} of {report['num_boxes']} ground-truth boxes have an anchor "
          f"with IoU >= {report['positive_iou']} ({sizes}); "
          f"{report['recall_low_quality']:.1%} with low-quality matches. "
          f"Drawings (green matched, red not, yellow best anchor) and report.json in {output}",
          flush=True)


def cmd_doctor():
    """Checks the configured dataset: data health, anchor coverage, optionally fitted anchors."""
    config = _config(required=False)
    split = FLAGS.split or "train"
    output = FLAGS.output or os.path.join(FLAGS.workdir or "runs", "doctor")
    from retinanet.diagnostics import run_doctor, summary_text
    from retinanet.training import builders

    config.data.skip_invalid = True  # the doctor counts and names bad input instead of stopping
    dataset = datasets.load_datasets(config, (split,))[split]
    anchor_generator = builders.build_anchor_generator(config)
    print(f"Examining {len(dataset)} {split} images", flush=True)
    report = run_doctor(dataset, anchor_generator,
                        builders.build_label_encoder(config, anchor_generator),
                        rconfig.image_size(config), config.data.max_boxes, output,
                        fit_anchors=FLAGS.fit_anchors, verbose=FLAGS.verbose)
    print(summary_text(report), flush=True)


# -- config -------------------------------------------------------------------------------


def cmd_config():
    """Prints the resolved config (--config with its overrides, or WORKDIR/config.json): every
    field and its value, one per line."""
    config = _config(required=False)

    def lines(values, prefix):
        for key in sorted(values):
            if isinstance(values[key], dict):
                yield from lines(values[key], f"{prefix}{key}.")
            else:
                yield f"{prefix}{key} = {values[key]!r}"

    print("\n".join(lines(rconfig.to_dict(config), "config.")), flush=True)


# -- entry point --------------------------------------------------------------------------

HANDLERS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "debug-anchors": cmd_debug_anchors,
    "doctor": cmd_doctor,
    "config": cmd_config,
}


def _main(command, argv):
    if len(argv) > 1:
        _fail(command, f"unexpected arguments {argv[1:]} (flags are --name=value)")
    if FLAGS.debug:
        import keras

        keras.config.disable_traceback_filtering()
    _quiet_tensorflow_import()
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
    if any(arg in ("-h", "--help", "-help", "--helpshort", "--helpfull") for arg in argv[2:]):
        print(command_help(command))
        sys.exit(0)
    app.run(functools.partial(_main, command), argv=[f"retinanet {command}"] + argv[2:],
            flags_parser=functools.partial(_parse_flags, command))


if __name__ == "__main__":
    run()
