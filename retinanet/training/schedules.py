"""Optimisers and learning-rate schedules for RetinaNet."""

import keras


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


def reference_optimizer(total_steps=90_000, batch_size=16, clipnorm=None):
    """The paper's recipe: SGD, momentum 0.9, lr 0.01 per 16 images, weight decay 1e-4.

    Linear warm-up from 1/3 of the base rate over the first `min(500, total_steps // 10)`
    steps (mmdetection's RetinaNet schedule warms up 500 iterations from 1/3; the cap keeps
    short runs from spending most of their steps warming up), and a 10x decay at 2/3 and 8/9
    of training (60k and 80k of 90k iterations).
    """
    schedule = WarmupStepDecay(
        base_learning_rate=0.01 * batch_size / 16,
        boundaries=[int(total_steps * 2 / 3), int(total_steps * 8 / 9)],
        warmup_steps=min(500, total_steps // 10),
        warmup_factor=1.0 / 3.0,
    )
    return keras.optimizers.SGD(
        learning_rate=schedule, momentum=0.9, weight_decay=1e-4, clipnorm=clipnorm
    )


def default_optimizer(learning_rate=1e-4, clipnorm=10.0):
    """Adam with gradient clipping: robust on small datasets and small batches."""
    return keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm)
