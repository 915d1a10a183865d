"""`config.train.time_budget_minutes`: planning, the resizable schedule, stopping, resuming.

Every clock here is a `TickClock`: time moves by a fixed tick at each reading, so what the
budget decides depends on the code's readings, never on the machine's speed.
"""

import importlib.util
import json
import os
import pathlib

import pytest

from retinanet.training import budget as rbudget


class TickClock:
    """Returns 0, tick, 2 * tick, ...: one tick per reading."""

    def __init__(self, tick=1.0, interrupt_at=None):
        self.now, self.tick, self.interrupt_at = 0.0, tick, interrupt_at

    def __call__(self):
        if self.interrupt_at is not None and self.now >= self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt("test clock: interrupted")
        now, self.now = self.now, self.now + self.tick
        return now


CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name):
    spec = importlib.util.spec_from_file_location(f"config_{name}", CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_budget_config(minutes):
    config = load_config("tiny")
    config.train.schedule = "cosine"
    config.train.warmup_steps = 3
    config.train.steps_per_epoch = 5  # fewer epoch ends: fewer checkpoints to write
    config.train.eval_every_n_epochs = 0
    config.train.time_budget_minutes = minutes
    return config


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as file:
        return json.load(file)


def test_plan_counts_the_epoch_overhead():
    # The docstring's example: 10 + floor((600 - 100) / (2 + 10 / 20)) = 210.
    assert rbudget.plan_total_steps(budget_s=600, elapsed_s=100, steps_done=10, step_s=2,
                                    steps_per_epoch=20, epoch_overhead_s=10) == 210
    # Over budget: never fewer than done, never fewer than one.
    assert rbudget.plan_total_steps(budget_s=10, elapsed_s=50, steps_done=7, step_s=1,
                                    steps_per_epoch=5) == 7
    assert rbudget.plan_total_steps(budget_s=1, elapsed_s=5, steps_done=0, step_s=1,
                                    steps_per_epoch=5) == 1
    with pytest.raises(ValueError, match="step_s"):
        rbudget.plan_total_steps(budget_s=1, elapsed_s=0, steps_done=0, step_s=0,
                                 steps_per_epoch=1)


def test_planned_schedule_follows_its_length_and_serialises():
    schedule = rbudget.PlannedSchedule(1e-3, 100, kind="cosine", warmup_steps=10,
                                       warmup_factor=0.1, alpha=0.01)
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(0) == pytest.approx(1e-4)
    assert rate(5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert rate(10) == pytest.approx(1e-3)
    assert rate(55) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # halfway through the cosine
    assert rate(100) == pytest.approx(1e-5)
    schedule.set_total_steps(210)
    assert schedule.total_steps == 210
    assert rate(110) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert rate(300) == pytest.approx(1e-5)
    schedule.set_total_steps(20)  # warm-up capped at a tenth of the length: 2 steps
    assert rate(1) == pytest.approx(1e-3 * (0.1 + 0.9 * 1 / 2))
    assert rate(2) == pytest.approx(1e-3)
    assert rate(20) == pytest.approx(1e-5)
    copy = rbudget.PlannedSchedule.from_config(schedule.get_config())
    assert copy.total_steps == 20 and float(copy(2)) == pytest.approx(rate(2))

    step = rbudget.PlannedSchedule(1.0, 90, kind="step", boundaries=(2 / 3, 8 / 9))
    assert [float(step(s)) for s in (59, 60, 79, 80)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_budget_stops_training_evaluates_and_reports(tmp_path):
    from retinanet.training.trainer import train

    config = tiny_budget_config(0.5)  # 30 ticks of one second
    out = train(config, str(tmp_path), verbose=0, clock=TickClock())
    report = metrics(tmp_path)
    budget = report["time_budget"]
    assert budget["budget_minutes"] == 0.5
    # Ignoring `epochs` (2 of 5 steps), it trained as many steps as it planned to fit.
    assert budget["steps_done"] > config.train.epochs * config.train.steps_per_epoch
    assert budget["steps_done"] == budget["planned_steps"] == budget["schedule_steps"]
    assert budget["training_seconds"] <= 30 + 2  # the last step and the train-end reading
    assert budget["evaluation_seconds"] > 0
    assert budget["step_seconds"] == pytest.approx(1.0)
    assert "coco" in report
    optimizer = out["model"].optimizer
    assert int(optimizer.iterations.numpy()) == budget["steps_done"]
    # The cosine reached its end: cosine_alpha of the base rate.
    assert float(optimizer.learning_rate) == pytest.approx(
        config.train.learning_rate * config.train.cosine_alpha, rel=1e-4)


def test_moving_average_is_the_final_model_when_the_budget_stops_the_run(tmp_path,
                                                                         monkeypatch):
    import keras
    import numpy as np

    from retinanet.training.callbacks import ResumableBackup
    from retinanet.training.trainer import train

    monkeypatch.setattr(ResumableBackup, "close", classmethod(lambda cls, path: None))
    config = tiny_budget_config(0.5)
    config.train.ema_momentum = 0.9
    out = train(config, str(tmp_path), verbose=0, clock=TickClock())
    # The budget stopped the run before `fit`'s last epoch, the case Keras' own swap callback
    # gets wrong: the model, the checkpoint and the evaluation hold the average, the backup
    # the trained weights it would resume from.
    assert metrics(tmp_path)["time_budget"]["stopped_because"]
    final = out["model"].get_weights()
    checkpoint = keras.saving.load_model(tmp_path / "checkpoints" / "last.keras")
    for saved, weights in zip(checkpoint.get_weights(), final):
        np.testing.assert_array_equal(saved, weights)
    backup = tmp_path / "backup"
    checkpoint.load_weights(backup / json.loads((backup / "training_metadata.json")
                                                .read_text())["weights"])
    trained = checkpoint.get_weights()
    assert max(float(np.max(np.abs(t - f))) for t, f in zip(trained, final)) > 1e-4


def test_spent_budget_still_trains_one_step(tmp_path):
    from retinanet.training.trainer import train

    train(tiny_budget_config(0.001), str(tmp_path), verbose=0, clock=TickClock())
    budget = metrics(tmp_path)["time_budget"]
    assert budget["steps_done"] == budget["planned_steps"] == budget["schedule_steps"] == 1
    assert budget["stopped_because"].startswith("the budget ran out")


@pytest.mark.slow  # two runs
def test_resumed_run_gets_the_time_that_remains(tmp_path):
    from retinanet.training.trainer import train

    config = tiny_budget_config(0.5)
    # Epochs end at readings 6 and 12 (five batch ends and one epoch end each); the clock
    # interrupts the run in the third epoch, after two backups.
    with pytest.raises(KeyboardInterrupt):
        train(config, str(tmp_path), verbose=0, clock=TickClock(interrupt_at=13.5))
    state = rbudget.read_state(str(tmp_path / "backup"))
    assert state["epoch"] == 2 and state["spent_seconds"] == pytest.approx(12)

    train(config, str(tmp_path), verbose=0, clock=TickClock())
    budget = metrics(tmp_path)["time_budget"]
    assert budget["spent_before_resume_seconds"] == pytest.approx(12)
    # A restarted budget would have given this run 30 more seconds.
    assert budget["training_seconds"] <= 30 + 2
    assert budget["training_seconds"] - budget["spent_before_resume_seconds"] < 30 - 5
    assert budget["steps_done"] > 10  # it continued from the second epoch's step
    assert budget["steps_done"] == budget["planned_steps"] == budget["schedule_steps"]

    # Run again: the budget is spent, so it evaluates without training.
    train(config, str(tmp_path), verbose=0, clock=TickClock())
    again = metrics(tmp_path)["time_budget"]
    assert again["steps_done"] == budget["steps_done"]
    assert again["stopped_because"] == "the resumed run had already spent its budget"


def test_budget_is_checked(tmp_path):
    from retinanet.config import ConfigError
    from retinanet.training.trainer import train

    config = tiny_budget_config(-1.0)
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        train(config, str(tmp_path), verbose=0)
    config = tiny_budget_config(1.0)
    config.train.optimizer = "reference"
    with pytest.raises(ConfigError, match="reference"):
        train(config, str(tmp_path), verbose=0)



def test_a_budget_run_says_what_a_user_needs(tmp_path, capsys):
    """Steps and time left instead of "Epoch 3/1000000", the operating point first in the
    summary, best.keras without evaluations between epochs, a CSV without empty columns,
    and no backup weights once the run has finished."""
    import csv

    from retinanet.training.trainer import train

    train(tiny_budget_config(0.5), str(tmp_path), verbose=1, clock=TickClock())
    out = capsys.readouterr().out
    assert "/1000000" not in out
    budget = metrics(tmp_path)["time_budget"]
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert progress and progress[-1].startswith(
        f"step {budget['steps_done']} of {budget['planned_steps']} planned, ")
    assert "min spent, about" in progress[0] and "min left; loss " in progress[0]
    lines = out.splitlines()
    first_ap = next(i for i, line in enumerate(lines) if line.startswith("AP "))
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    has_point = any(entry["threshold"] is not None for entry in analysis["per_class"].values())
    # (An untrained tiny model may have no curve; `operating_point` is tested on its own.)
    assert lines[first_ap - 1].startswith("Operating point") == has_point
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert (tmp_path / "checkpoints" / "best.keras").is_file()
    assert best["val_AP"] == pytest.approx(metrics(tmp_path)["coco"]["AP"])
    assert best["epoch"] == json.loads((tmp_path / "backup" / "training_metadata.json")
                                       .read_text())["epoch"] < 100  # not fit's 10**6
    with open(tmp_path / "training_log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    empty = [column for column in rows[0] if all(row[column] == "NA" for row in rows)]
    assert rows and not empty
    assert not list((tmp_path / "backup").glob("*.weights.h5"))
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())[
        "finished"]


def test_operating_point_leads_with_the_best_f1_threshold():
    from retinanet.training.reporting import operating_point

    one = {"per_class": {"raccoon": {"threshold": 0.41, "precision": 0.857, "recall": 0.9}}}
    assert operating_point(one).startswith(
        "Operating point (best F1 at IoU 0.5): score >= 0.410 gives precision 0.857, recall "
        "0.900 (raccoon)")
    two = {"per_class": {"a": {"threshold": 0.3, "precision": 0.8, "recall": 0.6},
                         "b": {"threshold": 0.5, "precision": 0.6, "recall": 0.8},
                         "c": {"threshold": None, "precision": None, "recall": None}}}
    assert "mean precision 0.700, mean recall 0.700 over 2 classes" in operating_point(two)
    assert operating_point({"per_class": {}}) == ""
