"""Optimisers and learning-rate schedules for RetinaNet.

Beside the model rather than in `retinanet.training`: `RetinaNet.compile` defaults to
`default_optimizer`, and a `.keras` file holding a compiled optimizer needs these schedules
(and `FusedAdam`) registered wherever it loads.
"""

import math

import keras

# Imported here, not where used: `retinanet.model` imports this module, and so registers
# FusedAdam for `keras.saving.load_model` of a `.keras` file compiled with it.
from retinanet.fused_adam import FusedAdam


@keras.saving.register_keras_serializable(package="retinanet")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base_learning_rate`, then multiply by `decay_factor` at each boundary.

    `lr(step) = base * (warmup_factor + (1 - warmup_factor) * step / warmup_steps)` during
    warm-up, then `base * decay_factor ** (number of boundaries <= step)`.
    """

    def __init__(
        self, base_learning_rate, boundaries, decay_factor=0.1, warmup_steps=0, warmup_factor=0.001
    ):
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"`boundaries` must be increasing, got {boundaries}.")
        self.base_learning_rate = float(base_learning_rate)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decays = sum(keras.ops.cast(step >= b, "float32") for b in self.boundaries)
        lr = self.base_learning_rate * keras.ops.power(self.decay_factor, decays)
        if self.warmup_steps > 0:
            progress = keras.ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor + (1.0 - self.warmup_factor) * progress)
        return lr

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "boundaries": self.boundaries,
            "decay_factor": self.decay_factor,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }


SCHEDULE_KINDS = ("constant", "cosine", "step")
# A short run must not spend its whole length warming up (a 2-step smoke run, or a time
# budget that plans 117 steps against 200 configured warm-up steps): warm-up is capped at
# this share of the total steps, by every schedule the builders make.
MAX_WARMUP_SHARE = 0.1


@keras.saving.register_keras_serializable(package="retinanet")
class PlannedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine (or step, or constant) decay over a length set later.

    `total_steps` and the warm-up length live in `keras.Variable`s that `__call__` reads, so
    `set_total_steps` changes the schedule of an optimizer that is already training (its
    traced step function reads the variables at each step). The formulas are those of
    `keras.optimizers.schedules.CosineDecay` with warm-up and of
    `retinanet.schedules.WarmupStepDecay`:

    - warm-up (`step < w`): `base * (f + (1 - f) * step / w)`;
    - cosine: `base * (alpha + (1 - alpha) * (1 + cos(pi * p)) / 2)`, with
      `p = min(step - w, T - w) / (T - w)`;
    - step: `base * decay_factor ** (number of shares s with step >= s * T)`.

    Args:
        base_learning_rate: the rate after warm-up.
        total_steps: the planned length `T` (optimizer steps); `set_total_steps` changes it.
        kind: "cosine", "step" or "constant".
        warmup_steps: the configured warm-up `w`; capped at `MAX_WARMUP_SHARE * T` as `T`
            changes.
        warmup_factor: `f`, the rate at step 0 as a share of the base rate.
        alpha: cosine: the final rate as a share of the base rate.
        boundaries: step: the decay points as shares of `T`.
        decay_factor: step: the factor applied at each boundary.
    """

    def __init__(self, base_learning_rate, total_steps, kind="cosine", warmup_steps=0,
                 warmup_factor=0.001, alpha=0.01, boundaries=(2 / 3, 8 / 9), decay_factor=0.1):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
        self.base_learning_rate = float(base_learning_rate)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.alpha = float(alpha)
        self.boundaries = tuple(float(b) for b in boundaries)
        self.decay_factor = float(decay_factor)
        self._total = keras.Variable(1.0, dtype="float32", trainable=False,
                                     name="planned_total_steps")
        self._warmup = keras.Variable(0.0, dtype="float32", trainable=False,
                                      name="planned_warmup_steps")
        self.set_total_steps(total_steps)

    @property
    def total_steps(self) -> int:
        return int(round(float(keras.ops.convert_to_numpy(self._total))))

    def set_total_steps(self, total_steps: int):
        """Sets the schedule's length `T` (at least 1) and the warm-up
        `min(w, floor(MAX_WARMUP_SHARE * T))`."""
        total = max(int(total_steps), 1)
        self._total.assign(float(total))
        self._warmup.assign(float(min(self.warmup_steps, math.floor(MAX_WARMUP_SHARE * total))))

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        total, warmup = self._total.value, self._warmup.value
        base = self.base_learning_rate
        if self.kind == "cosine":
            decay_steps = ops.maximum(total - warmup, 1.0)
            progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
            cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
            rate = base * (self.alpha + (1.0 - self.alpha) * cosine)
        elif self.kind == "step":
            decays = sum(ops.cast(step >= ops.floor(share * total), "float32")
                         for share in self.boundaries)
            rate = base * ops.power(self.decay_factor, decays)
        else:
            rate = base * ops.ones_like(step)
        ramp = self.warmup_factor + (1.0 - self.warmup_factor) * step / ops.maximum(warmup, 1.0)
        return ops.where(step < warmup, base * ramp, rate)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "total_steps": self.total_steps,
                "kind": self.kind, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor, "alpha": self.alpha,
                "boundaries": list(self.boundaries), "decay_factor": self.decay_factor}


def reference_optimizer(total_steps=90_000, batch_size=16, clipnorm=None, **optimizer_options):
    """The paper's recipe: SGD, momentum 0.9, lr 0.01 per 16 images, weight decay 1e-4.

    Linear warm-up from 1/3 of the base rate over the first `min(500, total_steps // 10)`
    steps (mmdetection's RetinaNet schedule warms up 500 iterations from 1/3; the cap keeps
    short runs from spending most of their steps warming up), and a 10x decay at 2/3 and 8/9
    of training (60k and 80k of 90k iterations). `optimizer_options` go to
    `keras.optimizers.SGD` (`use_ema`, `ema_momentum`).
    """
    schedule = WarmupStepDecay(
        base_learning_rate=0.01 * batch_size / 16,
        boundaries=[int(total_steps * 2 / 3), int(total_steps * 8 / 9)],
        warmup_steps=min(500, total_steps // 10),
        warmup_factor=1.0 / 3.0,
    )
    return keras.optimizers.SGD(
        learning_rate=schedule, momentum=0.9, weight_decay=1e-4, clipnorm=clipnorm,
        **optimizer_options)


def default_optimizer(learning_rate=1e-4, clipnorm=10.0):
    """Adam with gradient clipping: robust on small datasets and small batches.

    `retinanet.fused_adam.FusedAdam`: Keras's Adam with TensorFlow's fused update kernel.
    """
    return FusedAdam(learning_rate=learning_rate, clipnorm=clipnorm)
