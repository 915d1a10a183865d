"""Training to a time budget (`config.train.time_budget_minutes`): plan, schedule, stop.

The budget counts training from the start of `train` (data loading and tracing included);
the final evaluation comes after it and is timed on its own. `TimeBudget`, a Keras callback,
measures the step time once the first steps (tracing) are done, plans how many steps fit in
what remains of the budget, and sets the learning-rate schedule's length (`PlannedSchedule`,
a `keras.Variable` read at every step) to that number, so the cosine reaches its end when the
budget does. It plans again at the start of each epoch from everything measured so far (the
step time and what each epoch end costs: evaluation, checkpoints), stops at the planned step
or at the end of the epoch in which the budget runs out, and writes the time spent to
`backup/budget.json` at each epoch end, so a resumed run gets only the time that remains.

The clock is any callable returning seconds (`time.monotonic` by default); tests inject one
that does not depend on the machine's speed.
"""

from __future__ import annotations

import math
import os
import time

import keras

from retinanet import atomic
from retinanet.config import ConfigError
from retinanet.schedules import PlannedSchedule

STATE_FILE = "budget.json"
# fit() needs an epoch count; a budgeted run ends long before this many.
MAX_EPOCHS = 1_000_000

default_clock = time.monotonic


def check_config(config):
    """Raises ConfigError when `config.train.time_budget_minutes` cannot be honoured."""
    minutes = config.train.time_budget_minutes
    if not isinstance(minutes, (int, float)) or minutes < 0 or not math.isfinite(minutes):
        raise ConfigError("config.train.time_budget_minutes: must be a number >= 0 (0 = off), "
                          f"got {minutes!r}")
    if minutes and config.train.optimizer == "reference":
        raise ConfigError("config.train.time_budget_minutes: the 'reference' optimizer has a "
                          "fixed length; use optimizer sgd with schedule step instead")


def planned_schedule(config, total_steps: int) -> PlannedSchedule:
    """The configured learning-rate schedule as a `PlannedSchedule` of `total_steps`."""
    train = config.train
    return PlannedSchedule(train.learning_rate, total_steps, kind=train.schedule,
                           warmup_steps=train.warmup_steps, warmup_factor=train.warmup_factor,
                           alpha=train.cosine_alpha, boundaries=tuple(train.decay_boundaries),
                           decay_factor=train.decay_factor)


def plan_total_steps(*, budget_s: float, elapsed_s: float, steps_done: int, step_s: float,
                     steps_per_epoch: int, epoch_overhead_s: float = 0.0) -> int:
    """The optimizer steps that fit in the budget: those done plus what the rest allows.

    Each further step costs `step_s` plus its share of an epoch's fixed cost
    (`epoch_overhead_s / steps_per_epoch`: evaluation, checkpoints, the next epoch's start).
    Never fewer than `steps_done`, nor fewer than 1.

    Example: a 600 s budget, 100 s spent on tracing and 10 steps, 2 s per step, 20 steps per
    epoch and 10 s per epoch end: `10 + floor(500 / 2.5) = 210`.
    """
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    per_step = step_s + max(epoch_overhead_s, 0.0) / max(int(steps_per_epoch), 1)
    more = math.floor(max(budget_s - elapsed_s, 0.0) / per_step)
    return max(int(steps_done) + more, int(steps_done), 1)


def read_state(backup_dir: str) -> dict:
    """`backup/budget.json` of an earlier run ({} when there is none)."""
    return atomic.read_json(os.path.join(backup_dir, STATE_FILE)) or {}


class TimeBudget(keras.callbacks.Callback):
    """Plans the run's length from measured step times and stops it when the budget is spent.

    Put it after the callbacks that evaluate and save checkpoints (its epoch-end state then
    counts their time) and before the backup (so a backup never has more epochs than the
    time recorded for it).

    Args:
        budget_s: the training budget in seconds.
        steps_per_epoch: steps in one epoch.
        schedule: the optimizer's `PlannedSchedule` (None: plan and stop only).
        clock: a callable returning seconds.
        started_at: `clock()` when `train` started.
        spent_before: seconds an interrupted run already spent (from `read_state`).
        planned_before: steps that run planned (the schedule's length until this run plans).
        finished: the run being resumed already ended within this budget: train no more.
        state_dir: where `budget.json` is written at each epoch end (None: not written).
        warmup_batches: batches to skip before measuring (the first one traces).
        measure_batches: steps to time before the first plan.
        verbose: above 0, a line per epoch with the steps done and planned and the time
            left (in place of Keras's progress bar, whose epoch count means nothing here).
    """

    def __init__(self, budget_s: float, steps_per_epoch: int, *, schedule=None,
                 clock=default_clock, started_at: float | None = None, spent_before: float = 0.0,
                 planned_before: int = 0, finished: bool = False, state_dir: str | None = None,
                 warmup_batches: int = 2, measure_batches: int = 5, verbose: int = 0):
        super().__init__()
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.budget_s = float(budget_s)
        self.steps_per_epoch = int(steps_per_epoch)
        self.schedule = schedule
        self.clock = clock
        self.started_at = clock() if started_at is None else float(started_at)
        self.spent_before = float(spent_before)
        self.planned_steps = int(planned_before)
        self.finished = bool(finished)
        self.state_dir = state_dir
        self.warmup_batches = max(int(warmup_batches), 1)
        self.measure_batches = max(int(measure_batches), 1)
        self.verbose = int(verbose)
        self.step_s = None
        self.training_s = None
        self.steps_done = 0
        self.stop_reason = "the resumed run had already spent its budget" if finished else ""
        self._batches = 0
        self._timed = [0.0, 0]  # seconds and steps of the batches that count for step_s
        self._gaps = []  # seconds per epoch end beyond one step
        self._last_end = None  # (clock, step) at the last batch end
        self._first_batch = False
        self._planned = False
        self._epochs_done = None

    def epochs(self, initial_epoch: int) -> int:
        """The `epochs` argument of `fit`: no more than done when the budget is finished."""
        return int(initial_epoch) if self.finished else MAX_EPOCHS

    def elapsed(self, now: float | None = None) -> float:
        """Training seconds so far, the interrupted runs' included."""
        return self.spent_before + (self.clock() if now is None else now) - self.started_at

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _plan(self, now: float, step: int):
        overhead = sum(self._gaps) / len(self._gaps) if self._gaps else 0.0
        self.planned_steps = plan_total_steps(
            budget_s=self.budget_s, elapsed_s=self.elapsed(now), steps_done=step,
            step_s=self.step_s, steps_per_epoch=self.steps_per_epoch, epoch_overhead_s=overhead)
        if self.schedule is not None:
            self.schedule.set_total_steps(self.planned_steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._first_batch = True

    def on_train_batch_end(self, batch, logs=None):
        now, step = self.clock(), self._step()
        self._batches += 1
        previous, self._last_end = self._last_end, (now, step)
        first_of_epoch, self._first_batch = self._first_batch, False
        if previous is not None and self._batches > self.warmup_batches:
            seconds, steps = now - previous[0], step - previous[1]
            if first_of_epoch and self.step_s:
                # This interval also holds the last epoch's end (evaluation, checkpoints).
                self._gaps.append(max(seconds - steps * self.step_s, 0.0))
            elif not first_of_epoch and steps > 0:
                self._timed[0] += seconds
                self._timed[1] += steps
        measured = self._timed[1] >= self.measure_batches
        if measured:
            self.step_s = self._timed[0] / self._timed[1]
        if measured and (not self._planned or first_of_epoch):
            self._planned = True
            self._plan(now, step)
        if self.planned_steps and step >= self.planned_steps:
            self._stop(f"reached the planned {self.planned_steps} steps")
        elif self.elapsed(now) >= self.budget_s:
            self._stop("the budget ran out before the planned steps" if self._planned else
                       "the budget ran out before the step time was measured (tracing)")

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        if not self.model.stop_training and self.elapsed(now) >= self.budget_s:
            self._stop("the budget ran out")
        self._epochs_done = epoch + 1
        self._write_state(now)
        if self.verbose:
            print(self.progress(now, logs), flush=True)

    def progress(self, now: float, logs=None) -> str:
        """"step 240 of 3000 planned, 1.2 of 16 min spent, about 14.8 min left; loss 0.41"."""
        planned = f" of {self.planned_steps} planned" if self.planned_steps else ""
        elapsed = self.elapsed(now)
        text = (f"step {self._step()}{planned}, {elapsed / 60:.1f} of {self.budget_s / 60:g} "
                f"min spent, about {max(self.budget_s - elapsed, 0.0) / 60:.1f} min left")
        extra = [f"{key} {float(logs[key]):.4g}" for key in ("loss", "val_AP")
                 if logs and key in logs]
        return text + ("; " + ", ".join(extra) if extra else "")

    def on_train_end(self, logs=None):
        now = self.clock()
        self.training_s = self.elapsed(now)
        self.steps_done = self._step()
        if not self.planned_steps:
            # Stopped before the step time was measured: the run's length is what it did.
            self.planned_steps = self.steps_done
            if self.schedule is not None:
                self.schedule.set_total_steps(self.steps_done)
        self._write_state(now, finished=True)

    def _write_state(self, now: float, finished: bool = False):
        if not self.state_dir:
            return
        path = os.path.join(self.state_dir, STATE_FILE)
        epoch = self._epochs_done
        if epoch is None:  # no epoch ran in this process: keep the resumed run's count
            epoch = (atomic.read_json(path) or {}).get("epoch", 0)
        os.makedirs(self.state_dir, exist_ok=True)
        atomic.write_json(path, {
            "budget_seconds": self.budget_s, "spent_seconds": self.elapsed(now),
            "epoch": epoch, "step": self._step(), "planned_steps": self.planned_steps,
            "step_seconds": self.step_s, "finished": finished})

    def _stop(self, reason: str):
        self.stop_reason = self.stop_reason or reason
        self.model.stop_training = True

    def describe(self) -> str:
        """The training header's line about the budget."""
        text = (f"Time budget {self.budget_s / 60:g} min for training (from the start of "
                "`train`, tracing included; the final evaluation is timed on its own): the "
                "learning-rate schedule's length is planned from the measured step time")
        if self.spent_before:
            text += f"; {self.spent_before:.0f} s already spent before this resumed run"
        return text

    def summary(self, evaluation_s: float | None = None) -> dict:
        """The `time_budget` section of `metrics.json`."""
        return {"budget_minutes": self.budget_s / 60, "steps_done": self.steps_done,
                "planned_steps": self.planned_steps,
                "schedule_steps": self.schedule.total_steps if self.schedule else None,
                "training_seconds": self.training_s, "evaluation_seconds": evaluation_s,
                "step_seconds": self.step_s, "spent_before_resume_seconds": self.spent_before,
                "stopped_because": self.stop_reason}


def add_to_metrics(workdir: str, summary: dict):
    """Adds `summary` to the workdir's `metrics.json` as its `time_budget` section."""
    path = os.path.join(workdir, "metrics.json")
    metrics = atomic.read_json(path) or {}
    metrics["time_budget"] = summary
    atomic.write_json(path, metrics)


def for_run(config, steps_per_epoch: int, backup_dir: str, write_dir: str, *,
            clock=default_clock, started_at: float | None = None,
            multi_worker: bool = False, verbose: int = 0) -> TimeBudget | None:
    """The `TimeBudget` of a `train` run, or None when `time_budget_minutes` is 0.

    A run that resumes from `backup_dir` continues the budget of the run it resumes: the
    seconds spent and the steps planned come from its `budget.json`. Rerunning a finished
    run trains no more, unless the budget has grown.

    Args:
        config: the ConfigDict.
        steps_per_epoch: steps in one epoch.
        backup_dir: the backup read on resume; write_dir: where this run writes its state.
        clock, started_at: as in `TimeBudget`.
        multi_worker: under multi-worker training (refused: each worker would decide on
            its own clock when to stop, and the others would wait for it).
        verbose: as in `TimeBudget`.
    """
    from retinanet.training.callbacks import ResumableBackup

    check_config(config)
    minutes = config.train.time_budget_minutes
    if not minutes:
        return None
    if multi_worker:
        raise ConfigError("config.train.time_budget_minutes: not supported with "
                          "--strategy=multi_worker_mirrored (the workers would stop at "
                          "different steps); train by epochs there")
    state = read_state(backup_dir) if ResumableBackup.saved_epoch(backup_dir) else {}
    spent = float(state.get("spent_seconds", 0.0))
    finished = spent >= minutes * 60.0 or (
        bool(state.get("finished")) and state.get("budget_seconds") == minutes * 60.0)
    planned_before = int(state.get("planned_steps") or 0)
    # Until the first plan the schedule runs as if `epochs` were the length: it is still
    # warming up then, and the warm-up is not cut short by a tiny placeholder length.
    initial = planned_before or steps_per_epoch * config.train.epochs
    budget = TimeBudget(minutes * 60.0, steps_per_epoch,
                        schedule=planned_schedule(config, initial), clock=clock,
                        started_at=started_at, spent_before=spent,
                        planned_before=planned_before, finished=finished, state_dir=write_dir,
                        verbose=verbose)
    if finished:  # no step will run: the outcome is the finished run's
        budget.steps_done, budget.training_s = int(state.get("step", 0)), spent
        budget.step_s = state.get("step_seconds")
    return budget


def report(budget: TimeBudget, workdir: str, evaluation_s: float):
    """Prints the budget's outcome and adds it to `metrics.json` (`time_budget`)."""
    summary = budget.summary(evaluation_s)
    add_to_metrics(workdir, summary)
    step = f"{budget.step_s:.3g} s per step" if budget.step_s else "step time not measured"
    print(f"Time budget {summary['budget_minutes']:g} min: {budget.steps_done} steps "
          f"({step}; {budget.stop_reason or 'all epochs done'}) in "
          f"{budget.training_s:.0f} s of training; final evaluation {evaluation_s:.0f} s",
          flush=True)
