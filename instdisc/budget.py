"""A time budget instead of an epoch count: measure the first steps, then plan the epochs.

The plan is a pure function of what was measured, so it can be printed, tested and saved:
a run with ``time_budget`` trains ``epochs`` full epochs of a finished schedule (cosine or
step, over the planned epochs) and ends within the budget, counting the kNN monitor and the
final bank refresh. Small collections get many epochs, big ones few.
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
    epochs: int
    seconds: float  # predicted total, <= the budget unless even one epoch does not fit
    reason: str


def replan_after_first_epoch(budget_seconds: float, first: Plan, epoch_wall_seconds: float, spent_seconds: float,
                             refresh_seconds: float) -> Plan:
    """The plan again, from the first whole epoch's measured wall time (steps, monitor, checkpoint):
    on small collections the per-epoch overheads that the step timing cannot see matter."""
    avail = budget_seconds * SAFETY - spent_seconds - refresh_seconds
    more = max(1, math.floor(avail / max(epoch_wall_seconds, 1e-9)))  # epoch 1 was not the last: one more at least
    epochs = 1 + more
    predicted = spent_seconds + refresh_seconds + more * epoch_wall_seconds
    return Plan(epochs, predicted, f"{first.reason}; after epoch 1 ({epoch_wall_seconds:.1f} s measured with "
                                   f"monitor and checkpoint): {epochs} epochs in {predicted / 60:.1f} min")


def plan_epochs(budget_seconds: float, m: Measured, max_epochs: int = 10_000) -> Plan:
    """The most epochs whose predicted time (steps + monitoring + refresh) fits the budget; at least one."""
    if budget_seconds <= 0:
        raise ValueError(f"the time budget must be positive, got {budget_seconds}")
    epoch_s = m.steps_per_epoch * m.step_seconds
    evals_per_epoch = 1.0 / m.eval_every if m.eval_every else 0.0
    per_epoch = epoch_s + m.eval_seconds * evals_per_epoch
    fixed = m.spent_seconds + m.refresh_seconds + (m.eval_seconds if not m.eval_every else 0.0)
    avail = budget_seconds * SAFETY - fixed
    epochs = max(1, min(max_epochs, math.floor(avail / per_epoch))) if per_epoch > 0 else max_epochs
    predicted = fixed + epochs * per_epoch
    reason = (f"{m.step_seconds * 1e3:.0f} ms/step x {m.steps_per_epoch} steps = {epoch_s:.0f} s/epoch"
              + (f" + {m.eval_seconds:.0f} s kNN every {m.eval_every} epoch(s)"
                 if m.eval_every and m.eval_seconds else "")
              + f"; {m.spent_seconds:.0f} s already spent"
              + (f", {m.refresh_seconds:.0f} s for the final bank refresh" if m.refresh_seconds else "")
              + f" -> {epochs} epochs in {predicted / 60:.1f} of {budget_seconds / 60:.1f} min")
    if predicted > budget_seconds:
        reason += " (one epoch does not fit: the budget is overrun)"
    return Plan(epochs, predicted, reason)
