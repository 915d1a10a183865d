"""Input pipeline throughput: training batches per second at 512 x 512.

Measures `retinanet.data.pipeline(..., mode="train", image_size=512)` (decode, scale jitter,
crop, flip, pad, batch) on the synthetic shapes set and, where present, the raccoon photos.
Each row is the median of several timed runs after a warm-up, in images per second.

    python benchmarks/pipeline.py [--quick] [--batch-size 8] [--model-rate IMAGES_PER_S]

`--model-rate` adds the ratio to a model's training consumption rate (the issue asks for
the pipeline to be at least 4x faster). `measure(...)` is importable for other benchmarks.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RACCOON = ROOT.parent / "shared" / "datasets" / "raccoon"


def measure(dataset, *, image_size=512, batch_size=8, runs=5, batches_per_run=12,
            warmup_batches=4, cache=False):
    """Training-pipeline throughput in images/s: (median, min, max) over `runs` timed runs.

    Args:
      dataset: a retinanet.data.DetectionDataset.
      image_size, batch_size, cache: passed to retinanet.data.pipeline.
      runs: timed runs; each pulls `batches_per_run` batches.
      warmup_batches: batches pulled first, untimed (tracing, autotune, file cache).
    """
    from retinanet import data

    batches = data.pipeline(dataset, "train", batch_size=batch_size, image_size=image_size,
                            cache=cache).repeat()
    iterator = iter(batches)
    for _ in range(warmup_batches):
        next(iterator)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(batches_per_run):
            images, _ = next(iterator)
        images.numpy()  # the last batch is materialised before the clock stops
        rates.append(batches_per_run * batch_size / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--model-rate", type=float, default=None,
                        help="model training images/s, to print the pipeline/model ratio")
    args = parser.parse_args(argv)

    from retinanet import data

    runs, per_run, warmup = (3, 6, 3) if args.quick else (5, 12, 4)
    rows = []
    start = time.perf_counter()
    shapes = data.shapes(64 if args.quick else 192, 512, seed=0)
    print(f"shapes set generated in {time.perf_counter() - start:.1f} s", flush=True)
    candidates = [("shapes 512px (in memory)", shapes)]
    if RACCOON.is_dir():
        candidates.append(("raccoon JPEG (decode)", data.from_voc(RACCOON)))
    else:
        print(f"raccoon not found at {RACCOON}; skipped")
    for name, dataset in candidates:
        median, low, high = measure(dataset, image_size=args.image_size,
                                    batch_size=args.batch_size, runs=runs,
                                    batches_per_run=per_run, warmup_batches=warmup)
        rows.append((name, len(dataset), median, low, high))

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\ntraining pipeline, {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {cores} CPU cores, median of {runs} runs x {per_run} batches")
    header = f"{'dataset':<28}{'images':>8}{'img/s':>10}{'min':>9}{'max':>9}"
    if args.model_rate:
        header += f"{'x model':>10}"
    print(header)
    print("-" * len(header))
    for name, count, median, low, high in rows:
        line = f"{name:<28}{count:>8}{median:>10.1f}{low:>9.1f}{high:>9.1f}"
        if args.model_rate:
            line += f"{median / args.model_rate:>10.1f}"
        print(line)
    return rows


if __name__ == "__main__":
    main()
