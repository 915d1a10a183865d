"""What runs inside each benchmark subprocess: one model, the peak probe or the pipeline.

`run.py` starts one process per role, so peak memory (ru_maxrss) is per system, and then
asks the processes in turn, over a pipe, to time a phase; only one process works at a time.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

LOW_THRESHOLD = 0.001


def anchors_numpy(image_size, min_level=3, max_level=7, anchor_size=4.0,
                  scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), ratios=(0.5, 1.0, 2.0)):
    """RetinaNet's 9 anchors per location, xyxy, ordered (level, row, column, anchor)."""
    import numpy as np

    out = []
    for level in range(min_level, max_level + 1):
        stride = 2**level
        n = -(-image_size // stride)
        shapes = []
        for scale in scales:
            for ratio in ratios:
                size = anchor_size * stride * scale
                shapes.append((size / np.sqrt(ratio), size * np.sqrt(ratio)))
        shapes = np.array(shapes)  # [9, 2] (w, h)
        centres = (np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1) + 0.5) * stride
        centres = centres.reshape(-1, 1, 2)  # (x, y), row-major
        half = shapes[None] / 2
        out.append(np.concatenate([centres - half, centres + half], -1).reshape(-1, 4))
    return np.concatenate(out).astype("float32")


def scene(batch_size, image_size, num_classes, seed=0, objects=15, max_boxes=16):
    """`objects` random boxes per image (24-300 px, log-uniform): (boxes [B, M, 4] xyxy
    padded with -1, classes [B, M] int32 padded with -1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    boxes = -np.ones((batch_size, max_boxes, 4), "float32")
    classes = -np.ones((batch_size, max_boxes), "int32")
    top = np.log(min(300.0, 0.6 * image_size))
    for b in range(batch_size):
        for i in range(objects):
            w, h = np.exp(rng.uniform(np.log(24), top, 2))
            x1, y1 = rng.uniform(0, image_size - w), rng.uniform(0, image_size - h)
            boxes[b, i] = [x1, y1, x1 + w, y1 + h]
            classes[b, i] = rng.integers(num_classes)
    return boxes, classes


def trained_like_outputs(system, images, num_classes, seed=0):
    """Head outputs shaped like a trained detector's on a busy image, in `system`'s layout.

    The system's own label encoder matches a scene of 15 objects per image to its own
    anchors. Positive anchors get their object's class logit ~ N(0.5, 1.5) and their encoded
    box target plus N(0, 0.05) noise, so they decode onto the object (clusters that NMS
    collapses to about one box per object, as a trained model's do); every other
    (anchor, class) logit is ~ N(-6, 1.2), which puts a few thousand pairs per image above
    0.05, and other deltas are N(0, 0.1). Returns {output name: float32 tensor}.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    boxes, classes = scene(batch, height, num_classes, seed=seed)
    model = system.model
    if system.name == "ours":
        encoded = model.label_encoder.encode(tf.constant(boxes), tf.constant(classes),
                                             height, width)
        box_targets = encoded["box_targets"].numpy()
        cls = encoded["cls_targets"].numpy()  # -1 where not positive
    elif system.name == "keras-cv":
        box_targets, cls = model.label_encoder(
            images, {"boxes": tf.constant(boxes), "classes": tf.constant(classes, "float32")})
        box_targets, cls = np.asarray(box_targets), np.asarray(cls)
    else:
        box_targets, cls = model.label_encoder(
            images=images, gt_boxes=tf.constant(boxes), gt_classes=tf.constant(classes))
        box_targets, cls = np.asarray(box_targets), np.asarray(cls)
    cls = cls.reshape(cls.shape[0], -1).astype("int64")  # peers: background -1, ignored -2
    anchors = cls.shape[1]
    logits = rng.normal(-6.0, 1.2, (batch, anchors, num_classes)).astype("float32")
    deltas = rng.normal(0.0, 0.1, (batch, anchors, 4)).astype("float32")
    b, a = np.nonzero(cls >= 0)
    logits[b, a, cls[b, a]] = rng.normal(0.5, 1.5, len(b))
    deltas[b, a] = box_targets[b, a] + rng.normal(0.0, 0.05, (len(b), 4))
    logits, deltas = tf.constant(logits), tf.constant(deltas)
    return {
        "ours": {"cls_logits": logits, "box_deltas": deltas},
        "keras-cv": {"classification": logits, "box": deltas},
        "keras-hub": {"cls_logits": logits, "bbox_regression": deltas},
    }[system.name], int(len(b))


class ModelRole:
    """One system (ours, keras-cv or keras-hub) at one batch size."""

    def __init__(self, name, cfg):
        import numpy as np
        import tensorflow as tf

        import measure
        import systems

        self.cfg = cfg
        self.name = name
        batch, size = cfg["batch_size"], cfg["image_size"]
        self.batch = batch
        info = {"system": name, "batch_size": batch, "image_size": size}
        start = time.perf_counter()
        self.system = systems.build_system(
            name, jit_compile=cfg["jit_compile"], train_mode=cfg.get("train_mode", "equal-work"),
            fused_batchnorm=cfg.get("ours_fused_batchnorm", True),
            recompute_backbone=cfg.get("ours_recompute_backbone", False))
        model = self.system.model
        info["build_s"] = time.perf_counter() - start
        info["params"] = int(model.count_params())
        info["versions"] = _versions()
        info["dtype_policy"] = str(getattr(model.dtype_policy, "name", model.dtype_policy))

        if cfg.get("count_flops", True):
            start = time.perf_counter()
            try:
                total, by_type = measure.count_flops(self.system.forward_graph(1, size))
                info["gflops_per_image"] = total / 1e9
                info["gflops_by_op"] = {k: v / 1e9 for k, v in by_type.items() if v}
            except Exception as error:  # noqa: BLE001 - reported, not fatal
                info["gflops_error"] = f"{type(error).__name__}: {error}"
            info["flops_count_s"] = time.perf_counter() - start

        images, boxes, classes = systems.synthetic_batch(batch, size, seed=1)
        self.images = images
        self.images_tensor = tf.constant(images)
        self.targets = self.system.targets(boxes, classes)
        self.predict_data = tf.data.Dataset.from_tensors(self.images_tensor).repeat()
        self.train_data = tf.data.Dataset.from_tensors((self.images_tensor, self.targets)) \
            .repeat()
        self.trained_like, info["trained_like_positives"] = trained_like_outputs(
            self.system, self.images_tensor, systems.NUM_CLASSES, seed=2)
        self._decode = self._decode_function()

        self.phases = {
            "forward": lambda: self.system.forward(self.images_tensor),
            "predict:default": lambda steps=1, callbacks=None: self._predict(None, steps,
                                                                            callbacks),
            "predict:low": lambda steps=1, callbacks=None: self._predict(LOW_THRESHOLD, steps,
                                                                        callbacks),
            "decode:trained-like": self._decode_trained_like,
            "train": lambda steps=1, callbacks=None: self.system.fit(self.train_data, steps,
                                                                     callbacks),
        }
        if name == "ours":
            outputs = self.system.forward(self.images_tensor)
            self.outputs = {k: tf.identity(v) for k, v in outputs.items()}
            self._post = {}
            self.phases["postprocess:default"] = lambda: self._postprocess(None)
            self.phases["postprocess:low"] = lambda: self._postprocess(LOW_THRESHOLD)

        # Warm-up: the first call of each phase traces and compiles; time it separately.
        info["first_call_s"] = {}
        info["detections"] = {}
        warm = cfg["warmup"]
        info["phase_errors"] = {}
        for phase in cfg["phases"]:
            if phase not in self.phases:
                continue
            try:
                start = time.perf_counter()
                self.phases[phase]()
                info["first_call_s"][phase] = time.perf_counter() - start
                for _ in range(warm.get(phase.split(":")[0], 1) - 1):
                    self.phases[phase]()
            except Exception as error:  # noqa: BLE001 - one phase failing leaves the others
                traceback.print_exc()
                info["first_call_s"].pop(phase, None)
                info["phase_errors"][phase] = f"{type(error).__name__}: {error}"[:2000]
                continue
            if phase.startswith(("predict", "decode")):
                info["detections"][phase] = np.asarray(self._last_predict["num_detections"]) \
                    .tolist()
        info["rss_after_setup_mb"] = measure.current_rss_mb()
        self.info = info

    def _decode_function(self):
        import tensorflow as tf

        model = self.system.model
        if self.name == "ours":
            return tf.function(lambda images, outputs: model.detect(images, outputs))
        return tf.function(lambda images, outputs: model.decode_predictions(outputs, images))

    def _decode_trained_like(self):
        self.system.use_score_threshold(None)  # each system's own default threshold
        self._last_predict = self._decode(self.images_tensor, self.trained_like)
        _materialise(self._last_predict)

    def _predict(self, threshold, steps=1, callbacks=None):
        self.system.use_score_threshold(threshold)
        self._last_predict = self.system.predict(self.predict_data, steps, callbacks)

    def _postprocess(self, threshold):
        import tensorflow as tf

        model = self.system.model
        self.system.use_score_threshold(threshold)
        if threshold not in self._post:
            self._post[threshold] = tf.function(
                lambda images, outputs: model.detect(images, outputs))
        _materialise(self._post[threshold](self.images_tensor, self.outputs))

    # -- commands ------------------------------------------------------------------------

    def time(self, phase, steps):
        import measure
        import systems

        if phase == "train" or phase.startswith("predict"):  # batches inside one call
            return systems.batch_times(
                lambda clock: self.phases[phase](steps + 1, [clock]), steps)
        return measure.timed(self.phases[phase], steps)

    def memory(self):
        import measure

        return {"peak_rss_mb": measure.peak_rss_mb(), "rss_mb": measure.current_rss_mb()}

    def profile(self, phase, steps, logdir):
        import measure

        return measure.op_profile(self.phases[phase], steps, logdir)


class PeakRole:
    """The machine's measured float peak (matmul and conv)."""

    def __init__(self, name, cfg):
        import measure

        if cfg["gpu"] and cfg.get("gpu_devices"):
            self.peak = measure.Peak("float16", matmul_size=8192, conv_shape=(16, 80, 80, 256))
        else:
            self.peak = measure.Peak("float32")
        self.repeats = cfg.get("peak_repeats", 3)
        self.info = {"role": name, "matmul_gflop": self.peak.matmul_flops / 1e9,
                     "conv_gflop": self.peak.conv_flops / 1e9}

    def time(self, phase, steps):
        # Median of `repeats` calls, the same estimator as the model phases.
        return self.peak.measure(self.repeats)

    def memory(self):
        import measure

        return {"peak_rss_mb": measure.peak_rss_mb(), "rss_mb": measure.current_rss_mb()}


class PipelineRole:
    """The training input pipeline (benchmarks/pipeline.py's `measure`)."""

    def __init__(self, name, cfg):
        import pipeline as bench_pipeline
        from retinanet import data

        self.measure = bench_pipeline.measure
        self.cfg = cfg
        start = time.perf_counter()
        self.datasets = {"shapes": data.shapes(cfg["pipeline_images"], cfg["image_size"],
                                               seed=0)}
        if bench_pipeline.RACCOON.is_dir():
            self.datasets["raccoon"] = data.from_voc(str(bench_pipeline.RACCOON))
        self.info = {"role": name, "datasets": {k: len(v) for k, v in self.datasets.items()},
                     "generate_s": time.perf_counter() - start}

    def time(self, phase, steps, batch_size):
        name = phase.split(":", 1)[1]
        batch = batch_size
        import measure

        warmup = 2
        cpu = measure.cpu_seconds()
        median, _, _ = self.measure(self.datasets[name], image_size=self.cfg["image_size"],
                                    batch_size=batch, runs=1, batches_per_run=steps,
                                    warmup_batches=warmup)
        # CPU time of the whole call (pipeline construction and warm-up batches included):
        # an upper bound on the pipeline's CPU cost per image.
        cpu_per_image = (measure.cpu_seconds() - cpu) / ((steps + warmup) * batch)
        return {"images_per_s": median, "cpu_s_per_image": cpu_per_image}

    def memory(self):
        import measure

        return {"peak_rss_mb": measure.peak_rss_mb(), "rss_mb": measure.current_rss_mb()}


def _materialise(outputs):
    for value in outputs.values():
        value.numpy()


def _versions():
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "keras-cv", "keras-hub", "retinanet"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return versions


def _setup_device(cfg):
    import tensorflow as tf

    if cfg["gpu"]:
        # Several worker processes share the GPU: grow memory instead of taking it all.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")
    import keras

    keras.utils.set_random_seed(0)


def redirect_output(log_path):
    """Sends this process's stdout and stderr (file descriptors too) to `log_path`."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)


def serve_commands(conn, impl):
    """Answers `{"cmd", "args"}` messages with `impl`'s methods until "stop" or a closed pipe."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message["cmd"] == "stop":
            return
        try:
            result = getattr(impl, message["cmd"])(**message.get("args", {}))
            conn.send({"ok": True, "result": result})
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            conn.send({"ok": False, "error": traceback.format_exc()})


def main(conn, role, cfg, log_path):
    """Process entry point: set up `role`, then serve commands until "stop"."""
    redirect_output(log_path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _setup_device(cfg)
        if role == "peak":
            impl = PeakRole(role, cfg)
        elif role == "pipeline":
            impl = PipelineRole(role, cfg)
        else:
            impl = ModelRole(role, cfg)
        conn.send({"ok": True, "result": impl.info})
    except BaseException:  # noqa: BLE001 - the controller reports it and goes on
        traceback.print_exc()
        conn.send({"ok": False, "error": traceback.format_exc()})
        return
    serve_commands(conn, impl)
