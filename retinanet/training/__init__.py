"""Training: the machinery of `retinanet train`.

The optimisers and schedules live in `retinanet.schedules` (the model's `compile` uses its
`default_optimizer` too); `retinanet.training.reference_optimizer` etc. still reach them.

- `builders`: config to model, anchors, matching, decoding, optimiser.
- `datasets`: config to datasets, pipelines and step counts.
- `trainer`: `train(config, workdir)`, what `retinanet train` runs.
- `callbacks`: atomic checkpoints, the resumable backup and the non-finite-loss guard.
- `budget`: `config.train.time_budget_minutes` (`PlannedSchedule`, `TimeBudget`).
"""

__all__ = ["PlannedSchedule", "WarmupStepDecay", "default_optimizer", "reference_optimizer"]


def __getattr__(name):
    # Lazy: the command line imports builders/datasets/workdir without Keras.
    if name in __all__:
        from retinanet import schedules

        return getattr(schedules, name)
    raise AttributeError(f"module 'retinanet.training' has no attribute {name!r}")
