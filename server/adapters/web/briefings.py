"""Safety briefings on record: record one with the participant's signature (drawn on the
trainer's tablet), see who is due for the yearly repeat, and print the proof list per machine
type and site for an inspection (page and PDF).

Thin views over :mod:`server.services.briefings`; the signature pad is a static script
(``signature.js``), so the pages keep the strict content security policy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from server.adapters.web.attendance import letterhead, pdf_or_print_view, same_query
from server.adapters.web.auth import current, trainer_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, current_language, date_label, error_text
from server.adapters.web.training import level_label
from server.extensions import get_db
from server.models import MachineType, Person, TrainingStep
from server.services import audit, briefings, training
from server.services.training import TrainingError

bp = web_blueprint("briefings", __name__)


def _actor() -> Person:
    user = current()
    assert user is not None
    person = get_db().get(Person, user.id)
    assert person is not None
    return person


def _today(person: Person) -> Any:
    return datetime.now(UTC).astimezone(ZoneInfo(person.site.timezone)).date()


def _local_day(when: datetime, person: Person) -> str:
    return date_label(when.astimezone(ZoneInfo(person.site.timezone)).date())


def present(briefed: briefings.Briefed, person: Person) -> dict[str, Any]:
    record = briefed.record
    confirmation = briefed.confirmation
    return {
        "on": _local_day(record.recorded_at, person),
        "competency": record.step.competency.display_name(current_language()),
        "step": record.step.display_name(current_language()),
        "version": (confirmation.content_version if confirmation else None) or "-",
        "trainer": record.recorded_by.name if record.recorded_by else _("the system"),
        "signature": confirmation.signature if confirmation and confirmation.signature else None,
    }


def person_page(
    subject: Person, actor: Person, *, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    db = get_db()
    today = _today(actor)
    steps = [
        {
            "id": s.id,
            "name": s.display_name(current_language()),
            "competency": s.competency.display_name(current_language()),
            "version": s.content_version or "-",
            "level": level_label(s.leads_to),
        }
        for s in briefings.briefing_steps(db)
        if training.may_change(db, actor, subject, s.competency, today)
    ]
    records = briefings.history(db, [subject.id]).get(subject.id, [])
    return (
        render_template(
            "briefings/person.html",
            person=subject,
            steps=steps,
            records=[present(b, subject) for b in records],
            error=error,
        ),
        status,
    )


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    subject = get_db().get(Person, person_id)
    if subject is None or not training.serves(actor, subject):
        abort(404)
    return person_page(subject, actor)


@bp.post("/people/<int:person_id>")
@trainer_required
def record(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    subject = db.get(Person, person_id) or abort(404)
    try:
        step = db.get(TrainingStep, int(request.form.get("step_id", "")))
    except ValueError:
        step = None
    if step is None:
        abort(400)
    now = datetime.now(UTC)
    try:
        _record, granted = briefings.record(
            db,
            actor,
            subject,
            step,
            request.form.get("signature"),
            now,
            _today(actor),
            request.form.get("note"),
        )
    except TrainingError as refused:
        db.rollback()
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        status = 403 if refused.forbidden else 400
        if not training.serves(actor, subject):
            return render_template("error.html", code=status, message=error_text(refused)), status
        return person_page(subject, actor, error=error_text(refused), status=status)
    db.commit()
    message = _("Briefing recorded with signature: %(step)s.", step=step.name)
    if granted is not None:
        message += " " + _("Level now: %(level)s.", level=level_label(granted.level))
    flash(message, "success")
    return redirect(url_for("briefings.person", person_id=subject.id))


@bp.get("/due")
@trainer_required
def due() -> ResponseReturnValue:
    actor = _actor()
    items = briefings.due(get_db(), actor.site_id, _today(actor))
    return render_template(
        "briefings/due.html",
        items=[
            {
                "person": d.person,
                "competency": d.competency.display_name(current_language()),
                "last": date_label(d.last) if d.last else _("never on record"),
                "due": date_label(d.due),
                "overdue": d.due <= _today(actor),
            }
            for d in items
        ],
    )


def _proof(actor: Person) -> tuple[MachineType, list[briefings.ProofRow]]:
    db = get_db()
    slug = request.args.get("machine_type", "")
    machine_type = db.scalar(select(MachineType).where(MachineType.slug == slug)) or abort(404)
    return machine_type, briefings.proof_list(db, actor.site_id, machine_type, _today(actor))


def _proof_context(
    actor: Person, machine_type: MachineType, rows: list[briefings.ProofRow]
) -> dict[str, Any]:
    return {
        "machine_type": machine_type.display_name(current_language()),
        "slug": machine_type.slug,
        "site": actor.site,
        "letterhead": letterhead(actor.site),
        "made_on": date_label(_today(actor)),
        "rows": [
            {
                "name": r.person.name,
                "current": r.current,
                "briefings": [present(b, r.person) for b in r.briefings],
            }
            for r in rows
        ],
    }


@bp.get("/proof")
@trainer_required
def proof() -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    if not request.args.get("machine_type"):
        types = db.scalars(select(MachineType).order_by(MachineType.name)).all()
        return render_template(
            "briefings/choose.html", types=[(t.slug, t.display_name(current_language())) for t in types]
        )
    machine_type, rows = _proof(actor)
    audit.record(
        db,
        actor,
        "briefing.proof",
        f"site:{actor.site_id}",
        {"machine_type": machine_type.slug, "kind": "print"},
    )
    db.commit()
    return render_template(
        "documents/briefing_proof.html", paper=False, **_proof_context(actor, machine_type, rows)
    )


@bp.get("/proof.pdf")
@trainer_required
def proof_pdf() -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    machine_type, rows = _proof(actor)
    html = render_template(
        "documents/briefing_proof.html", paper=True, **_proof_context(actor, machine_type, rows)
    )
    made, response = pdf_or_print_view(
        html,
        f"briefings-{actor.site.slug}-{machine_type.slug}.pdf",
        "briefing_proof",
        url_for("briefings.proof") + same_query(),
    )
    if not made:
        return response
    audit.record(
        db,
        actor,
        "briefing.proof",
        f"site:{actor.site_id}",
        {"machine_type": machine_type.slug, "kind": "pdf"},
    )
    db.commit()
    return response
