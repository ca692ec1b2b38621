"""Competencies and their training steps as admins edit them: prerequisite cycles, step order."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Competency, StepRecord, TrainingStep


def creates_cycle(db: Session, competency_id: int | None, prerequisite_id: int | None) -> bool:
    """Whether making ``prerequisite_id`` the prerequisite of ``competency_id`` closes a loop
    (A needs B needs … needs A). A new competency (``None``) cannot close one."""
    if prerequisite_id is None or competency_id is None:
        return False
    seen: set[int] = set()
    current: int | None = prerequisite_id
    while current is not None and current not in seen:
        if current == competency_id:
            return True
        seen.add(current)
        current = db.scalar(select(Competency.prerequisite_id).where(Competency.id == current))
    return current is not None  # a loop that already existed elsewhere


def step_in_use(db: Session, step: TrainingStep) -> bool:
    """Whether anyone's training record points at the step (then it must stay)."""
    return db.scalar(select(StepRecord.id).where(StepRecord.step_id == step.id).limit(1)) is not None


def add_step(db: Session, competency: Competency, step: TrainingStep) -> None:
    """Append ``step`` after the competency's last step."""
    last = max((s.position for s in competency.steps), default=-1)
    step.position = last + 1
    step.competency = competency
    db.add(step)


def move_step(competency: Competency, step: TrainingStep, offset: int) -> bool:
    """Move a step up (-1) or down (+1); False when it is already first or last."""
    steps = list(competency.steps)
    index = steps.index(step)
    target = index + offset
    if not 0 <= target < len(steps):
        return False
    steps[index], steps[target] = steps[target], steps[index]
    for position, each in enumerate(steps):
        each.position = position
    return True
