"""Keras's GroupNormalization against `retinanet.model.group_norm.FastGroupNormalization`:
forward and gradients agree, and the time of forward + backward on the scratch recipe's
head feature maps (batch 4, 384 px: P3-P7, 64 channels, GroupNorm(32), 4 norms per level).

    python benchmarks/group_norm.py [--policy=mixed_bfloat16] [--repeats=30]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--repeats", type=int, default=30)

    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf

    from retinanet.model.group_norm import FastGroupNormalization

    keras.mixed_precision.set_global_policy(args.policy)
    rng = np.random.default_rng(0)
    shapes = [(4, 384 // s, 384 // s, 64) for s in (8, 16, 32, 64, 128)]
    inputs = [tf.constant(rng.normal(1.0, 2.0, shape).astype("float32")) for shape in shapes]
    inputs = [tf.cast(x, keras.mixed_precision.global_policy().compute_dtype) for x in inputs]
    upstream = [tf.cast(tf.constant(rng.normal(0, 1, s).astype("float32")), x.dtype)
                for s, x in zip(shapes, inputs)]

    def layers(kind):
        made = [kind(groups=32, epsilon=1e-3, name=f"gn{i}") for i in range(4)]
        for i, layer in enumerate(made):
            layer.build(shapes[0])
            layer.gamma.assign(rng.uniform(0.5, 1.5, 64).astype("float32"))
            layer.beta.assign(rng.uniform(-0.5, 0.5, 64).astype("float32"))
        return made

    keras_layers = layers(keras.layers.GroupNormalization)
    fast_layers = layers(FastGroupNormalization)
    for a, b in zip(keras_layers, fast_layers):
        b.set_weights(a.get_weights())

    def step_fn(norms):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss, outputs = 0.0, []
                for x, dy in zip(inputs, upstream):
                    for norm in norms:  # 2 heads x 2 convs share nothing; same work
                        y = norm(x)
                        outputs.append(y)
                        loss += tf.reduce_sum(tf.cast(y * dy, "float32"))
            variables = [v.value for n in norms for v in (n.gamma, n.beta)]
            grads = tape.gradient(loss, inputs + variables)
            return outputs, grads
        return step

    reference, fast = step_fn(keras_layers), step_fn(fast_layers)
    (out_a, grad_a), (out_b, grad_b) = reference(), fast()
    difference = {
        "forward": max(float(tf.reduce_max(tf.abs(tf.cast(a, "float32") - tf.cast(b, "float32"))))
                       for a, b in zip(out_a, out_b)),
        # relative to each gradient's largest entry (gamma's and beta's sum 18k terms)
        "gradients": max(float(tf.reduce_max(tf.abs(tf.cast(a, "float32") - tf.cast(b, "float32")))
                               / tf.reduce_max(tf.abs(tf.cast(a, "float32"))))
                         for a, b in zip(grad_a, grad_b)),
    }

    def timed(fn):
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - wall), cpus.append(time.process_time() - cpu)
        return statistics.median(walls), statistics.median(cpus)

    results = {}
    for round_ in range(3):  # alternated
        for name, fn in (("keras", reference), ("fast", fast)):
            results.setdefault(name, []).append(timed(fn))
    summary = {name: {"median_wall_s": statistics.median(r[0] for r in runs),
                      "median_cpu_s": statistics.median(r[1] for r in runs)}
               for name, runs in results.items()}
    print(json.dumps({"policy": args.policy, "max_abs_difference": difference,
                      "fwd_bwd_20_norms": summary}, indent=1))


if __name__ == "__main__":
    main()
