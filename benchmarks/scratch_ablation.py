"""The ablation of `configs/scratch_cpu.py` on the raccoon photos (docs/LEARNING.md).

Each run trains the recipe with one change (`--variant`) for a fixed number of optimizer
steps (not minutes, so the machine's load cannot change the result) or to a budget (below)
and evaluates it; tuning
runs evaluate on a split held out of raccoon's train (`--eval=val`, `--val_fraction`), the
final runs on the 40 test images (`--eval=test`). It prints one JSON line and leaves the
workdir (metrics.json with COCO AP and AP50).

    taskset -c 0 python benchmarks/scratch_ablation.py --variant=base --steps=600 \
        --workdir=runs/ablation/base_s0 --seed=0

`--cpu_budget_minutes=M` instead trains to a budget of M minutes of this process's CPU time
(`time.process_time`): on a core of its own that is the time of an idle core, which is how
the step time is measured on a shared machine. `--budget_minutes=M` trains to M minutes of
wall time, as `retinanet train` with `train.time_budget_minutes` does.

`--system=keras-cv` trains keras-cv's RetinaNet (ResNet18-shaped: basic blocks, 2-2-2-2, its
default FPN and heads, focal + smooth L1) on the same batches (the recipe's pipeline in
keras-cv's layout), with the same budget, Adam, warm-up and cosine planned to the budget, and
scores its detections with the same evaluator (its decoder set to ours: score >= 0.05,
IoU 0.5, 100 detections). keras-cv is not a dependency: install it (`pip install keras-cv`,
the `bench` extra) or put it on PYTHONPATH.
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
    "ema": [("train.ema_momentum", 0.99)],
    "color": [("data.color_jitter", 0.5)],
    "mosaic": [("data.mosaic", 0.5)],
    "size_320": [("data.image_size", 320)],  # the recipe before this ablation
    "box_weight_2": [("train.box_loss_weight", 2.0)],
    "wide": [("model.simple_widths", (24, 48, 96, 144, 192)), ("model.fpn_filters", 96),
             ("model.head_filters", 96)],
    "deep": [("model.simple_blocks", 2)],
    "jit": [("train.jit_compile", True)],
    # Issue 29: boxes that land.
    "giou": [("train.box_loss", "giou")],
    "atss": [("model.matching.method", "atss")],
    "qfl": [("train.classification_loss", "quality_focal")],
    "atss_qfl_giou": [("model.matching.method", "atss"),
                      ("train.classification_loss", "quality_focal"), ("train.box_loss", "giou")],
    "lr_warmup_100": [("train.warmup_steps", 100)],
}


def load_config():
    path = ROOT / "configs" / "scratch_cpu.py"
    spec = importlib.util.spec_from_file_location("scratch_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def configure(variants, steps, seed, evaluate_on, budget_minutes, val_fraction=0.1):
    config = load_config()
    config.seed = seed
    config.data.format = "csv"
    config.data.train = str(RACCOON / "train_labels.csv")
    config.data.train_images = str(RACCOON / "images")
    if evaluate_on == "test":
        config.data.val = str(RACCOON / "test_labels.csv")
        config.data.val_images = str(RACCOON / "images")
    else:
        config.data.val_fraction = val_fraction
    for name in variants:
        for field, value in VARIANTS[name]:
            *sections, key = field.split(".")
            section = config
            for part in sections:
                section = section[part]
            section[key] = value
    if budget_minutes:
        config.train.time_budget_minutes = budget_minutes
    else:
        # A fixed number of steps: the cosine runs over exactly these.
        config.train.time_budget_minutes = 0.0
        config.train.steps_per_epoch = 50
        config.train.epochs = max(1, round(steps / 50))
    return config


def _localization(workdir):
    """The TIDE localisation error (dAP50) of the run's final evaluation, if it wrote one."""
    path = os.path.join(workdir, "analysis.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)["tide"]["main"]["localization"]


class _KerasCVDetections:
    """keras-cv's RetinaNet behind the evaluator's `predict_on_batch` (docs/CONTRACTS.md).

    Its own `predict_on_batch` fails under Keras 3.15: its `predict_step` takes the `(x,)`
    tuple Keras now passes for the images and asks it for their shape.
    """

    def __init__(self, model):
        import tensorflow as tf

        self._detect = tf.function(
            lambda images: model.decode_predictions(model(images, training=False), images))

    def predict_on_batch(self, images):
        out = self._detect(images)
        return {"boxes": out["boxes"], "scores": out["confidence"],
                "classes": out["classes"], "num_detections": out["num_detections"]}


def train_keras_cv(config, workdir, clock):
    """keras-cv's RetinaNet on the recipe's data and budget; returns the evaluation."""
    import keras
    import keras_cv
    import tensorflow as tf

    from retinanet.atomic import write_json
    from retinanet.evaluation import evaluate
    from retinanet.training import budget as rbudget
    from retinanet.training import datasets

    started = clock()
    keras.utils.set_random_seed(config.seed)
    splits = datasets.load_datasets(config)
    train_set, val_set = splits["train"], splits["val"]
    num_classes = len(train_set.class_names)
    batches = datasets.train_pipeline(config, train_set).map(
        lambda images, targets: (images, {"boxes": targets["boxes"],
                                          "classes": tf.cast(targets["classes"], tf.float32)}))
    backbone = keras_cv.models.ResNetBackbone(
        stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[2, 2, 2, 2],
        stackwise_strides=[1, 2, 2, 2], include_rescaling=True, block_type="basic_block")
    model = keras_cv.models.RetinaNet(num_classes=num_classes, bounding_box_format="xyxy",
                                      backbone=backbone)
    steps = datasets.steps_per_epoch(config, len(train_set))
    schedule = rbudget.planned_schedule(config, steps)
    model.compile(classification_loss="focal", box_loss="smoothl1",
                  optimizer=keras.optimizers.Adam(schedule,
                                                  global_clipnorm=config.train.clipnorm))
    budget = rbudget.TimeBudget(config.train.time_budget_minutes * 60, steps, schedule=schedule,
                                clock=clock, started_at=started)
    model.fit(batches, epochs=rbudget.MAX_EPOCHS, steps_per_epoch=steps, callbacks=[budget],
              verbose=2)
    model.prediction_decoder = keras_cv.layers.NonMaxSuppression(
        bounding_box_format="xyxy", from_logits=True, iou_threshold=0.5,
        confidence_threshold=0.05, max_detections=100)
    evaluation_started = clock()
    results = evaluate(_KerasCVDetections(model), datasets.eval_pipeline(config, val_set),
                       class_names=train_set.class_names, verbose=0)
    os.makedirs(workdir, exist_ok=True)
    metrics = {"coco": results["coco"], "voc": results["voc"],
               "time_budget": budget.summary(evaluation_s=clock() - evaluation_started)}
    write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("ours", "keras-cv"), default="ours")
    parser.add_argument("--variant", default="base",
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", dest="evaluate_on", choices=("val", "test"), default="val")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    budgets = parser.add_mutually_exclusive_group()
    budgets.add_argument("--cpu_budget_minutes", type=float, default=0.0)
    budgets.add_argument("--budget_minutes", type=float, default=0.0)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    variants = [name for name in args.variant.split(",") if name]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variant: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if args.system == "keras-cv" and not (args.cpu_budget_minutes or args.budget_minutes):
        raise SystemExit("--system=keras-cv needs --budget_minutes or --cpu_budget_minutes")

    from retinanet.training.trainer import train

    config = configure(variants, args.steps, args.seed, args.evaluate_on,
                       args.cpu_budget_minutes or args.budget_minutes, args.val_fraction)
    clock = time.process_time if args.cpu_budget_minutes else time.monotonic
    cpu, wall = time.process_time(), time.monotonic()
    if args.system == "keras-cv":
        metrics = train_keras_cv(config, args.workdir, clock)
    else:
        train(config, args.workdir, verbose=2, clock=clock)
        with open(os.path.join(args.workdir, "metrics.json"), encoding="utf-8") as file:
            metrics = json.load(file)
    row = {"system": args.system, "variant": args.variant, "seed": args.seed,
           "eval": args.evaluate_on, "image_size": config.data.image_size,
           "steps": (metrics["time_budget"]["steps_done"] if "time_budget" in metrics
                     else config.train.epochs * config.train.steps_per_epoch),
           "AP": metrics["coco"]["AP"], "AP50": metrics["coco"]["AP50"],
           "AP75": metrics["coco"]["AP75"], "localization_dAP": _localization(args.workdir),
           "cpu_s": round(time.process_time() - cpu), "wall_s": round(time.monotonic() - wall),
           "time_budget": metrics.get("time_budget")}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
