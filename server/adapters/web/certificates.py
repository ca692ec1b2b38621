"""Certificates: issue from a person's page or for a whole cohort, download as PDF, revoke;
and the public verification page an employer opens from the QR code (``/v/<code>``).

Thin views over :mod:`server.services.certificates`, which holds the staff rule, the facts and
the signature. A certificate is rendered in its own language, whatever the reader's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import force_locale  # type: ignore[import-untyped,unused-ignore]
from markupsafe import Markup

from server.adapters.web.attendance import letterhead, pdf_or_print_view
from server.adapters.web.auth import current, login_required, public, trainer_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, current_language, date_label, error_text
from server.extensions import get_db
from server.i18n import local_number
from server.models import Certificate, CertificateKind, Level, Person, Site
from server.services import attendance, certificates, documents, lab_keys, training
from server.services.certificates import pretty_code
from server.services.training import LEVEL_LABELS, STEP_KIND_LABELS, TrainingError

bp = web_blueprint("certificates", __name__)
verify_bp = web_blueprint("verify", __name__)


def _actor() -> Person:
    user = current()
    assert user is not None
    person = get_db().get(Person, user.id)
    assert person is not None
    return person


def _legacy_key() -> bytes:
    """The HMAC key of certificates issued before Ed25519 (they still verify)."""
    return certificates.hmac_key(current_app.config)


def verification_url(code: str) -> str:
    base = current_app.config.get("PUBLIC_URL")
    path = url_for("verify.certificate", code=pretty_code(code))
    return (
        f"{str(base).rstrip('/')}{path}"
        if base
        else url_for("verify.certificate", code=pretty_code(code), _external=True)
    )


def date_text(text: str | None) -> str:
    """An ISO date from the facts, the way the reader (or the certificate's language) writes it."""
    from flask_babel import format_date  # type: ignore[import-untyped,unused-ignore]

    return str(format_date(date.fromisoformat(text), "long")) if text else ""


def level_text(value: str) -> str:
    return _(LEVEL_LABELS[Level(value)])


def _validity(item: dict[str, Any]) -> str:
    """ "Valid until 2 November 2026", or "Expired on …" once that day has passed when issued."""
    if not item.get("valid_until"):
        return ""
    when = date_text(item["valid_until"])
    if item.get("expired"):
        return _("Expired on %(date)s", date=when)
    return _("Valid until %(date)s", date=when)


def certificate_context(certificate: Certificate) -> dict[str, Any]:
    """What the certificate template shows, in the current (the certificate's) language."""
    facts = certificate.facts
    language = current_language()
    competencies = []
    for item in facts.get("competencies", []):
        competencies.append(
            {
                "name": item["competency_de"] if language == "de" else item["competency"],
                "level": level_text(item["level"]),
                "since": date_text(item["since"]),
                "trainer": item.get("trainer") or "-",
                "valid_until": date_text(item.get("valid_until")),
                "validity": _validity(item),
                "supervised_hours": local_number(float(item.get("supervised_hours", 0)), language),
                "steps": [
                    {
                        # Certificates issued before the German name was kept have only "step".
                        "name": step.get("step_de", step["step"]) if language == "de" else step["step"],
                        "kind": _(STEP_KIND_LABELS.get(step["kind"], step["kind"])),
                        "on": date_text(step["on"]),
                        "trainer": step.get("trainer") or "-",
                    }
                    for step in item.get("steps", [])
                ],
            }
        )
    url = verification_url(certificate.code)
    return {
        "kind": certificate.kind.value,
        "facts": facts,
        # Certificates issued before the German name was kept have only "lab".
        "lab": facts.get("lab_de", facts.get("lab")) if language == "de" else facts.get("lab"),
        "hours": local_number(float(facts.get("hours", 0)), language),
        "code": pretty_code(certificate.code),
        "from": date_text(facts.get("from")),
        "to": date_text(facts.get("to")),
        "issued": date_text(facts.get("issued")),
        "competencies": competencies,
        "url": url,
        "key_id": certificates.signed_document(certificate)["key_id"],
        "letterhead": letterhead(certificate.site),
    }


def render_certificates(items: list[Certificate]) -> str:
    """One HTML document with each certificate on its own pages, each in its own language."""
    parts = []
    for certificate in items:
        with force_locale(certificate.language):
            context = certificate_context(certificate)
            context["qr"] = documents.qr_data_url(context["url"])  # the page at /v/ shows none
            html = render_template("documents/_certificate.html", c=context)
            parts.append(Markup(html))  # noqa: S704  # our own template's output, escaped as rendered
    language = items[0].language if items else current_language()
    return render_template("documents/certificates.html", parts=parts, doc_language=language)


def _pdf(items: list[Certificate], filename: str) -> ResponseReturnValue:
    """The certificates as one PDF; without WeasyPrint, a page offering their print view."""
    print_url = url_for("certificates.print_view", code=[pretty_code(c.code) for c in items])
    return pdf_or_print_view(render_certificates(items), filename, "certificates", print_url)[1]


def _readable(certificate: Certificate | None, actor: Person) -> bool:
    """The holder reads their own certificates; staff those of the people they serve."""
    return certificate is not None and (
        certificate.person_id == actor.id
        or ((actor.is_trainer or actor.is_admin) and training.serves(actor, certificate.person))
    )


# -- a person's certificates ----------------------------------------------------------------------


def _person(person_id: int, actor: Person) -> Person:
    person = get_db().get(Person, person_id)
    if person is None or not training.serves(actor, person):
        abort(404)
    return person


def person_page(person: Person, *, error: str | None = None, status: int = 200) -> ResponseReturnValue:
    return (
        render_template(
            "certificates/person.html",
            person=person,
            certificates=[
                {"c": c, "code": pretty_code(c.code), "kind": kind_label(c.kind)}
                for c in certificates.of_person(get_db(), person.id)
            ],
            error=error,
            today=datetime.now(UTC).date().isoformat(),
        ),
        status,
    )


def kind_label(kind: CertificateKind) -> str:
    return _("Participation certificate") if kind == CertificateKind.PARTICIPATION else _("Competence pass")


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    return person_page(_person(person_id, _actor()))


def _kind(raw: str | None) -> CertificateKind:
    try:
        return CertificateKind(raw or "")
    except ValueError:
        abort(400)


def _refused(subject: Person, actor: Person, refused: TrainingError) -> ResponseReturnValue:
    db = get_db()
    db.rollback()
    if training.audit_refusal(db, refused, source="web"):
        db.commit()
    status = 403 if refused.forbidden else 400
    if not training.serves(actor, subject):
        return render_template("error.html", code=status, message=error_text(refused)), status
    return person_page(subject, error=error_text(refused), status=status)


@bp.post("/people/<int:person_id>/issue")
@trainer_required
def issue(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    subject = db.get(Person, person_id) or abort(404)
    kind = _kind(request.form.get("kind"))
    try:
        first = date.fromisoformat(request.form["from"]) if request.form.get("from") else None
        last = date.fromisoformat(request.form["to"]) if request.form.get("to") else None
    except ValueError:
        return _refused(subject, actor, TrainingError("bad_period", "Give the period as two dates."))
    try:
        certificate = certificates.issue(
            db,
            actor,
            subject,
            kind,
            request.form.get("language") or subject.language,
            datetime.now(UTC),
            first=first,
            last=last,
        )
    except TrainingError as refused:
        return _refused(subject, actor, refused)
    db.commit()
    flash(_("Certificate %(code)s issued.", code=pretty_code(certificate.code)), "success")
    return redirect(url_for("certificates.person", person_id=subject.id))


@bp.post("/<code>/revoke")
@trainer_required
def revoke(code: str) -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    certificate = certificates.by_code(db, code) or abort(404)
    subject = certificate.person
    try:
        certificates.revoke(db, actor, certificate, request.form.get("reason"), datetime.now(UTC))
    except TrainingError as refused:
        return _refused(subject, actor, refused)
    db.commit()
    flash(_("Certificate %(code)s revoked.", code=pretty_code(certificate.code)), "success")
    return redirect(url_for("certificates.person", person_id=subject.id))


@bp.get("/<code>.pdf")
@login_required
def pdf(code: str) -> ResponseReturnValue:
    """The certificate's PDF: for its holder, and for staff who serve them."""
    actor = _actor()
    certificate = certificates.by_code(get_db(), code)
    if certificate is None or not _readable(certificate, actor):
        abort(404)
    if certificate.revoke_reason == certificates.ERASED:
        abort(410)
    return _pdf([certificate], f"certificate-{certificate.code}.pdf")


@bp.get("/print")
@login_required
def print_view() -> ResponseReturnValue:
    """Certificates (``?code=…``, one or more) as the browser's print view: the way out when the
    server cannot make PDFs. The same rule as the PDF: the holder's own, staff's people."""
    actor = _actor()
    db = get_db()
    codes = request.args.getlist("code")
    if not codes or len(codes) > 200:
        abort(404)
    items = []
    for code in codes:
        certificate = certificates.by_code(db, code)
        if certificate is None or not _readable(certificate, actor):
            abort(404)
        if certificate.revoke_reason == certificates.ERASED:
            abort(410)
        items.append(certificate)
    return render_certificates(items)


# -- a cohort at once ------------------------------------------------------------------------------


@bp.route("/cohort", methods=["GET", "POST"])
@trainer_required
def cohort() -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    site: Site = actor.site
    cohorts = attendance.cohorts(db, site.id)
    if request.method == "GET":
        return render_template("certificates/cohort.html", cohorts=cohorts, error=None)
    name = request.form.get("cohort") or ""
    if name not in cohorts:
        return render_template(
            "certificates/cohort.html", cohorts=cohorts, error=_("Choose a cohort of your site.")
        ), 400
    try:
        issued, skipped = certificates.issue_for_cohort(
            db,
            actor,
            site.id,
            name,
            _kind(request.form.get("kind")),
            request.form.get("language") or current_language(),
            datetime.now(UTC),
        )
    except TrainingError as refused:
        db.rollback()
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        return render_template("certificates/cohort.html", cohorts=cohorts, error=error_text(refused)), 403
    if not issued:
        db.rollback()
        return render_template(
            "certificates/cohort.html",
            cohorts=cohorts,
            error=_("Nobody in %(cohort)s can have this certificate yet.", cohort=name),
        ), 400
    db.commit()
    response = _pdf(issued, f"certificates-{name}.pdf")
    if skipped and isinstance(response, Response):
        response.headers["X-Werkbank-Skipped"] = str(len(skipped))
    return response


# -- the public verification page ----------------------------------------------------------------


@verify_bp.get("/<code>")
@public
def certificate(code: str) -> ResponseReturnValue:
    """What an employer sees from the QR code: the facts as signed by the lab, and whether the
    certificate still stands. No login; the code cannot be guessed."""
    result = certificates.verify(get_db(), code, _legacy_key())
    status = 200 if result.certificate is not None else 404
    context: dict[str, Any] = {"result": result, "code": code}
    if result.certificate is not None and not result.erased:
        context["signed"] = certificates.signed_document(result.certificate)
    if result.certificate is not None and result.genuine:
        # Only facts the lab signed are shown (edited ones may not even read: an unknown level).
        context["c"] = certificate_context(result.certificate)
    response = current_app.make_response((render_template("certificates/verify.html", **context), status))
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@verify_bp.get("/<code>/signed.json")
@public
def signed(code: str) -> ResponseReturnValue:
    """The certificate's facts exactly as signed and the signature, to check it offline with the
    lab's public key (``/v/keys.json``). The same facts the page shows to whoever has the code;
    nothing for an unknown code or a withdrawn certificate."""
    certificate = certificates.by_code(get_db(), code)
    if certificate is None or certificate.revoke_reason == certificates.ERASED:
        abort(404)
    response = jsonify(certificates.signed_document(certificate))
    response.headers["X-Robots-Tag"] = "noindex"
    response.headers["Content-Disposition"] = f'inline; filename="certificate-{certificate.code}.json"'
    return response


def _public_keys() -> list[lab_keys.PublicKey]:
    db = get_db()
    if not lab_keys.public_keys(db):
        lab_keys.signing_key(db)  # published before the first certificate is signed
        db.commit()
    return lab_keys.public_keys(db)


@verify_bp.get("/keys.json")
@public
def keys_json() -> ResponseReturnValue:
    """The lab's public certificate keys: whoever has one checks certificates without the server."""
    return jsonify(
        {
            "algorithm": certificates.ED25519,
            "signed": "the facts' canonical JSON: sorted keys, no spaces, UTF-8",
            "keys": [
                {
                    "key_id": key.key_id,
                    "public_key": key.base64,
                    "pem": key.pem,
                    "created_at": key.created_at.isoformat(),
                    "current": key.current,
                }
                for key in _public_keys()
            ],
        }
    )


@verify_bp.get("/keys")
@public
def keys() -> ResponseReturnValue:
    """The same as a page, with how to check a certificate offline."""
    shown = [
        {
            "key_id": key.key_id,
            "current": key.current,
            "made": date_label(key.created_at.date()),
            "base64": key.base64,
            "pem": key.pem,
        }
        for key in _public_keys()
    ]
    return render_template("certificates/keys.html", keys=shown)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp, url_prefix="/certificates")
    app.register_blueprint(verify_bp, url_prefix="/v")
