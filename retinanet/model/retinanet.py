"""The RetinaNet `keras.Model`: backbone, FPN, class and box subnets, loss and decoding."""

import keras
import tensorflow as tf

from retinanet import _keras_compat
from retinanet.anchors import AnchorGenerator
from retinanet.losses import FocalLoss, SmoothL1Loss, loss_inputs
from retinanet.matching import POSITIVE, LabelEncoder
from retinanet.model.backbone import build_backbone, set_redundant_biases
from retinanet.model.flip import detect_with_flip
from retinanet.model.fpn import FeaturePyramid
from retinanet.model.heads import RetinaNetHead
from retinanet.model.postprocess import DetectionPostprocessor
from retinanet.model.recompute import recomputed_backbone
from retinanet.preprocess import check_preprocessing, pad_color, pad_images
from retinanet.schedules import default_optimizer


def _images_and_targets(x, y):
    """Accepts `(images, {"boxes", "classes"})` or the keras-cv dict with no `y`."""
    if isinstance(x, dict):
        if "images" not in x:
            raise ValueError(f"An input dict needs an 'images' key, got keys {sorted(x)}.")
        images = x["images"]
        if y is None:
            y = x.get("bounding_boxes")
    else:
        images = x
    return images, y


@keras.saving.register_keras_serializable(package="retinanet")
class RetinaNet(keras.Model):
    """RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017).

    Feed raw RGB images with values in 0-255 (float or uint8) of any size; the model
    normalises them as its backbone expects and pads them inside to a multiple of
    `anchor_generator.stride_multiple` (`2**max_level`, 128 by default), bottom/right, with
    the colour of its `preprocessing` rules.

    - `model(images)` returns the raw head outputs `{"cls_logits": [B, A, K],
      "box_deltas": [B, A, 4]}` in float32.
    - `model.fit` takes `(images, {"boxes": [B, N, 4] xyxy pixels, "classes": [B, N]})`
      padded with -1, or the keras-cv dict `{"images", "bounding_boxes": {"boxes",
      "classes"}}`; targets are encoded inside `compute_loss`.
    - `model.predict` returns detections: `{"boxes": [B, D, 4] xyxy in input pixels,
      "scores": [B, D], "classes": [B, D], "num_detections": [B]}`, clipped to the input, or
      to each image's `"image_sizes"` `[B, 2]` (height, width) when the input is a dict
      `{"images", "image_sizes"}` (a batch of smaller images padded bottom/right).

    Args:
        num_classes: number of object classes K (no background class).
        backbone: a name from `retinanet.model.backbone.BACKBONES` or a `keras.Model` from
            images to `[C3, C4, C5]` (strides 8, 16, 32).
        backbone_weights: None, "imagenet" or a `.weights.h5` path (named backbones only).
        freeze_backbone: train only the FPN and heads.
        frozen_batchnorm: keep the backbone's batch-norm statistics fixed (named backbones).
            None (default) follows the weights: frozen with `backbone_weights`, trainable
            from random weights; True/False always wins.
        frozen_early_stages: freeze the backbone's layers at strides 2 and 4 (named backbones;
            for ResNets the stem and res2, as in the paper's Detectron setup). None: as
            `frozen_batchnorm`.
        fused_batchnorm: trainable batch norm through TensorFlow's fused kernel
            (`retinanet.model.fused_batchnorm`; named backbones): same results, faster step.
            A whole model's `.weights.h5` loads only into a model built with the same
            setting (Keras keys weights by layer class); `.keras` files carry it.
        recompute_backbone: in training, keep only the backbone's block outputs and
            recompute the rest in the backward pass (`retinanet.model.recompute`): less
            memory for about one more backbone forward per step. Needs trainable batch norm
            to be fused (or frozen).
        test_time_flip: `predict` (and so `evaluate`) also detects on the mirrored images
            and fuses both views by box voting (`retinanet.model.flip`): about twice the
            inference cost. Off by default; settable on a built model.
        fpn_filters, head_convs, head_filters: widths and depth of the FPN and subnets.
        use_group_norm: GroupNorm(32) after each subnet conv.
        anchor_generator, label_encoder, fpn, classification_head, box_head, postprocessor:
            collaborators; defaults are built from the other arguments when None. The model
            owns one anchor generator and one box coder (the label encoder's) and hands them
            to the label encoder and the postprocessor; given ones must agree with them.
        matcher: the label encoder's anchor matcher when `label_encoder` is None
            (`retinanet.IoUMatcher`, the default, or `retinanet.ATSSMatcher`).
        box_coder: the label encoder's `retinanet.BoxCoder` when `label_encoder` is None.
        class_names: optional list of the K class names (saved with the model).
        preprocessing: its inputs' resize and padding rules, read by data pipelines and
            exports (`retinanet.preprocess.PREPROCESSING`): "retinanet" (black padding,
            rounded sizes) or "torchvision" (mean-colour padding, floored sizes, boxes
            scaled per axis: what torchvision's COCO detectors were trained with).
    """

    def __init__(
        self,
        num_classes,
        backbone="resnet50",
        backbone_weights=None,
        freeze_backbone=False,
        frozen_batchnorm=None,
        frozen_early_stages=None,
        fused_batchnorm=True,
        recompute_backbone=False,
        test_time_flip=False,
        fpn_filters=256,
        head_convs=4,
        head_filters=256,
        use_group_norm=False,
        anchor_generator=None,
        label_encoder=None,
        fpn=None,
        classification_head=None,
        box_head=None,
        postprocessor=None,
        class_names=None,
        preprocessing="retinanet",
        matcher=None,
        box_coder=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.preprocessing = check_preprocessing(preprocessing)
        if class_names is not None and len(class_names) != int(num_classes):
            raise ValueError(
                f"`class_names` needs {num_classes} names, got {len(class_names)}."
            )
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        if int(num_classes) < 1:
            raise ValueError(f"`num_classes` must be at least 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        if isinstance(backbone, str):
            backbone = build_backbone(
                backbone, backbone_weights, frozen_batchnorm, frozen_early_stages,
                trainable=not freeze_backbone, fused_batchnorm=fused_batchnorm,
            )
        elif backbone_weights is not None:
            raise ValueError("`backbone_weights` applies to named backbones only.")
        elif freeze_backbone:
            backbone.trainable = False
        self.backbone = backbone
        set_redundant_biases(backbone)
        self.recompute_backbone = bool(recompute_backbone)
        # A plain function (not tracked): its segments share the backbone's layers.
        self._recomputed = recomputed_backbone(backbone) if self.recompute_backbone else None
        self.anchor_generator = anchor_generator or next(
            (part.anchor_generator for part in (label_encoder, postprocessor) if part), None
        ) or AnchorGenerator()
        if label_encoder is None:
            label_encoder = LabelEncoder(self.anchor_generator, matcher, box_coder)
        elif matcher is not None or box_coder is not None:
            raise ValueError("Pass `matcher` and `box_coder`, or a `label_encoder` holding "
                             "them, not both.")
        self.label_encoder = label_encoder
        self.box_coder = label_encoder.box_coder
        num_anchors = self.anchor_generator.num_anchors_per_location
        self.fpn = fpn or FeaturePyramid(fpn_filters, self.anchor_generator.max_level, name="fpn")
        self.classification_head = classification_head or RetinaNetHead(
            self.num_classes, num_anchors, head_convs, head_filters,
            prior_probability=0.01, use_group_norm=use_group_norm, name="classification_head",
        )
        self.box_head = box_head or RetinaNetHead(
            4, num_anchors, head_convs, head_filters,
            use_group_norm=use_group_norm, name="box_head",
        )
        self.postprocessor = postprocessor or DetectionPostprocessor(
            self.anchor_generator, self.box_coder, name="postprocessor"
        )
        self._share_anchors_and_coder()
        if self.anchor_generator.min_level != 3:
            raise ValueError(
                "The FPN produces levels from P3: `anchor_generator.min_level` must be 3, "
                f"got {self.anchor_generator.min_level}."
            )
        self.test_time_flip = test_time_flip
        self.classification_loss = FocalLoss()
        self.box_loss = SmoothL1Loss()
        self.box_loss_weight = 1.0
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")
        self.num_positives_tracker = keras.metrics.Mean(name="num_positives")
        self.build((None, None, None, 3))

    def _share_anchors_and_coder(self):
        """One anchor generator and one box coder for targets, losses and decoding."""
        ours = self.anchor_generator.get_config()
        for name, part in (("label_encoder", self.label_encoder),
                           ("postprocessor", self.postprocessor)):
            theirs = part.anchor_generator.get_config()
            if theirs != ours:
                raise ValueError(f"`{name}`'s anchor generator {theirs} differs from the "
                                 f"model's `anchor_generator` {ours}.")
            part.anchor_generator = self.anchor_generator
        if self.postprocessor.box_coder != self.box_coder:
            raise ValueError(f"`postprocessor`'s box coder weights "
                             f"{self.postprocessor.box_coder.weights} differ from the label "
                             f"encoder's {self.box_coder.weights}.")
        self.postprocessor.box_coder = self.box_coder

    @property
    def test_time_flip(self):
        return self._test_time_flip

    @test_time_flip.setter
    def test_time_flip(self, value):
        self._test_time_flip = bool(value)
        self.predict_function = None  # traced with the old setting

    def build(self, input_shape=None):
        if self.built:
            return
        size = self.anchor_generator.stride_multiple
        self.call(tf.zeros([1, size, size, 3]))
        self.built = True

    # -- forward -------------------------------------------------------------------------

    def _padded_size(self, images):
        multiple = self.anchor_generator.stride_multiple
        shape = tf.shape(images)
        return tuple((shape[axis] + multiple - 1) // multiple * multiple for axis in (1, 2))

    def call(self, inputs, training=False):
        images, _ = _images_and_targets(inputs, None)
        height, width = self._padded_size(images)
        # Bottom/right padding leaves pixel coordinates, and so boxes, unchanged; padded in
        # float32, where the padding colour is exact.
        images = pad_images(
            tf.cast(images, "float32"),
            [[0, 0], [0, height - tf.shape(images)[1]], [0, width - tf.shape(images)[2]], [0, 0]],
            pad_color(self.preprocessing),
        )
        images = tf.cast(images, self.compute_dtype)
        recomputed = training and self._recomputed is not None
        pyramid = self.fpn(self._recomputed(images) if recomputed
                           else self.backbone(images, training=training))
        return {
            "cls_logits": self.classification_head(pyramid),
            "box_deltas": self.box_head(pyramid),
        }

    def detect(self, images, outputs=None, image_sizes=None):
        """Detections for a batch of raw images (graph-friendly; `predict` uses it).

        Boxes are clipped to `image_sizes` (int `[B, 2]` or `[2]`, height and width of the
        images within the batch; an input dict's `"image_sizes"`), else to the input. With
        `test_time_flip`, the fusion of two views (given `outputs` are one view: not flipped).
        """
        if isinstance(images, dict) and image_sizes is None:
            image_sizes = images.get("image_sizes")
        images, _ = _images_and_targets(images, None)
        if image_sizes is None:
            image_sizes = tf.shape(images)[1:3]
        if self.test_time_flip and outputs is None:
            return detect_with_flip(self._detect_view, images, image_sizes,
                                    self.postprocessor.iou_threshold,
                                    self.postprocessor.max_detections)
        return self._detect_view(images, image_sizes, outputs)

    def _detect_view(self, images, image_sizes, outputs=None):
        if outputs is None:
            outputs = self(images, training=False)
        return self.postprocessor(outputs["cls_logits"], outputs["box_deltas"],
                                  anchor_image_size=self._padded_size(images),
                                  clip_size=image_sizes)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.detect(x)

    def make_predict_function(self, force=False):
        # NMS has no XLA kernel on CPU, so predict never runs under jit_compile.
        with _keras_compat.jit_compile_off(self):
            return super().make_predict_function(force)

    # -- training ------------------------------------------------------------------------

    def compile(self, optimizer=None, classification_loss=None, box_loss=None,
                box_loss_weight=1.0, jit_compile=False, **kwargs):
        """Configures training.

        Args:
            optimizer: defaults to `retinanet.schedules.default_optimizer()` (FusedAdam 1e-4,
                clipnorm 10). `retinanet.schedules.reference_optimizer()` gives the paper's SGD.
            classification_loss: defaults to `FocalLoss(alpha=0.25, gamma=2)`.
            box_loss: defaults to `SmoothL1Loss(beta=1/9)`.
            box_loss_weight: multiplies the box loss in the total.
            jit_compile: XLA for the train and test steps (predict always runs without it).
            **kwargs: passed to `keras.Model.compile` (`steps_per_execution`, ...).
        """
        if "loss" in kwargs:
            raise ValueError("RetinaNet computes its own loss: pass `classification_loss` and "
                             "`box_loss` instead of `loss`.")
        self.classification_loss = classification_loss or FocalLoss()
        self.box_loss = box_loss or SmoothL1Loss()
        self.box_loss_weight = float(box_loss_weight)
        set_redundant_biases(self.backbone)  # after any freezing the caller did
        super().compile(optimizer=optimizer or default_optimizer(), jit_compile=jit_compile,
                        **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        images, targets = _images_and_targets(x, y)
        if not isinstance(targets, dict) or not {"boxes", "classes"} <= set(targets):
            raise ValueError(
                "RetinaNet needs targets as a dict with 'boxes' and 'classes' (padded with -1), "
                f"got {type(targets).__name__}."
            )
        height, width = self._padded_size(images)
        encoded = self.label_encoder.encode(targets["boxes"], targets["classes"], height, width,
                                            trim_padding=not self.jit_compile)
        states = encoded["anchor_states"]
        cls_options, box_options = loss_inputs(
            self.classification_loss, self.box_loss, y_pred["box_deltas"],
            encoded["box_targets"], self.box_coder, lambda: self.anchor_generator(height, width))
        cls_loss = self.classification_loss(y_pred["cls_logits"], encoded["cls_targets"], states,
                                            **cls_options)
        box_loss = self.box_loss_weight * self.box_loss(
            y_pred["box_deltas"], encoded["box_targets"], states, **box_options)
        total = cls_loss + box_loss
        if self.losses:
            total += tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])
        self.cls_loss_tracker.update_state(cls_loss)
        self.box_loss_tracker.update_state(box_loss)
        self.num_positives_tracker.update_state(
            tf.reduce_sum(tf.cast(tf.equal(states, POSITIVE), tf.float32))
        )
        return _keras_compat.scale_loss_for_distribution(total)

    # -- serialisation -------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, num_classes=None):
        """torchvision's COCO RetinaNet from a keras-hub preset; see `retinanet.model.presets`.

        Args:
            preset: `"retinanet_resnet50_fpn_coco"`, `"retinanet_resnet50_fpn_v2_coco"`
                (downloaded by keras-hub) or a local keras-hub preset directory.
            num_classes: None keeps the 91 COCO logits (index = COCO category id, names in
                `class_names`); K gives a new class-subnet output layer with K classes.
        """
        from retinanet.model import pretrained

        if not pretrained.is_preset(preset):
            raise ValueError(f"`preset` must be one of {pretrained.KERAS_HUB_PRESETS} or a "
                             f"keras-hub preset directory, got {preset!r}.")
        return pretrained.load_pretrained(preset, num_classes=num_classes)

    @classmethod
    def from_torchvision(cls, path, class_names=None):
        """A torchvision RetinaNet (v1 or v2, any number of classes) from its state dict
        saved as `.safetensors` or `.npz`, without torch; see
        `retinanet.model.torchvision_import`."""
        from retinanet.model import pretrained

        if not pretrained.is_torchvision_file(path):
            raise ValueError(f"`path` must be a .safetensors or .npz file, got {path!r}.")
        return pretrained.load_pretrained(path, class_names=class_names)

    _COMPILE_KEYS = ("optimizer", "run_eagerly", "steps_per_execution", "jit_compile")

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        serialize = keras.saving.serialize_keras_object
        return {
            **{key: config[key] for key in self._COMPILE_KEYS if key in config},
            "classification_loss": serialize(self.classification_loss),
            "box_loss": serialize(self.box_loss),
            "box_loss_weight": self.box_loss_weight,
        }

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "preprocessing": self.preprocessing,
            "recompute_backbone": self.recompute_backbone,
            "test_time_flip": self.test_time_flip,
            "backbone": serialize(self.backbone),
            "anchor_generator": serialize(self.anchor_generator),
            "label_encoder": serialize(self.label_encoder),
            "fpn": serialize(self.fpn),
            "classification_head": serialize(self.classification_head),
            "box_head": serialize(self.box_head),
            "postprocessor": serialize(self.postprocessor),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "anchor_generator", "label_encoder", "fpn",
                    "classification_head", "box_head", "postprocessor"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
