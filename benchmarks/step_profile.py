"""Where a training step's time goes, op by op: the issue-30 profile.

One compiled train step (forward, the model's own loss with its targets encoded inside,
gradients, the optimizer's update) run under TensorFlow's profiler; the op events are summed
by kind:

  convolution forward     Conv2D, _FusedConv2D (conv + bias/activation), depthwise
  convolution backward    Conv2DBackpropInput, Conv2DBackpropFilter
  batch norm              FusedBatchNormV3 and its gradient
  other backbone/FPN/heads  element-wise, pooling, GroupNorm, ... under those scopes
  loss, targets, unscoped matching, encoding, the losses and their gradients, and ops
                          named under no model part
  optimizer               Adam, clipping

plus, timed apart, the loss and targets alone on fixed head outputs, and (for `scratch`) the
input pipeline's CPU time per batch on the raccoon photos. Summed op time can exceed the wall
time (ops overlap on two cores).

    python benchmarks/step_profile.py --model=r50 --batch=2      # equal work, 512 px
    python benchmarks/step_profile.py --model=r50 --batch=8
    python benchmarks/step_profile.py --model=scratch            # configs/scratch_cpu.py
"""

import argparse
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import measure  # noqa: E402

KINDS = (
    ("convolution forward", lambda t, part: t in ("Conv2D", "FusedConv2D",
                                                  "DepthwiseConv2dNative")),
    ("convolution backward", lambda t, part: t.startswith(("Conv2DBackprop",
                                                           "DepthwiseConv2dNativeBackprop"))),
    ("batch norm", lambda t, part: t.startswith("FusedBatchNorm")),
    ("optimizer", lambda t, part: part == "optimizer" or "Apply" in t),
    ("loss, targets, unscoped", lambda t, part: part in ("loss+targets", "other")),
    ("other backbone/FPN/heads", lambda t, part: True),
)


def kind_of(op_type, part):
    """The KINDS entry of an op; oneDNN's kernels (`_MklNativeConv2D`) count as the op."""
    op_type = re.sub(r"^_?(MklNative|Mkl)?_?", "", op_type)
    return next(name for name, test in KINDS if test(op_type, part))


def build(model_name, batch, size):
    import keras
    import numpy as np

    import retinanet
    from retinanet.training import builders

    keras.utils.set_random_seed(0)
    if model_name == "r50":
        model = retinanet.RetinaNet(20, backbone="resnet50", frozen_batchnorm=False,
                                    frozen_early_stages=False)
        model.compile()
        classes = 20
    else:
        from retinanet.configs import scratch_cpu

        config = scratch_cpu.get_config()
        model = builders.build_model(config, num_classes=1)
        builders.compile_model(model, config, total_steps=1000)
        classes = 1
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    corner = rng.uniform(0, size * 0.6, (batch, 4, 2))
    extent = rng.uniform(size * 0.1, size * 0.4, (batch, 4, 2))
    boxes = np.concatenate([corner, np.minimum(corner + extent, size)], -1).astype("float32")
    targets = {"boxes": boxes, "classes": rng.integers(0, classes, (batch, 4)).astype("int32")}
    return model, images, targets


def functions(model, images, targets):
    import tensorflow as tf

    variables = model.trainable_variables
    model.optimizer.build(variables)
    outputs = model(images, training=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = model.compute_loss(images, targets, model(images, training=True))
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def loss_alone():
        return model.compute_loss(images, targets, outputs)

    return step, loss_alone


def timed(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn().numpy()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def pipeline_cpu_per_batch(batches=30):
    """CPU seconds per batch of the scratch recipe's train pipeline on the raccoon photos."""
    from retinanet.configs import scratch_cpu
    from retinanet.training import datasets

    raccoon = HERE.parent.parent / "shared" / "datasets" / "raccoon"
    config = scratch_cpu.get_config()
    config.data.format = "csv"
    config.data.train = str(raccoon / "train_labels.csv")
    config.data.train_images = str(raccoon / "images")
    config.data.val_fraction = 0.2
    iterator = iter(datasets.train_pipeline(config, datasets.load_datasets(config)["train"]))
    next(iterator)
    cpu = time.process_time()
    for _ in range(batches):
        next(iterator)
    return (time.process_time() - cpu) / batches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("r50", "scratch"), default="r50")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    batch = args.batch or (2 if args.model == "r50" else 4)
    size = args.size or (512 if args.model == "r50" else 384)
    model, images, targets = build(args.model, batch, size)
    step, loss_alone = functions(model, images, targets)
    step(), loss_alone()  # tracing
    step_wall, step_cpu = timed(step, args.repeats)
    loss_wall, loss_cpu = timed(loss_alone, max(args.repeats, 5))
    with tempfile.TemporaryDirectory() as logdir:
        profile = measure.op_profile(step, args.repeats, logdir)
    kinds = dict.fromkeys((name for name, _ in KINDS), 0.0)
    for op_type, part, seconds in profile["by_type_and_part"]:
        kinds[kind_of(op_type, part)] += seconds
    total = sum(kinds.values())
    result = {"model": args.model, "batch": batch, "size": size,
              "step_wall_s": step_wall, "step_cpu_s": step_cpu,
              "loss_and_targets_alone_wall_s": loss_wall, "loss_and_targets_alone_cpu_s": loss_cpu,
              "op_seconds": kinds, "op_total_s": total,
              "top_op_types": dict(list(profile["by_type"].items())[:12])}
    if args.model == "scratch":
        result["pipeline_cpu_s_per_batch"] = pipeline_cpu_per_batch()
    print(f"{args.model}, batch {batch}, {size} px: step {step_wall:.3f} s wall, "
          f"{step_cpu:.3f} CPU-s; loss and targets alone {loss_wall * 1e3:.1f} ms wall, "
          f"{loss_cpu * 1e3:.1f} CPU-ms")
    for kind, seconds in kinds.items():
        print(f"  {kind:<28}{seconds:8.3f} s  {100 * seconds / total:5.1f} %")
    if "pipeline_cpu_s_per_batch" in result:
        print(f"  input pipeline: {result['pipeline_cpu_s_per_batch']:.3f} CPU-s per batch")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
