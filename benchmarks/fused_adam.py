"""Time `apply_gradients` on a ResNet-50 RetinaNet's trainable variables: Keras's Adam
against `retinanet.fused_adam.FusedAdam`, both with clipnorm=10, inside `tf.function`.

    taskset -c 1 python benchmarks/fused_adam.py

Random gradients of the variables' shapes; median of 5 calls after 2 warm-up calls, wall
seconds and process CPU seconds.
"""

import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import retinanet
from retinanet.fused_adam import FusedAdam


def time_optimizer(optimizer, variables, gradients, calls=5, warmup=2):
    optimizer.build(variables)

    @tf.function
    def apply():
        optimizer.apply_gradients(zip(gradients, variables))

    walls, cpus = [], []
    for call in range(warmup + calls):
        wall, cpu = time.perf_counter(), time.process_time()
        apply()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if call >= warmup:
            walls.append(wall)
            cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def main():
    model = retinanet.RetinaNet(20, backbone="resnet50", frozen_batchnorm=False,
                                frozen_early_stages=False)
    model(np.zeros((1, 256, 256, 3), "float32"))
    variables = [v.value for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    gradients = [tf.constant(rng.normal(scale=1e-3, size=v.shape).astype("float32"))
                 for v in variables]
    count = sum(int(np.prod(v.shape)) for v in variables)
    print(f"{len(variables)} trainable variables, {count / 1e6:.1f}M values")
    for optimizer_class in (keras.optimizers.Adam, FusedAdam):
        wall, cpu = time_optimizer(optimizer_class(1e-4, clipnorm=10.0), variables, gradients)
        print(f"{optimizer_class.__name__:10s} wall {wall * 1e3:7.1f} ms  cpu {cpu * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
