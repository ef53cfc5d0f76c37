"""Training to a time budget: train.py --max_train_minutes plans the run's number of optimizer steps from the measured
step and evaluation times, so that a cosine or linear learning-rate decay reaches zero when the budget ends instead of
being cut mid-way (nanoGPT and the speedrun recipes plan their decay to the end of the run for the same reason)."""

import math
import time

_clock = time.perf_counter  # the tests run train.py on a clock of their own

# Schedules whose shape depends on the run's length: their decay is planned to the budget.
PLANNED_SCHEDULES = ("cosine", "linear")


class PlannedDecay:
    """
    The learning-rate multiplier of transformers' `get_scheduler("cosine" | "linear", ...)`: linear warmup over
    `num_warmup_steps`, then a decay that reaches 0 at `total_steps`, where `total_steps` can be moved while the run
    goes (`TimeBudget` moves it). `torch.optim.lr_scheduler.LambdaLR` saves a callable object's attributes in its
    state dict, so a checkpoint keeps the plan and a resumed run goes on with it.
    """

    def __init__(self, kind: str, num_warmup_steps: int, total_steps: int):
        if kind not in PLANNED_SCHEDULES:
            raise ValueError(f"PlannedDecay kind={kind!r}: expected one of {PLANNED_SCHEDULES}.")
        self.kind, self.num_warmup_steps, self.total_steps = kind, num_warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return step / max(1, self.num_warmup_steps)
        progress = (step - self.num_warmup_steps) / max(1, self.total_steps - self.num_warmup_steps)
        progress = min(1.0, progress)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress


class TimeBudget:
    """
    Plans how many optimizer steps fit in `seconds` of training, evaluation included.

    The run reports its steps (`step_done`) and its validation time at the end of each epoch (`begin_validation`,
    `end_validation`); `plan` then says at which step to stop: the steps done so far plus what the time left holds at
    the measured cost of a step, the validation time spread over the epoch's steps. The first steps of a run
    (start-up, allocation) are not timed. `elapsed` carries the time a resumed run had already spent.
    """

    def __init__(self, seconds: float, elapsed: float = 0.0, skip_steps: int = 3):
        if seconds <= 0:
            raise ValueError(f"TimeBudget seconds={seconds}: a budget must be positive.")
        self.seconds, self.skip_steps = seconds, skip_steps
        self._started = _clock() - elapsed
        self._timed_from: float | None = None
        self._timed_steps = 0
        self._steps_seen = 0
        self._overheads: list[float] = []
        self._paused_at: float | None = None

    @property
    def elapsed(self) -> float:
        return _clock() - self._started

    @property
    def expired(self) -> bool:
        return self.elapsed >= self.seconds

    def step_done(self) -> None:
        self._steps_seen += 1
        if self._steps_seen == self.skip_steps:
            self._timed_from = _clock()
        elif self._steps_seen > self.skip_steps:
            self._timed_steps += 1

    def begin_validation(self) -> None:
        """Marks the end of an epoch's training steps: what follows until `end_validation` is not step time."""
        self._paused_at = _clock()

    def end_validation(self) -> None:
        """Marks the end of the epoch's validation (the next steps' time is step time again)."""
        if self._paused_at is None:
            return
        overhead = _clock() - self._paused_at
        self._paused_at = None
        self._overheads.append(overhead)
        if self._timed_from is not None:
            self._timed_from += overhead

    @property
    def timed_steps(self) -> int:
        return self._timed_steps

    @property
    def seconds_per_step(self) -> float | None:
        if self._timed_from is None or self._timed_steps == 0:
            return None
        return (_clock() - self._timed_from) / self._timed_steps

    def plan(self, completed_steps: int, updates_per_epoch: int, limit: int) -> int | None:
        """
        The step to stop at: at most `limit` (the run's step limit from its epochs or --max_train_steps), and at
        least `completed_steps`. None while no step has been timed yet.
        """
        per_step = self.seconds_per_step
        if per_step is None:
            return None
        overhead = sum(self._overheads) / len(self._overheads) if self._overheads else 0.0
        cost = per_step + overhead / max(1, updates_per_epoch)
        left = max(0.0, self.seconds - self.elapsed)
        return max(completed_steps, min(limit, completed_steps + math.floor(left / cost)))
