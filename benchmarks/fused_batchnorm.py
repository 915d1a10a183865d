"""Micro benchmark: a ResNet50 training step with Keras's BatchNormalization against
FusedBatchNormalization (retinanet.model.fused_batchnorm).

One step: forward, backward and an SGD update of a `keras.applications.ResNet50` (random
weights, no top) on `[batch, size, size, 3]` random images, in one `tf.function`. The two
models step in alternation (plain, fused, plain, ...) so that a load change on a shared
machine hits both alike; warm-up steps (tracing included) are not timed. Prints, per
batch size and mode, the median wall and CPU (`time.process_time`, all threads) seconds
per step and the ratio plain / fused.

Modes: `train` (every layer trainable: batch normalisation in training mode) and
`frozen` (batch normalisation layers frozen, so in inference mode, as a backbone
fine-tuned with frozen statistics; convolutions still trained).

    python benchmarks/fused_batchnorm.py --batch-sizes 2 8 --steps 5
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

from retinanet.model.fused_batchnorm import fuse_batchnorm  # noqa: E402


def make_step(model):
    """A compiled training step `images [B, H, W, 3] -> loss` for `model`."""
    optimizer = keras.optimizers.SGD(1e-6)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            features = model(images, training=True)
            loss = tf.reduce_mean(tf.square(features))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step


def time_step(step, images):
    wall, cpu = time.perf_counter(), time.process_time()
    step(images).numpy()  # .numpy() waits for the step to finish
    return time.perf_counter() - wall, time.process_time() - cpu


def run(batch, size, steps, warmup, mode):
    if steps < 1 or warmup < 1:
        raise ValueError(f"`steps` and `warmup` must be at least 1, got {steps}, {warmup}.")
    keras.utils.set_random_seed(0)
    plain = keras.applications.ResNet50(weights=None, include_top=False,
                                        input_shape=(None, None, 3))
    if mode == "frozen":
        for layer in plain.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    elif mode != "train":
        raise ValueError(f"`mode` must be 'train' or 'frozen', got {mode!r}.")
    fused = fuse_batchnorm(plain)
    images = tf.constant(np.random.default_rng(0).uniform(
        -1, 1, (batch, size, size, 3)).astype("float32"))
    variants = {"plain": make_step(plain), "fused": make_step(fused)}
    times = {name: [] for name in variants}
    for index in range(warmup + steps):
        for name, step in variants.items():
            measured = time_step(step, images)
            if index >= warmup:
                times[name].append(measured)
    medians = {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
               for name, t in times.items()}
    (plain_wall, plain_cpu), (fused_wall, fused_cpu) = medians["plain"], medians["fused"]
    print(f"batch {batch} {size}x{size} {mode:6s} ({steps} steps): "
          f"plain {plain_wall:.3f} s wall / {plain_cpu:.3f} s CPU, "
          f"fused {fused_wall:.3f} s wall / {fused_cpu:.3f} s CPU; "
          f"plain/fused {plain_wall / fused_wall:.2f}x wall, "
          f"{plain_cpu / fused_cpu:.2f}x CPU", flush=True)
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--modes", nargs="+", default=["train"], choices=["train", "frozen"])
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}",
          flush=True)
    for batch in args.batch_sizes:
        for mode in args.modes:
            run(batch, args.size, args.steps, args.warmup, mode)


if __name__ == "__main__":
    main()
