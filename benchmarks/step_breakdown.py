"""Where a RetinaNet training step's time goes: forward, backward, optimizer update.

Ours, ResNet50 backbone with every layer trainable and batch statistics updating (the
benchmark's "equal work" mode), random weights, 20 classes, `[batch, size, size, 3]`
random images and four random boxes per image. Three compiled functions per variant:

  forward             model(images, training=True) and the model's own loss (targets
                      encoded inside, as in fit)
  forward+backward    the same and the gradients of every trainable variable
  step                the same and the optimizer's update (Adam 1e-4, clipnorm 10)

backward = (forward+backward) - forward; update = step - (forward+backward). Variants:
Keras's BatchNormalization and FusedBatchNormalization (`fused_batchnorm`), timed in
alternation after untimed warm-up calls (tracing). Medians of wall and CPU
(`time.process_time`, all threads) seconds.

    python benchmarks/step_breakdown.py --batch 2 --size 512 --repeats 3
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import retinanet  # noqa: E402

PARTS = ("forward", "forward+backward", "step")


def make_functions(fused):
    """{part: compiled function `(images, targets) -> tensors`} for one variant."""
    keras.utils.set_random_seed(0)
    model = retinanet.RetinaNet(20, backbone="resnet50", frozen_batchnorm=False,
                                frozen_early_stages=False, fused_batchnorm=fused)
    model.compile()
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    variables = model.trainable_variables

    def loss_of(images, targets):
        outputs = model(images, training=True)
        return model.compute_loss(images, targets, outputs)

    @tf.function
    def forward(images, targets):
        return loss_of(images, targets)

    @tf.function
    def forward_backward(images, targets):
        with tf.GradientTape() as tape:
            loss = loss_of(images, targets)
        return tape.gradient(loss, variables)

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            loss = loss_of(images, targets)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return {"forward": forward, "forward+backward": forward_backward, "step": step}


def synthetic(batch, size, seed=0):
    """Images `[B, S, S, 3]` 0-255 and `{"boxes": [B, 4, 4] xyxy, "classes": [B, 4]}`."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    corners = rng.uniform(0, size * 0.6, (batch, 4, 2))
    sides = rng.uniform(size * 0.06, size * 0.4, (batch, 4, 2))
    boxes = np.concatenate([corners, corners + sides], axis=-1).astype("float32")
    classes = rng.integers(0, 20, (batch, 4)).astype("int32")
    return tf.constant(images), {"boxes": tf.constant(boxes), "classes": tf.constant(classes)}


def timed(function, images, targets):
    wall, cpu = time.perf_counter(), time.process_time()
    for value in tf.nest.flatten(function(images, targets)):
        value.numpy()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per function")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per function")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1:
        raise ValueError(f"`repeats` and `warmup` must be at least 1, got {args.repeats}, "
                         f"{args.warmup}.")
    images, targets = synthetic(args.batch, args.size)
    variants = {"keras": make_functions(False), "fused": make_functions(True)}
    times = {(v, p): [] for v in variants for p in PARTS}
    for index in range(args.warmup + args.repeats):
        for part in PARTS:
            for name, functions in variants.items():
                measured = timed(functions[part], images, targets)
                if index >= args.warmup:
                    times[name, part].append(measured)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; batch {args.batch}, "
          f"{args.size}x{args.size}, {args.repeats} timed calls; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'variant':<8}{'part':<18}{'wall s':>8}{'CPU s':>8}")
    for name in variants:
        medians = {p: (statistics.median(w for w, _ in times[name, p]),
                       statistics.median(c for _, c in times[name, p])) for p in PARTS}
        rows = {"forward": medians["forward"],
                "backward": tuple(b - f for b, f in zip(medians["forward+backward"],
                                                        medians["forward"])),
                "update": tuple(s - b for s, b in zip(medians["step"],
                                                      medians["forward+backward"])),
                "step": medians["step"]}
        for part, (wall, cpu) in rows.items():
            print(f"{name:<8}{part:<18}{wall:>8.3f}{cpu:>8.3f}")


if __name__ == "__main__":
    main()
