"""The `retinanet` command line (an absl app): train, evaluate, predict, export, doctor...

    retinanet train --config=shapes --workdir=runs/shapes [--config.train.epochs=3]
    retinanet evaluate --workdir=runs/shapes [--split=val|train] [--checkpoint=best|last|PATH]
    retinanet predict --workdir=runs/shapes --images=FILE_OR_DIR --output=DIR
    retinanet predict --checkpoint=retinanet_resnet50_fpn_coco --images=... --output=DIR
    retinanet predict --checkpoint=torchvision_retinanet.safetensors --images=... --output=DIR
    retinanet export --workdir=runs/shapes --output=DIR [--format=saved_model|litert|onnx]
    retinanet debug-anchors --config=shapes [--output=DIR] [--split=train]
    retinanet doctor --config=shapes [--output=DIR] [--split=train] [--fit_anchors]
    retinanet config --config=shapes [--config.train.epochs=3]
    retinanet config --list
    retinanet --version

`--config` takes a shipped recipe's name (`retinanet config --list`) or a config file's path
(`./mine.py`, anything with a `/` or ending in `.py`).

`retinanet.training.workdir` lists what a training run's workdir holds.

Bad input (a wrong config field, a missing dataset path, an unknown format or flag value)
ends with one line `retinanet <command>: error: ...` on stderr and exit status 2; pass
`--debug` for the traceback. `retinanet <command> --help` lists the command's own flags, and
imports no TensorFlow.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retinanet.training.trainer import PRECISIONS, STRATEGIES  # noqa: E402

COMMANDS = ("train", "evaluate", "predict", "export", "debug-anchors", "doctor", "config")
# The flags each command reads, in the order `retinanet <command> --help` lists them.
COMMAND_FLAGS = {
    "train": ("config", "workdir", "strategy", "tpu", "precision", "verbose",
              "keep_worker_dirs", "debug"),
    "evaluate": ("workdir", "config", "split", "checkpoint", "trust_checkpoint", "output",
                 "precision", "verbose", "debug"),
    "predict": ("workdir", "images", "output", "config", "checkpoint", "score_threshold",
                "stop_on_bad_image", "precision", "verbose", "debug"),
    "export": ("workdir", "output", "format", "quantization", "per_class_thresholds", "config",
               "checkpoint", "debug"),
    "debug-anchors": ("config", "workdir", "split", "output", "num_images", "verbose", "debug"),
    "doctor": ("config", "workdir", "split", "output", "fit_anchors", "verbose", "debug"),
    "config": ("config", "workdir", "list", "debug"),
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
    "config", None, "A recipe's name (`retinanet config --list`) or a config file's path (a .py "
    "with get_config()); override any field with --config.<section>.<field>=VALUE. "
    "evaluate/predict/export default to WORKDIR/config.json.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Training run folder (checkpoints, logs, config, metrics).")
flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy for training.")
flags.DEFINE_string("tpu", "", "--strategy=tpu: TPU name or grpc:// address ('' = local TPU VM).")
flags.DEFINE_enum("precision", None, PRECISIONS,
                  "Keras dtype policy (default float32). "
                  "auto: mixed_bfloat16 on a CPU-only run whose CPU has native bfloat16 "
                  "(AVX512_BF16 or AMX_BF16), float32 otherwise. train prints the policy used "
                  "and writes it to WORKDIR/run.json.")
flags.DEFINE_enum("split", None, ["train", "val"],
                  "Dataset split (evaluate: default val; debug-anchors, doctor: default train).")
flags.DEFINE_string("checkpoint", "best",
                    "evaluate/predict/export: best, last, the path of a .keras file, a "
                    "keras-hub preset name or directory, or a torchvision RetinaNet state dict "
                    "(.safetensors or .npz; predict then needs no --workdir); "
                    "evaluate also takes an exported SavedModel directory, .tflite or .onnx.")
flags.DEFINE_bool("trust_checkpoint", False,
                  "evaluate: run an exported SavedModel even when its graph holds ops no "
                  "retinanet export uses (file I/O, Python calls, dataset readers). Exported "
                  "models are programs: trust only files you made or know.")
flags.DEFINE_string("images", None, "predict: an image file or a folder (searched recursively).")
flags.DEFINE_string("output", None, "predict/export/debug-anchors/evaluate: output folder.")
flags.DEFINE_string("format", "saved_model",
                    "export: saved_model, litert (alias tflite) or onnx.")
flags.DEFINE_enum("per_class_thresholds", "", ["", "best_f1"],
                  "export --format=saved_model: best_f1 bakes each class's best-F1 score "
                  "threshold from WORKDIR/analysis.json (the last validation) into the model.")
flags.DEFINE_string("quantization", "", "export: litert '', float16, dynamic_range or int8; "
                    "onnx '' or int8 (int8 calibrates on 100 training images).")
flags.DEFINE_float("score_threshold", None,
                   "predict: keep detections with at least this score (default: 0.3 for the "
                   "drawings, the config's postprocess.score_threshold for the JSON).")
flags.DEFINE_bool("test_time_flip", None,
                  "evaluate/predict: also detect on the mirrored images and fuse both views "
                  "(about twice the time; default: as the checkpoint was saved). Keras "
                  "checkpoints only.")
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
flags.DEFINE_bool("list", False, "config: list the shipped recipes, one line each.")
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


# Lines of a TensorFlow runtime error that say where, not what.
_GRAPH_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[",
                      "Detected unsupported operations")


def graph_error_cause(message: str) -> str:
    """The cause in a TensorFlow runtime error's message, not its "Graph execution error:".

    A failed `tf.debugging.Assert` gives `assertion failed: [text] [values]`, which becomes
    `text values`; an error inside a tf.data function loses its "Error in user-defined
    function ... with iterator: Iterator::...:" prefix.
    """
    lines = [line.strip() for line in message.strip().splitlines()]
    cause = next((line for line in lines if line and not line.startswith(_GRAPH_ERROR_NOISE)),
                 lines[0] if lines else message)
    if cause.startswith("Error in user-defined function") and "with iterator: " in cause:
        cause = cause.split("with iterator: ", 1)[1].split(": ", 1)[-1]
    if "assertion failed: " in cause:
        cause = cause.split("assertion failed: ", 1)[1]
        cause = " ".join(part.strip("[] ") for part in cause.split("] ["))
    return cause


def _usage() -> str:
    return ("usage: retinanet {" + ",".join(COMMANDS) + "} [flags]\n"
            + (__doc__ or "").split("\n\n")[1] + "\n"
            "Run `retinanet <command> --help` for the command's flags.")


def command_help(command: str) -> str:
    """`retinanet <command> --help`: the command's summary and its flags, one line each."""
    from retinanet.apps.commands import HANDLERS

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


def _main(command, argv):
    if len(argv) > 1:
        _fail(command, f"unexpected arguments {argv[1:]} (flags are --name=value)")
    if FLAGS.debug:
        import keras

        keras.config.disable_traceback_filtering()
    import retinanet

    if command in ("predict", "export") and retinanet.USER_TF_LOG_LEVEL is None:
        # Their C++ ERROR lines are noise too: libjpeg's "Premature end of JPEG data" before
        # the file is named and skipped, the converters' notices about graph attributes.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _quiet_tensorflow_import()
    if FLAGS.verbose < 2:
        logging.set_verbosity(logging.WARNING)  # not absl's INFO lines of SavedModel writing
    from retinanet.apps.commands import HANDLERS

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
        _fail(command, graph_error_cause(error.message))


def _resolve_config_flag(command, argv):
    """`argv` with `--config=NAME` (or `--config NAME`) as the recipe's file path."""
    from retinanet.config import ConfigError, resolve_config_file

    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            index, value = i, arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(argv):
            index, value = i + 1, argv[i + 1]
        else:
            continue
        try:
            path = resolve_config_file(value)
        except ConfigError as error:
            _fail(command, error)
        argv[index] = f"--config={path}" if index == i else path
    return argv


def _parse_flags(command, argv):
    argv = _resolve_config_flag(command, argv)
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
    if argv[1] in ("--version", "-V", "version"):
        from retinanet import __version__

        print(f"retinanet {__version__}")
        sys.exit(0)
    command = argv[1].replace("_", "-")
    if command not in COMMANDS:
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
