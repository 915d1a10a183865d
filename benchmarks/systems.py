"""The three RetinaNets under test, built the same way and driven through one interface.

Every system is RetinaNet with a ResNet50-shaped backbone, random weights, 20 classes, FPN
P3-P7 with 256 channels, 9 anchors per location and class/box subnets of four 3x3 convs
(256 channels) plus the output conv. Nothing is downloaded: the peers' backbones are
constructed from their classes with ResNet50's stage sizes instead of `from_preset(...)`
(keras-cv's `ResNet50Backbone()` alias calls `from_preset("resnet50")`, which fetches the
preset config from Kaggle even without weights).

- ``ours``: `retinanet.RetinaNet(20, backbone="resnet50")` (focal + smooth L1, Adam 1e-4
  clipnorm 10, FusedBatchNormalization unless `fused_batchnorm=False`), in one of two train
  modes: "equal-work" (`frozen_batchnorm=False, frozen_early_stages=False`: every layer
  trains and every batch statistic updates, as in both peers) or "fine-tuning" (frozen
  batch norm, stem and res2, its defaults with pretrained weights).
- ``keras-cv``: `keras_cv.models.RetinaNet` over `keras_cv.models.ResNetBackbone(...)`
  (ResNet50 v1 stage sizes, `include_rescaling=True`). Its default heads have 3 convs; the
  benchmark passes `PredictionHead(num_conv_layers=4)` so the network is the paper's (and
  ours, and keras-hub's). Compiled with its own "focal" and "smoothl1" losses.
- ``keras-hub``: `keras_hub.models.RetinaNetObjectDetector` over `RetinaNetBackbone`
  (`use_p5=False`, P6 from C5 as in the paper) over `keras_hub.models.ResNetBackbone(...)`
  with ResNet50's stage sizes (`bottleneck_block`). Its default heads have 4 convs. Compiled
  with its own defaults (BinaryFocalCrossentropy + Huber) and Adam.

Each adapter gives: ``forward(images)`` (a compiled tf.function calling the model in inference
mode), ``predict(images, batch_size)`` (the model's own `predict`, decoding and NMS
included), ``use_score_threshold(t)`` (the decoder's score/confidence threshold),
``fit(dataset, steps)`` (the model's own `fit`, i.e. its train_step and loss; keras-cv's
train_step cannot take Keras 3's `train_on_batch` data, and keras-hub's `train_on_batch` fails
on dict targets, so `fit` is the path all three support) and ``targets(boxes, classes)``
(synthetic ground truth in the model's own format).
"""

from __future__ import annotations

import time

import numpy as np

NUM_CLASSES = 20
RESNET50_FILTERS = [64, 128, 256, 512]
RESNET50_BLOCKS = [3, 4, 6, 3]
RESNET50_STRIDES = [1, 2, 2, 2]
SYSTEMS = ("ours", "keras-cv", "keras-hub")
TRAIN_MODES = ("equal-work", "fine-tuning")


def synthetic_batch(batch_size, image_size, seed=0, boxes_per_image=4, max_boxes=8):
    """Random 0-255 images and boxes: (images [B, S, S, 3] float32, boxes [B, M, 4] xyxy
    pixels padded with -1, classes [B, M] int32 padded with -1)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    boxes = -np.ones((batch_size, max_boxes, 4), "float32")
    classes = -np.ones((batch_size, max_boxes), "int32")
    for b in range(batch_size):
        for i in range(boxes_per_image):
            size = rng.uniform(0.06, 0.5, 2) * image_size
            x1, y1 = rng.uniform(0, image_size - size)
            boxes[b, i] = [x1, y1, x1 + size[0], y1 + size[1]]
            classes[b, i] = rng.integers(0, NUM_CLASSES)
    return images, boxes, classes


class System:
    """Common driver; subclasses build `self.model` and know its formats."""

    name = "?"

    def __init__(self, jit_compile=False, train_mode="equal-work", fused_batchnorm=True,
                 recompute_backbone=False):
        import tensorflow as tf

        if train_mode not in TRAIN_MODES:
            raise ValueError(f"`train_mode` must be one of {TRAIN_MODES}, got {train_mode!r}")
        self.jit_compile = jit_compile
        self.train_mode = train_mode
        self.fused_batchnorm = fused_batchnorm
        self.recompute_backbone = recompute_backbone
        self.model = self.build()
        self._forward = tf.function(
            lambda images: self.model(images, training=False), jit_compile=jit_compile
        )
        self._predict_functions = {}
        self._thresholds = {}

    # -- to override ---------------------------------------------------------------------

    def build(self):
        raise NotImplementedError

    def targets(self, boxes, classes):
        raise NotImplementedError

    def _decoder_for(self, threshold):
        """What `_apply_decoder` installs for `threshold` (None: the default)."""
        raise NotImplementedError

    def _apply_decoder(self, decoder):
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------

    def forward(self, images):
        outputs = self._forward(images)
        for value in outputs.values():  # materialise
            value.numpy()
        return outputs

    def use_score_threshold(self, threshold):
        """Switches the decoder to `threshold` (None: the system's own default).

        Each threshold keeps its own predict function, so switching back and forth does not
        retrace; the threshold is applied again too, in case a new shape retraces.
        """
        if threshold not in self._thresholds:
            self._thresholds[threshold] = self._decoder_for(threshold)
        self._apply_decoder(self._thresholds[threshold])
        if threshold not in self._predict_functions:
            self.model.make_predict_function(force=True)
            self._predict_functions[threshold] = self.model.predict_function
        self.model.predict_function = self._predict_functions[threshold]

    def predict(self, dataset, steps=1, callbacks=None):
        """`model.predict` on `steps` batches of a repeated tf.data.Dataset (how detectors are
        fed in practice; a numpy array would add Keras's array-slicing pipeline)."""
        return self.model.predict(dataset, steps=steps, verbose=0, callbacks=callbacks)

    def fit(self, dataset, steps, callbacks=None):
        """`model.fit` for `steps` steps of a repeated dataset of one (images, targets) batch."""
        return self.model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0,
                              callbacks=callbacks)

    def forward_graph(self, batch_size, image_size):
        """The concrete function graph of the forward pass (for counting FLOPs)."""
        import tensorflow as tf

        spec = tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32)
        return tf.function(lambda images: self.model(images, training=False)) \
            .get_concrete_function(spec).graph


def batch_times(run, steps):
    """Wall and CPU seconds of each of the last `steps` batches of one fit or predict call.

    `run(callback)` must go through ``steps + 1`` batches. Times are taken between
    consecutive batch ends, so they are the steady cost per batch, the model's own step with
    its decoding or loss included. The first batch is left out: it also pays for starting the
    call's data iterator, which inside `fit` sometimes waits until a 10.24 s mark here
    (`train_on_batch` never does).
    """
    import keras
    import tensorflow as tf

    import measure

    marks = []

    class Clock(keras.callbacks.Callback):
        def _mark(self, values):
            for value in tf.nest.flatten(values):  # wait for the batch's results
                np.asarray(value)
            marks.append((time.perf_counter(), measure.cpu_seconds()))

        def on_train_batch_end(self, batch, logs=None):
            self._mark((logs or {}).get("loss"))

        def on_predict_batch_end(self, batch, logs=None):
            self._mark((logs or {}).get("outputs"))

    run(Clock())
    if len(marks) != steps + 1:
        raise RuntimeError(f"expected {steps + 1} batches, timed {len(marks)}")
    return {"wall": [b[0] - a[0] for a, b in zip(marks, marks[1:])],
            "cpu": [b[1] - a[1] for a, b in zip(marks, marks[1:])]}


class Ours(System):
    name = "ours"

    def build(self):
        import retinanet

        # Random weights either way; "fine-tuning" freezes what fine-tuning from pretrained
        # weights freezes (the step costs the same whatever the weights' values).
        frozen = self.train_mode == "fine-tuning"
        model = retinanet.RetinaNet(NUM_CLASSES, backbone="resnet50", frozen_batchnorm=frozen,
                                    frozen_early_stages=frozen,
                                    fused_batchnorm=self.fused_batchnorm,
                                    recompute_backbone=self.recompute_backbone)
        model.compile(jit_compile=self.jit_compile)
        return model

    def targets(self, boxes, classes):
        return {"boxes": boxes, "classes": classes}

    def _decoder_for(self, threshold):
        return self.model.postprocessor.score_threshold if threshold is None else float(threshold)

    def _apply_decoder(self, decoder):
        # A plain attribute read when `detect` is traced.
        self.model.postprocessor.score_threshold = decoder

    def postprocess_function(self):
        """Compiled decoding + NMS alone, from precomputed head outputs."""
        import tensorflow as tf

        return tf.function(lambda images, outputs: self.model.detect(images, outputs))


class Peer(System):
    """keras-cv and keras-hub: the same decoder interface, each with its own NMS layer."""

    def _nms_layer(self):
        raise NotImplementedError

    def _decoder_for(self, threshold):
        if threshold is None:
            return self.model.prediction_decoder
        return self._nms_layer()(
            bounding_box_format="xyxy", from_logits=True, confidence_threshold=float(threshold)
        )

    def _apply_decoder(self, decoder):
        # What the `prediction_decoder` setter stores, without its side effect of
        # re-making (and so retracing) the train function.
        self.model._prediction_decoder = decoder


class KerasCV(Peer):
    name = "keras-cv"

    def build(self):
        import keras
        import keras_cv

        backbone = keras_cv.models.ResNetBackbone(
            stackwise_filters=RESNET50_FILTERS,
            stackwise_blocks=RESNET50_BLOCKS,
            stackwise_strides=RESNET50_STRIDES,
            include_rescaling=True,
        )
        heads = keras_cv.models.retinanet.PredictionHead
        model = keras_cv.models.RetinaNet(
            num_classes=NUM_CLASSES,
            bounding_box_format="xyxy",
            backbone=backbone,
            classification_head=heads(
                9 * NUM_CLASSES,
                keras.initializers.Constant(-np.log((1 - 0.01) / 0.01)),
                num_conv_layers=4,
            ),
            box_head=heads(9 * 4, keras.initializers.Zeros(), num_conv_layers=4),
        )
        model.compile(
            classification_loss="focal",
            box_loss="smoothl1",
            optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=10.0),
            jit_compile=self.jit_compile,
        )
        return model

    def targets(self, boxes, classes):
        return {"boxes": boxes, "classes": classes.astype("float32")}

    def _nms_layer(self):
        import keras_cv

        return keras_cv.layers.NonMaxSuppression


class KerasHub(Peer):
    name = "keras-hub"

    def build(self):
        import keras
        import keras_hub

        encoder = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=RESNET50_FILTERS,
            stackwise_num_blocks=RESNET50_BLOCKS,
            stackwise_num_strides=RESNET50_STRIDES,
            block_type="bottleneck_block",
            use_pre_activation=False,
        )
        backbone = keras_hub.models.RetinaNetBackbone(
            image_encoder=encoder, min_level=3, max_level=7, use_p5=False
        )
        model = keras_hub.models.RetinaNetObjectDetector(
            backbone=backbone, num_classes=NUM_CLASSES, bounding_box_format="xyxy"
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=10.0),
            jit_compile=self.jit_compile,
        )
        return model

    def targets(self, boxes, classes):
        return {"boxes": boxes, "labels": classes}

    def _nms_layer(self):
        import keras_hub

        return keras_hub.layers.NonMaxSuppression


def build_system(name, jit_compile=False, train_mode="equal-work", fused_batchnorm=True,
                 recompute_backbone=False):
    """`train_mode`, `fused_batchnorm` and `recompute_backbone` apply to ours; the peers
    train as they are."""
    return {"ours": Ours, "keras-cv": KerasCV, "keras-hub": KerasHub}[name](
        jit_compile, train_mode, fused_batchnorm, recompute_backbone)
