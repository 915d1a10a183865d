"""Training: optimisers and schedules (here), and the machinery of `retinanet train`.

- `schedules`: `reference_optimizer` (the paper's SGD recipe), `default_optimizer` (Adam with
  clipping) and `WarmupStepDecay`.
- `builders`: config to model, anchors, matching, decoding, optimiser.
- `datasets`: config to datasets, pipelines and step counts.
- `trainer`: `train(config, workdir)`, what `retinanet train` runs.
- `callbacks`: atomic checkpoints, the resumable backup and the non-finite-loss guard.
"""

from retinanet.training.schedules import WarmupStepDecay, default_optimizer, reference_optimizer

__all__ = ["WarmupStepDecay", "default_optimizer", "reference_optimizer"]
