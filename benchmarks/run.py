"""RetinaNet side by side with keras-cv and keras-hub, interleaved, on this machine.

    python benchmarks/run.py --quick     # batch 2, up to 3 rounds, under 10 minutes
    python benchmarks/run.py             # full: batch 2 and 8, 5 rounds, profile
    python benchmarks/run.py --gpu       # accelerator: mixed precision + XLA, 640 px, batch 16
    python benchmarks/run.py --quick --phases train --train-mode fine-tuning

Train modes (`--train-mode`; the peers always train as they are built, every layer and every
batch statistic, from random weights):
  equal-work    (default) ours with every backbone layer trainable and batch statistics
                updating (frozen_batchnorm=False, frozen_early_stages=False): the same work
                per step as the peers
  fine-tuning   ours with its fine-tuning defaults (frozen batch norm, stem and res2 frozen,
                as when it starts from pretrained weights; here from random weights, which
                costs the same); the peers as they are

Workload: RetinaNet, ResNet50-shaped backbone, random weights, 20 classes, 512x512 images
(see benchmarks/systems.py for how each system is built without downloading anything).

Method: every system runs in its own subprocess (so peak RSS is per system), next to one
for the machine's matmul/conv peak and one for the input pipeline. After each process has
built its model and warmed up every phase (the first call traces and compiles; its time is
reported separately), the controller runs rounds; in each round every phase is timed on
every system in turn (ours, keras-cv, keras-hub, rotating the start each round), one process
working at a time. Figures are medians over rounds; ratios ours/peer are medians of the
per-round ratios, which cancel most of the drift in machine load.

Phases:
  forward              model(images, training=False) in a compiled tf.function
  predict:default      model.predict (decoding + NMS), each system's own score threshold
  predict:low          model.predict with score threshold 0.001 (every candidate goes to NMS)
                       (predict and train: per-batch times inside one call of N + 1 batches,
                       leaving out the first; see systems.batch_times)
  decode:trained-like  each system's decoding + NMS alone, on the same synthetic head outputs
                       shaped like a trained detector's (clusters of confident anchors)
  train                the model's own fit (its train_step and loss) on synthetic boxes
  postprocess:*        ours only: model.detect on precomputed head outputs (the decoding/NMS
                       share of predict, issue 3's < 25 % of forward)

Writes runs/bench/results.json (and per-process logs in runs/bench/logs/). The jobs live in
their own modules: `processes` (the worker subprocesses, machine facts), `stages` (one batch
size, interleaved rounds), `summary` (medians, ratios, targets, the printout); `systems` and
`worker` build and time each system in its subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import worker  # noqa: E402  (stdlib-only at import; TensorFlow loads in the subprocesses)
from processes import Proc, available_memory_gb, load_average, log, machine_info  # noqa: E402
from stages import run_stage  # noqa: E402
from summary import print_stage  # noqa: E402

SYSTEMS = ("ours", "keras-cv", "keras-hub")
TRAIN_MODES = ("equal-work", "fine-tuning")
MODEL_PHASES = ("forward", "predict:default", "predict:low", "decode:trained-like", "train",
                "postprocess:default", "postprocess:low")


# ----------------------------------------------------------------------------- settings


def settings(args):
    """The run's configuration from the command line."""
    if args.gpu:
        cfg = dict(mode="gpu", image_size=640, batch_sizes=[16], rounds=5, jit_compile=True,
                   steps={"forward": 10, "predict": 5, "decode": 5, "train": 10,
                          "postprocess": 10, "pipeline": 12},
                   warmup={"forward": 3, "predict": 2, "decode": 2, "train": 3,
                           "postprocess": 3},
                   budget_s=None, pipeline_images=192, profile=False)
    elif args.quick:
        cfg = dict(mode="quick", image_size=512, batch_sizes=[2], rounds=3, jit_compile=False,
                   steps={"forward": 1, "predict": 1, "decode": 1, "train": 1,
                          "postprocess": 2, "pipeline": 6},
                   warmup={"forward": 2, "predict": 1, "decode": 1, "train": 1,
                           "postprocess": 2},
                   budget_s=540, pipeline_images=64, profile=False)
    else:
        cfg = dict(mode="full", image_size=512, batch_sizes=[2, 8], rounds=5, jit_compile=False,
                   steps={"forward": 2, "predict": 1, "decode": 1, "train": 2,
                          "postprocess": 3, "pipeline": 12},
                   warmup={"forward": 2, "predict": 2, "decode": 2, "train": 2,
                           "postprocess": 3},
                   # Batch 8 costs 4x per step: fewer rounds and single steps there.
                   large_batch={"rounds": 3, "steps": {"forward": 1, "predict": 1, "decode": 1,
                                                       "train": 1, "postprocess": 2,
                                                       "pipeline": 6}},
                   budget_s=None, pipeline_images=192, profile=True)
    cfg["gpu"] = bool(args.gpu)
    if args.image_size:
        cfg["image_size"] = args.image_size
    if args.batch_size:
        cfg["batch_sizes"] = args.batch_size
    if args.rounds:
        cfg["rounds"] = args.rounds
        cfg["rounds_set"] = True
    if args.budget is not None:
        cfg["budget_s"] = args.budget or None
    if args.profile is not None:
        cfg["profile"] = args.profile
    cfg["systems"] = args.systems or list(SYSTEMS)
    cfg["phases"] = [p for p in MODEL_PHASES if not args.phases or p in args.phases]
    cfg["train_mode"] = args.train_mode
    cfg["ours_fused_batchnorm"] = args.fused_batchnorm
    cfg["ours_recompute_backbone"] = args.recompute_backbone
    cfg["low_threshold"] = worker.LOW_THRESHOLD
    return cfg


# ----------------------------------------------------------------------------- processes




# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="batch 2 only, 1 step per phase per round, at most 3 rounds within "
                             "a 540 s budget (under 10 minutes)")
    parser.add_argument("--gpu", action="store_true",
                        help="accelerator mode: mixed_float16 + XLA, 640x640, batch 16")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="with --gpu: run the GPU mode's code path on CPU (a smoke test)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, help="subset of systems")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--budget", type=float, help="seconds; 0 turns the budget off")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="op-type profile of ours (default: on in the full run)")
    parser.add_argument("--phases", nargs="+", choices=MODEL_PHASES,
                        help="subset of phases (default: all); without forward the "
                             "matmul/conv peak is not measured, with a subset the input "
                             "pipeline is not")
    parser.add_argument("--train-mode", choices=TRAIN_MODES, default="equal-work",
                        help="how ours trains (see above); default equal-work")
    parser.add_argument("--fused-batchnorm", action=argparse.BooleanOptionalAction,
                        default=True, help="ours with FusedBatchNormalization (default on, "
                                           "as the model's default)")
    parser.add_argument("--recompute-backbone", action="store_true",
                        help="ours recomputes the backbone's activations in the backward "
                             "pass (the memory option; default off, as the model's)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "results.json"))
    args = parser.parse_args(argv)
    if args.allow_cpu and not args.gpu:
        parser.error("--allow-cpu only applies with --gpu")

    cfg = settings(args)
    if cfg["gpu"]:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus and not args.allow_cpu:
            log("--gpu: TensorFlow sees no GPU on this machine, so nothing was run. "
                "Run it where `tf.config.list_physical_devices('GPU')` is not empty "
                "(or add --allow-cpu, with a small --image-size, to smoke-test the code path).")
            return 2
        cfg["gpu_devices"] = [gpu.name for gpu in gpus]

    out = pathlib.Path(args.out)
    logdir = out.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    profile_dir = out.parent / "profile" if cfg["profile"] else None
    started = time.monotonic()
    results = {"config": cfg, "machine": machine_info(), "load_average_start": load_average(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
               "stages": []}
    log(f"{results['machine'].get('cpu')}, {results['machine']['cores']} cores; load average "
        f"{results['load_average_start']}; mode {cfg['mode']}; logs in {logdir}")

    log(f"train mode {cfg['train_mode']}; ours fused batch norm "
        f"{cfg['ours_fused_batchnorm']}; recompute backbone "
        f"{cfg['ours_recompute_backbone']}; phases {', '.join(cfg['phases'])}")
    # The helpers only where their figures are used (they cost a process each).
    peak = (Proc("peak", dict(cfg, batch_size=0), logdir / "peak.log")
            if "forward" in cfg["phases"] else None)
    pipeline_proc = (Proc("pipeline", dict(cfg, batch_size=cfg["batch_sizes"][0]),
                          logdir / "pipeline.log")
                     if cfg["phases"] == list(MODEL_PHASES) else None)
    helpers = [proc for proc in (peak, pipeline_proc) if proc is not None]
    for proc in helpers:
        proc.wait_ready()
    for proc in helpers:
        if not proc.ok:
            log(f"{proc.role}: FAILED: {proc.error}")
    try:
        for batch in cfg["batch_sizes"]:
            if batch > 2 and not cfg["gpu"]:
                free = available_memory_gb()
                # Measured: ~2.5 GiB peak per system at batch 2, mostly activations.
                need = 1.5 + 1.2 * batch
                if free < need:
                    note = (f"batch {batch} skipped: {free:.1f} GiB available, about "
                            f"{need:.1f} GiB needed per warm-up")
                    log(note)
                    results["stages"].append({"batch_size": batch, "skipped": note})
                    continue
            if cfg["budget_s"] and time.monotonic() - started > cfg["budget_s"]:
                results["stages"].append({"batch_size": batch, "skipped": "over budget"})
                continue
            stage = run_stage(cfg, batch, peak, pipeline_proc, logdir, started, profile_dir)
            results["stages"].append(stage)
            print_stage(stage)
    finally:
        results["peak_setup"] = peak.info if peak else None
        results["pipeline_setup"] = pipeline_proc.info if pipeline_proc else None
        for proc in helpers:
            proc.stop()
        results["load_average_end"] = load_average()
        results["wall_s"] = time.monotonic() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))
    log(f"\nwall time {results['wall_s']:.0f} s; load average at the end "
        f"{results['load_average_end']}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
