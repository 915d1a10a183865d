"""Training: optimisers and schedules (here), and the machinery of `retinanet train`.

- `schedules`: `reference_optimizer` (the paper's SGD recipe), `default_optimizer` (Adam with
  clipping) and `WarmupStepDecay`.
- `builders`: config to model, anchors, matching, decoding, optimiser.
- `datasets`: config to datasets, pipelines and step counts.
- `trainer`: `train(config, workdir)`, what `retinanet train` runs.
- `callbacks`: atomic checkpoints, the resumable backup and the non-finite-loss guard.
- `budget`: `config.train.time_budget_minutes` (`PlannedSchedule`, `TimeBudget`).
"""

from retinanet.training.schedules import WarmupStepDecay, default_optimizer, reference_optimizer
# Registers PlannedSchedule, so checkpoints of budgeted runs load wherever a model loads.
from retinanet.training.budget import PlannedSchedule  # noqa: E402

__all__ = ["PlannedSchedule", "WarmupStepDecay", "default_optimizer", "reference_optimizer"]
