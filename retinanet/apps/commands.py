"""The commands of `retinanet`, one function each, reading the flags `retinanet.apps.cli`
defines; `cli` parses the flags, calls the command and turns its errors into one line."""

from __future__ import annotations

import os
import re
import sys

from absl import flags

from retinanet import config as rconfig
from retinanet.training import datasets, reporting, trainer
from retinanet.training import workdir as run_folder
from retinanet.training.trainer import UsageError

FLAGS = flags.FLAGS


# -- shared helpers -----------------------------------------------------------------------


def _require(name: str) -> str:
    value = FLAGS[name].value
    if not value:
        raise UsageError(f"--{name} is required")
    return value


def _config(required: bool = True):
    """The --config, or WORKDIR/config.json, or for a --checkpoint without a run the preset
    defaults; validated."""
    config = FLAGS.config
    if config is None:
        workdir = FLAGS.workdir
        if not (required or workdir) and FLAGS.checkpoint not in run_folder.CHECKPOINT_CHOICES:
            return _pretrained_config()
        if required or not workdir:
            raise UsageError("--config is required: a recipe's name (e.g. --config=shapes; "
                             "`retinanet config --list`) or a file's path")
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            raise UsageError(f"--workdir={workdir}: no config.json (not a training run folder?); "
                             "pass --config")
        config = rconfig.load_json(path)
    rconfig.validate(config)
    return config


def _pretrained_config():
    """The default config at the COCO presets' input size, for a --checkpoint without a run."""
    from retinanet.model.pretrained import PRESET_IMAGE_SIZE

    config = rconfig.default_config()
    config.data.image_size = 0
    config.data.min_side, config.data.max_side = PRESET_IMAGE_SIZE
    return config


def _load_model(workdir: str | None, exported_ok: bool = False):
    """The --checkpoint (of `workdir`, or a preset or .keras file) as a `RetinaNet`; with
    `exported_ok`, an exported model (SavedModel, .tflite, .onnx) with the same
    `predict_on_batch`."""
    from retinanet.export.runtime import load_exported, runtime_of

    if exported_ok and runtime_of(FLAGS.checkpoint):
        print(f"Loading {FLAGS.checkpoint} ({runtime_of(FLAGS.checkpoint)})", flush=True)
        return load_exported(FLAGS.checkpoint, trust=FLAGS.trust_checkpoint)
    import keras

    import retinanet.model  # noqa: F401  (registers the custom objects for load_model)
    from retinanet.model import pretrained

    if pretrained.is_preset(FLAGS.checkpoint) or pretrained.is_torchvision_file(FLAGS.checkpoint):
        print(f"Converting {FLAGS.checkpoint}", flush=True)
        try:
            return pretrained.load_pretrained(FLAGS.checkpoint)
        except ImportError as error:
            raise UsageError(str(error)) from None
    path = run_folder.checkpoint_path(workdir or "", FLAGS.checkpoint)
    print(f"Loading {path}", flush=True)
    pretrained.check_keras_file(path)
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


def _set_test_time_flip(model):
    """--test_time_flip onto a Keras checkpoint (an exported model is served as exported)."""
    if FLAGS.test_time_flip is None:
        return
    if not hasattr(model, "test_time_flip"):
        raise UsageError(f"--test_time_flip: {FLAGS.checkpoint} is an exported model, which "
                         "detects as it was exported; use a .keras checkpoint")
    model.test_time_flip = FLAGS.test_time_flip
    if model.test_time_flip:
        print("Test-time flip: detecting on the images and their mirrors", flush=True)


def _set_precision():
    import keras

    from retinanet import hardware

    precision = FLAGS.precision or "float32"  # evaluate/predict: float32 unless asked
    policy, reason = hardware.resolve_precision(precision)
    if precision == hardware.AUTO:
        print(f"Precision {policy} ({reason})", flush=True)
    keras.mixed_precision.set_global_policy(policy)


# -- train --------------------------------------------------------------------------------


def cmd_train():
    """Trains the configured model in --workdir, resuming where a previous run stopped."""
    config = _config()
    workdir = _require("workdir")
    trainer.train(config, workdir, strategy=FLAGS.strategy,
                  precision=FLAGS.precision or trainer.DEFAULT_PRECISION, verbose=FLAGS.verbose,
                  tpu=FLAGS.tpu, keep_worker_dirs=FLAGS.keep_worker_dirs)


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
    model = _load_model(workdir, exported_ok=True)
    _set_test_time_flip(model)
    output = FLAGS.output or os.path.join(workdir, "eval", split)
    print(f"Evaluating on {len(dataset)} {split} images", flush=True)
    reporting.evaluate_and_report(model, config, datasets.eval_pipeline(config, dataset, model),
                                  output, dataset.class_names,
                                  category_ids or dataset.category_ids, FLAGS.verbose)


# -- predict ------------------------------------------------------------------------------


def cmd_predict():
    """Detections for image files: COCO-results JSON plus annotated copies of the images."""
    workdir = FLAGS.workdir
    if not workdir and FLAGS.checkpoint in run_folder.CHECKPOINT_CHOICES:
        raise UsageError("--workdir is required (or a --checkpoint that is a .keras file or a "
                         "keras-hub preset)")
    images = _require("images")
    output = _require("output")
    _check_writable(output)
    config = _config(required=False)
    from retinanet.apps.predict import image_records, predict_images
    from retinanet.data import DetectionDataset
    from retinanet.model import pretrained

    def report(name, problem):
        print(f"retinanet predict: skipping {name}: {problem}", file=sys.stderr, flush=True)

    records, names, skipped = image_records(images, FLAGS.stop_on_bad_image, report)
    class_names, category_ids = None, None
    if workdir and not (pretrained.is_preset(FLAGS.checkpoint)
                        or pretrained.is_torchvision_file(FLAGS.checkpoint)):
        class_names, category_ids = run_folder.read_classes(workdir)
    _set_precision()
    model = _load_model(workdir)
    _set_test_time_flip(model)
    if class_names is None:  # a preset or .keras file: the names and ids it carries
        class_names, category_ids = pretrained.model_classes(model)
    threshold = FLAGS.score_threshold
    if threshold is not None and threshold < model.postprocessor.score_threshold:
        # Read when the predict function is traced, i.e. on the first batch.
        model.postprocessor.score_threshold = float(threshold)
    batches = datasets.eval_pipeline(config, DetectionDataset(class_names, records, name=images),
                                     model)
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
        kwargs = {"input_size": (side, side), "image_size": size}
    else:
        kwargs = {"resize": size}
    if FLAGS.quantization:
        kwargs["quantization"] = FLAGS.quantization
    if FLAGS.quantization == "int8":
        from retinanet.export.calibration import DEFAULT_CALIBRATION_IMAGES

        train = datasets.load_datasets(config, ("train",))["train"]
        print(f"Calibrating int8 on {DEFAULT_CALIBRATION_IMAGES} of {len(train)} training "
              "images", flush=True)
        kwargs["representative_data"] = datasets.eval_pipeline(config, train, model)
    if FLAGS.per_class_thresholds:
        kwargs["class_score_thresholds"] = run_folder.best_f1_thresholds(workdir)
    class_names, _ = run_folder.read_classes(workdir)
    print(f"Exporting as {export_format} to {output}", flush=True)
    written = rexport.export(model, output, format=export_format, class_names=class_names,
                             **kwargs)
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
    config.data.allow_overlap = True  # the doctor reports it
    both = datasets.has_val(config)
    splits = datasets.load_datasets(config, ("train", "val") if both else (split,))
    dataset = splits[split]
    overlap = datasets.split_overlap(splits["train"], splits["val"]) if both else None
    anchor_generator = builders.build_anchor_generator(config)
    print(f"Examining {len(dataset)} {split} images", flush=True)
    report = run_doctor(dataset, anchor_generator,
                        builders.build_label_encoder(config, anchor_generator),
                        rconfig.image_size(config), config.data.max_boxes, output,
                        fit_anchors=FLAGS.fit_anchors, verbose=FLAGS.verbose, overlap=overlap)
    print(summary_text(report), flush=True)
    if report["errors"]:
        sys.exit(1)  # warnings alone exit 0


# -- config -------------------------------------------------------------------------------


def cmd_config():
    """Prints the resolved config (--config with its overrides, or WORKDIR/config.json): every
    field and its value, one per line; with --list, the shipped recipes instead."""
    if FLAGS.list:
        recipes = rconfig.recipes()
        width = max(map(len, recipes))
        print("\n".join(f"{name:<{width}}  {summary}" for name, summary in recipes.items()),
              flush=True)
        return
    config = _config(required=False)

    def lines(values, prefix):
        for key in sorted(values):
            if isinstance(values[key], dict):
                yield from lines(values[key], f"{prefix}{key}.")
            else:
                yield f"{prefix}{key} = {values[key]!r}"

    print("\n".join(lines(rconfig.to_dict(config), "config.")), flush=True)


HANDLERS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "debug-anchors": cmd_debug_anchors,
    "doctor": cmd_doctor,
    "config": cmd_config,
}
