"""A time budget instead of an epoch count: measure the first steps, then plan the epochs.

The plan is a pure function of what was measured, so it can be printed, tested and saved:
a run with ``time_budget`` trains ``schedule_epochs`` epochs -- fractional: the last epoch
stops at the planned step, so a budget of 3.7 epochs is not rounded down to 3 -- of a
finished schedule (cosine or step over exactly that length) and ends within the budget,
counting the kNN monitor and the final bank refresh. Small collections get many epochs,
big ones few (less than one for a collection that one epoch would overrun).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CALIBRATION_STEPS = 30  # steps timed (after WARMUP_STEPS untimed ones) before planning
WARMUP_STEPS = 10  # the first steps build oneDNN kernels and are several times slower
SAFETY = 0.97  # plan for 97 % of the budget: step times wander by a few per cent on a shared CPU


@dataclass(frozen=True)
class Measured:
    step_seconds: float  # one training step
    steps_per_epoch: int
    eval_seconds: float  # one kNN evaluation (0 without an eval split)
    eval_every: int  # epochs between evaluations (0: only at the end)
    refresh_seconds: float  # re-embedding the training set at the end (0 when not refreshed)
    spent_seconds: float  # budget already used (bank fill, first evaluation, calibration steps)


@dataclass(frozen=True)
class Plan:
    schedule_epochs: float  # a whole number of steps, in epochs
    seconds: float  # predicted total, <= the budget unless even one step does not fit
    reason: str

    @property
    def epochs(self) -> int:
        """Epochs started (the last one possibly partial)."""
        return max(1, math.ceil(self.schedule_epochs - 1e-9))


def _to_steps(epochs: float, steps_per_epoch: int, minimum: float) -> float:
    return max(minimum, math.floor(epochs * steps_per_epoch) / steps_per_epoch)


PACE_TOLERANCE = 0.02  # re-pace when the predicted end drifts by more than 2 % of the budget
PACE_EPOCHS = 3  # the epoch time a re-pace uses: the mean of the last few whole epochs


def _remaining(budget_seconds: float, epochs_done: int, epoch_wall_seconds: float, spent_seconds: float,
               refresh_seconds: float, steps_per_epoch: int) -> tuple[float, float]:
    """(schedule epochs, predicted seconds) when the rest runs at ``epoch_wall_seconds`` an epoch;
    at least one more step (the epoch just ended was not the last)."""
    avail = budget_seconds * SAFETY - spent_seconds - refresh_seconds
    more = _to_steps(avail / max(epoch_wall_seconds, 1e-9), steps_per_epoch, 1.0 / steps_per_epoch)
    return epochs_done + more, spent_seconds + refresh_seconds + more * epoch_wall_seconds


def replan_after_first_epoch(budget_seconds: float, first: Plan, epoch_wall_seconds: float, spent_seconds: float,
                             refresh_seconds: float, steps_per_epoch: int) -> Plan:
    """The plan again, from the first whole epoch's measured wall time (steps, monitor, checkpoint):
    on small collections the per-epoch overheads that the step timing cannot see matter. Epoch 1
    was not the last, so at least one step of epoch 2 remains."""
    epochs, predicted = _remaining(budget_seconds, 1, epoch_wall_seconds, spent_seconds, refresh_seconds,
                                   steps_per_epoch)
    return Plan(epochs, predicted, f"{first.reason}; after epoch 1 ({epoch_wall_seconds:.1f} s measured with "
                                   f"monitor and checkpoint): {epochs:.2f} epochs in {predicted / 60:.1f} min")


def repace(budget_seconds: float, current: Plan, epochs_done: int, recent_epoch_seconds: float, spent_seconds: float,
           refresh_seconds: float, steps_per_epoch: int) -> Plan | None:
    """A new plan when the run has drifted off its budget, else None.

    A shared CPU's speed wanders by 10-25 % over a run (measured: 256 -> 190 images/s over a
    10-minute fine-tuning run, which ended 11 % late on the epoch-1 plan), so after every epoch
    the rest is predicted at the recent epochs' pace; when the end moves by more than
    ``PACE_TOLERANCE`` of the budget the schedule is stretched or shortened to end on time. The
    cosine then ends at zero at the new length: the learning rate moves by a small step, once."""
    left = max(0.0, current.schedule_epochs - epochs_done)
    end = spent_seconds + refresh_seconds + left * recent_epoch_seconds
    if abs(end - budget_seconds * SAFETY) <= PACE_TOLERANCE * budget_seconds:
        return None
    epochs, predicted = _remaining(budget_seconds, epochs_done, recent_epoch_seconds, spent_seconds,
                                   refresh_seconds, steps_per_epoch)
    base = current.reason.split("; re-paced", 1)[0]  # one re-pace note: the latest
    return Plan(epochs, predicted, f"{base}; re-paced after epoch {epochs_done} ({recent_epoch_seconds:.1f} s an "
                                   f"epoch lately, {end / 60:.1f} min predicted): {epochs:.2f} epochs in "
                                   f"{predicted / 60:.1f} min")


def plan_epochs(budget_seconds: float, m: Measured, max_epochs: int = 10_000) -> Plan:
    """The most steps (in epochs) whose predicted time (steps + monitoring + refresh) fits the budget;
    at least one step."""
    if budget_seconds <= 0:
        raise ValueError(f"the time budget must be positive, got {budget_seconds}")
    epoch_s = m.steps_per_epoch * m.step_seconds
    evals_per_epoch = 1.0 / m.eval_every if m.eval_every else 0.0
    per_epoch = epoch_s + m.eval_seconds * evals_per_epoch
    fixed = m.spent_seconds + m.refresh_seconds + (m.eval_seconds if not m.eval_every else 0.0)
    avail = budget_seconds * SAFETY - fixed
    epochs = min(max_epochs, _to_steps(avail / per_epoch, m.steps_per_epoch, 1.0 / m.steps_per_epoch))
    predicted = fixed + epochs * per_epoch
    reason = (f"{m.step_seconds * 1e3:.0f} ms/step x {m.steps_per_epoch} steps = {epoch_s:.0f} s/epoch"
              + (f" + {m.eval_seconds:.0f} s kNN every {m.eval_every} epoch(s)"
                 if m.eval_every and m.eval_seconds else "")
              + f"; {m.spent_seconds:.0f} s already spent"
              + (f", {m.refresh_seconds:.0f} s for the final bank refresh" if m.refresh_seconds else "")
              + f" -> {epochs:.2f} epochs in {predicted / 60:.1f} of {budget_seconds / 60:.1f} min")
    if predicted > budget_seconds:
        reason += " (not even one step fits: the budget is overrun)"
    return Plan(epochs, predicted, reason)
