"""The ablation of `configs/scratch_cpu.py` on the raccoon photos (docs/LEARNING.md).

Each run trains the recipe with one change (`--variant`) for a fixed number of optimizer
steps (not minutes, so the machine's load cannot change the result) and evaluates it; tuning
runs evaluate on a split held out of raccoon's train (`--eval=val`, val_fraction 0.1), the
final runs on the 40 test images (`--eval=test`). It prints one JSON line and leaves the
workdir (metrics.json with COCO AP and AP50).

    taskset -c 0 python benchmarks/scratch_ablation.py --variant=base --steps=600 \
        --workdir=runs/ablation/base_s0 --seed=0

`--cpu_budget_minutes=M` instead trains to a budget of M minutes of this process's CPU time
(`time.process_time`): on a core of its own that is the time of an idle core, which is how
the step time is measured on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RACCOON = ROOT.parent / "shared" / "datasets" / "raccoon"
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one

# One change each to configs/scratch_cpu.py: (field path, value) pairs.
VARIANTS = {
    "base": [],
    "wide_jitter": [("data.scale_range", (0.5, 1.5))],
    "lr_2e-3": [("train.learning_rate", 2e-3)],
    "lr_5e-4": [("train.learning_rate", 5e-4)],
    "warmup_50": [("train.warmup_steps", 50)],
    "anchor_3": [("model.anchors.anchor_size", 3.0)],
    "gamma_1.5": [("train.focal_gamma", 1.5)],
    "batch_8": [("data.batch_size", 8)],
    "size_256": [("data.image_size", 256)],
    "blocks_0": [("model.simple_blocks", 0)],
    "max_boxes_16": [("data.max_boxes", 16)],
}


def load_config():
    path = ROOT / "configs" / "scratch_cpu.py"
    spec = importlib.util.spec_from_file_location("scratch_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def configure(variants, steps, seed, evaluate_on, cpu_budget_minutes):
    config = load_config()
    config.seed = seed
    config.data.format = "csv"
    config.data.train = str(RACCOON / "train_labels.csv")
    config.data.train_images = str(RACCOON / "images")
    if evaluate_on == "test":
        config.data.val = str(RACCOON / "test_labels.csv")
        config.data.val_images = str(RACCOON / "images")
    else:
        config.data.val_fraction = 0.1
    for name in variants:
        for field, value in VARIANTS[name]:
            *sections, key = field.split(".")
            section = config
            for part in sections:
                section = section[part]
            section[key] = value
    if cpu_budget_minutes:
        config.train.time_budget_minutes = cpu_budget_minutes
    else:
        # A fixed number of steps: the cosine runs over exactly these.
        config.train.time_budget_minutes = 0.0
        config.train.steps_per_epoch = 50
        config.train.epochs = max(1, round(steps / 50))
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="base",
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", dest="evaluate_on", choices=("val", "test"), default="val")
    parser.add_argument("--cpu_budget_minutes", type=float, default=0.0)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    variants = [name for name in args.variant.split(",") if name]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variant: unknown {unknown}; known: {', '.join(VARIANTS)}")

    from retinanet.training.trainer import train

    config = configure(variants, args.steps, args.seed, args.evaluate_on,
                       args.cpu_budget_minutes)
    cpu, wall = time.process_time(), time.monotonic()
    train(config, args.workdir, verbose=2, clock=time.process_time)
    with open(os.path.join(args.workdir, "metrics.json"), encoding="utf-8") as file:
        metrics = json.load(file)
    row = {"variant": args.variant, "seed": args.seed, "eval": args.evaluate_on,
           "steps": (metrics["time_budget"]["steps_done"] if "time_budget" in metrics
                     else config.train.epochs * config.train.steps_per_epoch),
           "AP": metrics["coco"]["AP"], "AP50": metrics["coco"]["AP50"],
           "cpu_s": round(time.process_time() - cpu), "wall_s": round(time.monotonic() - wall),
           "time_budget": metrics.get("time_budget")}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
