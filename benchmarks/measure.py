"""Measurements that run inside one worker process: FLOP counts, the machine's peak, timing,
peak memory and an op-type profile.

FLOPs are counted by TensorFlow's graph profiler (`tf.compat.v1.profiler.profile` with
`ProfileOptionBuilder.float_operation()`) on the concrete function graph of the forward pass
at a fixed input shape. It uses each op's registered statistics: a convolution or matmul
counts 2 FLOPs per multiply-add; bias adds, batch norm, activations and element-wise ops
count their elementwise FLOPs. Decoding/NMS is not in the forward graph.
"""

from __future__ import annotations

import glob
import os
import resource
import statistics
import time
from collections import defaultdict


def count_flops(graph):
    """Total float operations of a tf.Graph (static shapes required), and per op type."""
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    result = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    by_type = {child.name: child.total_float_ops for child in result.children}
    return result.total_float_ops, by_type


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # psutil comes with the bench extra; fall back to /proc
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Peak:
    """Measured float32 peak of this machine: a large matmul and a large 3x3 conv.

    Shapes are large enough that TensorFlow's CPU kernels (oneDNN) run at their best:
    matmul 2048^3, and conv2d of [4, 64, 64, 256] by 3x3x256x256 (the shape of RetinaNet's
    head convs on P3 at 512 px). FLOPs are 2 per multiply-add.
    """

    def __init__(self, dtype="float32", matmul_size=2048, conv_shape=(4, 64, 64, 256)):
        import tensorflow as tf

        self.tf = tf
        n = matmul_size
        self.a = tf.random.normal([n, n], dtype=dtype)
        self.b = tf.random.normal([n, n], dtype=dtype)
        self.matmul_flops = 2.0 * n**3
        batch, height, width, channels = conv_shape
        self.x = tf.random.normal(conv_shape, dtype=dtype)
        self.w = tf.random.normal([3, 3, channels, channels], dtype=dtype) * 0.01
        self.conv_flops = 2.0 * batch * height * width * channels * channels * 9
        self._matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        self._conv = tf.function(
            lambda x, w: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
        )
        self.measure(1)

    def measure(self, repeats):
        """Medians over `repeats` calls: GFLOP per wall second and per CPU second."""
        out = {}
        for name, fn, args, flops in (("matmul", self._matmul, (self.a, self.b),
                                       self.matmul_flops),
                                      ("conv", self._conv, (self.x, self.w), self.conv_flops)):
            times = timed(lambda: fn(*args).numpy(), repeats)
            out[f"{name}_gflops"] = flops / statistics.median(times["wall"]) / 1e9
            out[f"{name}_gflops_per_cpu_s"] = flops / statistics.median(times["cpu"]) / 1e9
        return out


def cpu_seconds():
    """User + system CPU time of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, steps):
    """Wall and CPU seconds of each of `steps` calls of `fn()` (fn must synchronise).

    CPU time counts what this process's threads ran, so it barely moves when other
    processes load the machine, where wall time does; it also counts idle spinning of
    TensorFlow's thread pool, and hides how well a phase uses both cores.
    """
    walls, cpus = [], []
    for _ in range(steps):
        cpu, start = cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
    return {"wall": walls, "cpu": cpus}


# Checked in order; backprop ops ("gradient_tape/<model>/<part>/...") fall under their part.
PARTS = (("postprocess", ("postprocessor", "non_max", "NonMaxSuppression", "decode")),
         ("heads", ("classification_head", "box_head", "prediction_head")),
         ("fpn", ("fpn", "feature_pyramid")),
         ("backbone", ("resnet", "backbone", "functional")),
         ("optimizer", ("adam", "Adam", "clip", "global_norm")),
         ("loss+targets", ("loss", "label_encoder", "box_matcher", "focal", "smooth")))


def _part(name):
    for part, keys in PARTS:
        if any(key in name for key in keys):
            return part
    return "other"


def op_profile(fn, steps, logdir):
    """Runs `fn` `steps` times under the TF profiler; returns seconds per step by op type and
    by model part: {"wall_s", "by_type": {type: s}, "by_part": {part: s},
    "by_type_and_part": [[type, part, s], ...]}.

    Reads the XSpace the profiler writes (no TensorBoard plugin needed): the executor's op
    events are named ``"op/name:OpType"``; their durations are summed. Ops can overlap
    (inter-op parallelism), so the sums may exceed the wall time.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    fn()
    tf.profiler.experimental.start(
        logdir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=2)
    )
    start = time.perf_counter()
    try:
        for _ in range(steps):
            fn()
    finally:
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        return {}
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_part, by_both = defaultdict(float), defaultdict(float), defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name or " " in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                op_type = op_type.split("#")[0]
                if not op_type.lstrip("_")[:1].isupper():
                    continue
                seconds = event.duration_ps * 1e-12 / steps
                by_type[op_type] += seconds
                by_part[_part(op_name)] += seconds
                by_both[op_type, _part(op_name)] += seconds

    def ordered(d):
        return {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    return {"wall_s": wall / steps, "by_type": ordered(by_type), "by_part": ordered(by_part),
            "by_type_and_part": [[t, p, s] for (t, p), s in ordered(by_both).items()]}


def median(values):
    return statistics.median(values) if values else float("nan")
