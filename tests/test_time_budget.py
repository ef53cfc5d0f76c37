"""--max_train_minutes plans the run: the planned decay equals transformers' schedules, the plan follows the measured
step and evaluation times, survives a checkpoint, and a budgeted train.py run ends its decay when it stops."""

import json

import pytest
import torch
from transformers import get_scheduler

import train
from captioning.training import time_budget
from captioning.training.time_budget import PlannedDecay, TimeBudget

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_planned_decay_is_transformers_schedule(kind):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    ours = torch.optim.lr_scheduler.LambdaLR(optimizer, PlannedDecay(kind, 10, 100))
    theirs = get_scheduler(kind, torch.optim.SGD([parameter], lr=1.0), num_warmup_steps=10, num_training_steps=100)
    for _ in range(101):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], abs=1e-12)
        optimizer.step()
        ours.step()
        theirs.optimizer.step()
        theirs.step()
    for _ in range(10):  # past the plan (a run cut short of its time estimate): 0, where transformers' cosine rises
        assert ours.get_last_lr()[0] == 0.0
        optimizer.step()
        ours.step()
    with pytest.raises(ValueError, match="cosine"):
        PlannedDecay("inverse_sqrt", 10, 100)


def test_the_plan_is_saved_with_the_scheduler():
    parameter = torch.nn.Parameter(torch.zeros(1))
    decay = PlannedDecay("cosine", 5, 100)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([parameter], lr=1.0), decay)
    decay.total_steps = 37
    restored = PlannedDecay("cosine", 5, 100)
    other = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([parameter], lr=1.0), restored)
    other.load_state_dict(scheduler.state_dict())
    assert restored.total_steps == 37 and restored.kind == "cosine"


class FakeClock:
    """Time that moves only when told to (`now`), or by `tick` seconds whenever it is read."""

    def __init__(self, tick: float = 0.0):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_plan_counts_steps_and_between_epoch_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "_clock", clock)
    budget = TimeBudget(100.0, skip_steps=2)
    assert budget.plan(0, 10, 1000) is None  # nothing timed yet
    for _ in range(2):  # start-up steps, slow and not timed
        clock.now += 5.0
        budget.step_done()
    for _ in range(8):
        clock.now += 0.5
        budget.step_done()
    assert budget.seconds_per_step == pytest.approx(0.5)
    # 14 s spent; 86 s left at 0.5 s a step: 172 more steps.
    assert budget.plan(10, 10, 1000) == 10 + 172
    budget.begin_validation()
    clock.now += 5.0  # validation: 5 s an epoch of 10 steps, 0.5 s a step more
    budget.end_validation()
    assert budget.seconds_per_step == pytest.approx(0.5)
    assert budget.plan(10, 10, 1000) == 10 + 81  # 81 s left at 1 s a step
    assert budget.plan(10, 10, 50) == 50  # the epoch or step limit comes first
    clock.now += 200
    assert budget.expired and budget.plan(10, 10, 1000) == 10  # never before the steps already done
    resumed = TimeBudget(100.0, elapsed=40.0)
    assert resumed.elapsed == pytest.approx(40.0)
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0)


BUDGETED = [
    "--cpu",  # a resumed run is compared with an uninterrupted one: CPU determinism, even where a GPU is present
    "--preset",
    "tiny",
    "--synthetic_sizes",
    "128,4,4",
    "--per_device_train_batch_size",
    "8",
    "--num_beams",
    "1",
    "--max_new_tokens",
    "8",
    "--logging_steps",
    "1",
    "--vocab_size",
    "300",
    "--no_meteor",
    "--no-with_tracking",
    "--learning_rate",
    "1e-3",
    "--num_warmup_steps",
    "2",
    "--lr_scheduler_type",
    "cosine",
    "--num_train_epochs",
    "1000",
    "--max_train_minutes",
    "0.2",
    "--checkpoints_total_limit",
    "100",
]


def last_state(output_dir) -> dict:
    states = sorted(output_dir.glob("checkpoints/step_*/training_state.json"), key=lambda p: int(p.parent.name[5:]))
    return json.loads(states[-1].read_text())


def test_budgeted_run_plans_its_decay_to_the_end(tmp_path, monkeypatch):
    # The budget's clock moves 0.25 s whenever it is read, so the run plans the same steps on a fast or a busy machine.
    monkeypatch.setattr(time_budget, "_clock", FakeClock(tick=0.25))
    report = train.main([*BUDGETED, "--output_dir", str(tmp_path)])
    state = last_state(tmp_path)
    planned, done = state["planned_steps"], report["optimizer_steps"]
    assert planned is not None and 8 <= planned < 16 * 1000
    # The run stops at its plan (or a step or two short, where the wall clock ran out first), with the cosine decay
    # at its end rather than cut mid-way.
    assert 0.9 * planned <= done <= planned
    lrs = [row["lr"] for row in state["history"] if "lr" in row]
    assert max(lrs) == pytest.approx(1e-3, rel=0.01) and lrs[-1] < 0.05 * max(lrs)

    # Resumed from its first epoch's checkpoint, the run counts the time already spent and keeps its plan: it ends
    # about where the uninterrupted run did (a run that started its budget afresh would take twice the steps).
    first = sorted((tmp_path / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))[0]
    saved = json.loads((first / "training_state.json").read_text())
    assert saved["train_seconds"] > 0 and saved["planned_steps"] is not None
    monkeypatch.setattr(time_budget, "_clock", FakeClock(tick=0.25))
    resumed = train.main([*BUDGETED, "--output_dir", str(tmp_path), "--resume_from_checkpoint", str(first)])
    assert abs(resumed["optimizer_steps"] - done) <= 3
    lrs = [row["lr"] for row in last_state(tmp_path)["history"] if "lr" in row]
    assert lrs[-1] < 0.05 * max(lrs)
