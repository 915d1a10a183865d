"""Optimisers and learning-rate schedules."""


def adam_cosine(config, learning_rate, warmup_steps, warmup_factor=None):
    """Adam with a linear warm-up (from `warmup_factor` of the rate) and cosine decay."""
    config.train.optimizer = "adam"
    config.train.learning_rate = learning_rate
    config.train.schedule = "cosine"
    config.train.warmup_steps = warmup_steps
    if warmup_factor is not None:
        config.train.warmup_factor = warmup_factor


def reference_sgd(config, epochs, steps_per_epoch):
    """The paper's SGD (`retinanet.schedules.reference_optimizer`): 0.01 x batch / 16,
    momentum 0.9, weight decay 1e-4, warm-up, 10x decays at 2/3 and 8/9 of the steps."""
    config.train.optimizer = "reference"
    config.train.epochs = epochs
    config.train.steps_per_epoch = steps_per_epoch
    config.train.clipnorm = 0.0
