"""Train-step time under a dtype policy and with or without XLA (issue 30).

One worker process per setting, so each gets a fresh Keras policy and TensorFlow runtime;
the driver alternates the settings round by round, so background load on a shared machine
falls on all of them alike.

    # the scratch recipe's model (batch 4, 384 px): float32 against mixed_bfloat16
    python benchmarks/precision_step.py --model=scratch --settings=float32,mixed_bfloat16
    # a ResNet50 RetinaNet (random weights, frozen BN and stem+res2 as fine-tuning), 512 px, batch 2
    python benchmarks/precision_step.py --model=r50 --settings=float32,mixed_bfloat16
    # XLA for the scratch recipe's train step
    python benchmarks/precision_step.py --model=scratch --settings=float32,float32+jit
    # the share of the heads' GroupNorm in the step
    python benchmarks/precision_step.py --model=scratch --settings=float32,float32+nogn

Each worker prints one JSON line: the first step (trace + compile + run) and the median,
min and max of the timed steps after `--warmup` more, in wall and process CPU seconds, and
the losses (finite, falling). The driver prints the per-round lines and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = {"scratch": (384, 4), "r50": (512, 2)}


def _config(model: str):
    import importlib

    if model == "scratch":
        config = importlib.import_module("retinanet.configs.scratch_cpu").get_config()
    else:
        config = importlib.import_module("retinanet.configs.custom").get_config()
        config.model.backbone_weights = ""  # offline; freezing as a fine-tuning run
        config.model.frozen_batchnorm = True
        config.model.frozen_early_stages = True
    size, batch = MODELS[model]
    config.data.image_size, config.data.batch_size = size, batch
    config.train.time_budget_minutes = 0.0
    return config


def _batch(size: int, batch: int, boxes: int = 4, seed: int = 0):
    """Synthetic images [B, S, S, 3] in 0-255 and xyxy pixel boxes [B, N, 4], classes [B, N]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    corner = rng.uniform(0, size * 0.6, (batch, boxes, 2))
    extent = rng.uniform(size * 0.1, size * 0.4, (batch, boxes, 2))
    xyxy = np.concatenate([corner, np.minimum(corner + extent, size)], -1).astype("float32")
    return images, {"boxes": xyxy, "classes": np.zeros((batch, boxes), "int32")}


def worker(model: str, setting: str, steps: int, warmup: int) -> dict:
    import keras

    from retinanet.training import builders

    policy, *options = setting.split("+")
    unknown = set(options) - {"jit", "nogn", "fastgn", "kerasgn"}
    if unknown:
        raise ValueError(f"--settings: unknown option {sorted(unknown)} in {setting!r}")
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    config = _config(model)
    config.train.jit_compile = "jit" in options
    if "fastgn" in options or "kerasgn" in options:
        from retinanet.model import group_norm, heads

        heads.GroupNormalization = group_norm.FastGroupNormalization if "fastgn" in options \
            else keras.layers.GroupNormalization
    if "nogn" in options:  # bounds what a cheaper GroupNorm could save
        config.model.use_group_norm = False
    net = builders.build_model(config, num_classes=1)
    builders.compile_model(net, config, total_steps=1000)
    x, y = _batch(config.data.image_size, config.data.batch_size)

    def step():
        wall, cpu = time.perf_counter(), time.process_time()
        loss = net.train_on_batch(x, y, return_dict=True)["loss"]
        return time.perf_counter() - wall, time.process_time() - cpu, float(loss)

    first_wall, first_cpu, first_loss = step()
    losses = [first_loss]
    for _ in range(warmup):
        losses.append(step()[2])
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu, loss = step()
        walls.append(wall), cpus.append(cpu), losses.append(loss)
    return {"model": model, "setting": setting, "first_wall_s": first_wall,
            "first_cpu_s": first_cpu, "median_wall_s": statistics.median(walls),
            "median_cpu_s": statistics.median(cpus), "min_wall_s": min(walls),
            "max_wall_s": max(walls), "steps": steps, "warmup": warmup,
            "loss_first": losses[0], "loss_last": losses[-1],
            "finite": all(map(lambda v: v == v and abs(v) < float("inf"), losses))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="scratch")
    parser.add_argument("--settings", default="float32,mixed_bfloat16",
                        help="comma-separated policies, each optionally +jit (XLA) and/or +nogn "
                        "(heads without GroupNorm), +fastgn or +kerasgn (the heads' GroupNorm class)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.settings, args.steps, args.warmup)), flush=True)
        return
    results = {setting: [] for setting in args.settings.split(",")}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for round_ in range(args.rounds):
        for setting in results:  # alternated: background load falls on each alike
            out = subprocess.run(
                [sys.executable, __file__, "--worker", f"--model={args.model}",
                 f"--settings={setting}", f"--steps={args.steps}", f"--warmup={args.warmup}"],
                env=env, capture_output=True, text=True, check=True).stdout
            line = json.loads(out.strip().splitlines()[-1])
            results[setting].append(line)
            print(json.dumps(dict(line, round=round_)), flush=True)
    summary = {setting: {key: statistics.median(r[key] for r in runs)
                         for key in ("first_wall_s", "first_cpu_s", "median_wall_s",
                                     "median_cpu_s")}
               for setting, runs in results.items()}
    print(json.dumps({"summary": summary, "model": args.model}, indent=1), flush=True)


if __name__ == "__main__":
    main()
