"""The admin pages' forms: field rules that need no database (the views check uniqueness)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    FloatField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from server.adapters.web.l10n import _, _l
from server.models import FieldKind, Level, MachineStatus, StepKind
from server.services import opening_hours
from server.services.people_import import EMAIL

try:
    from wtforms.fields.choices import SelectChoice
except ImportError:  # WTForms before 3.3 takes (value, label) pairs
    SelectChoice = None


def choice(value: Any, label: Any) -> Any:
    """One option of a select (WTForms 3.3 deprecates plain pairs)."""
    return SelectChoice(value, label) if SelectChoice is not None else (value, label)


SLUG = r"^[a-z0-9][a-z0-9-]{1,39}$"


def _hours_field(empty_means: Any) -> Any:
    return TextAreaField(
        _l("Opening hours"),
        validators=[Optional(), Length(max=2000)],
        description=empty_means,
        render_kw={**NO_SPELLCHECK, "rows": 4, "placeholder": "mon-fri 09:00-18:00\nsat 10:00-14:00"},
    )


def _check_hours(field: Any) -> None:
    """Parse the hours text; the parsed intervals are left in ``field.intervals`` for the view."""
    try:
        field.intervals = opening_hours.parse(str(field.data or ""))
    except opening_hours.HoursError as exc:
        raise ValidationError(exc.text(_)) from exc


NO_SPELLCHECK = {"autocapitalize": "none", "spellcheck": "false", "autocomplete": "off"}


def _slug() -> Any:
    return StringField(
        _l("Short name (slug)"),
        validators=[
            DataRequired(),
            Regexp(SLUG, message=_l("2 to 40 characters: lower-case letters, digits and dashes.")),
        ],
        description=_l("Used in addresses and files, e.g. laser-1. Lower-case letters, digits, dashes."),
        render_kw=NO_SPELLCHECK,
    )


def optional_int(value: Any) -> int | None:
    """Coerce a select's value: "" means none."""
    if value in (None, "", "None"):
        return None
    return int(value)


def level_choices() -> list[Any]:
    return [
        choice(Level.BRIEFED.value, _l("Briefed")),
        choice(Level.SUPERVISED.value, _l("Supervised")),
        choice(Level.INDEPENDENT.value, _l("Independent")),
        choice(Level.TRAINER.value, _l("Trainer")),
    ]


class Form(FlaskForm):  # type: ignore[misc]  # Flask-WTF is untyped: its classes are Any
    def add_error(self, field: str, message: str) -> None:
        """An error the view found (a taken name, say) after the field rules passed."""
        errors = getattr(self, field).errors
        if isinstance(errors, tuple):  # a field whose rules never ran
            getattr(self, field).errors = [*errors, message]
        else:
            errors.append(message)


class SiteForm(Form):
    slug = _slug()
    name = StringField(_l("Name (English)"), validators=[DataRequired(), Length(max=200)])
    name_de = StringField(_l("Name (German)"), validators=[Optional(), Length(max=200)])
    timezone = StringField(
        _l("Time zone"),
        default="Europe/Berlin",
        validators=[DataRequired(), Length(max=64)],
        description=_l("As in the time zone database, e.g. Europe/Berlin."),
        render_kw=NO_SPELLCHECK,
    )
    opening_hours = _hours_field(
        _l(
            "One line per days and times, e.g. mon-fri 09:00-18:00. Days without a line are closed. "
            "Empty: open at all times."
        )
    )
    card_security = SelectField(
        _l("Badges"),
        choices=[
            choice("uid", _l("Card number (UID) only, as before")),
            choice("secure", _l("Secure badges must prove their key; UID-only badges still work")),
            choice("secure_required", _l("Only secure badges unlock")),
        ],
        default="uid",
        description=_l(
            "UID-only badges can be copied in seconds. Issue secure badges first, then require them."
        ),
    )

    address = TextAreaField(
        _l("Address on the letterhead"),
        validators=[Optional(), Length(max=1000)],
        description=_l(
            "Printed under the site's name on certificates, attendance sheets and briefing lists: "
            "up to 6 lines, e.g. street, postcode and town."
        ),
        render_kw={"rows": 4},
    )
    logo_file = FileField(
        _l("Logo on the letterhead"),
        description=_l("A PNG or JPEG picture, at most 512 KB. Leave empty to keep the current logo."),
        render_kw={"accept": "image/png,image/jpeg"},
    )
    remove_logo = BooleanField(_l("Remove the logo"))

    def validate_timezone(self, field: Any) -> None:
        try:
            ZoneInfo(str(field.data).strip())
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValidationError(_l("Unknown time zone. Use a name like Europe/Berlin.")) from exc

    def validate_opening_hours(self, field: Any) -> None:
        _check_hours(field)


class PersonForm(Form):
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    email = StringField(
        _l("Email"),
        validators=[
            Optional(),
            Length(max=254),
            Regexp(EMAIL.pattern, message=_l("This is not an email address.")),
        ],
        render_kw={**NO_SPELLCHECK, "type": "email"},
    )
    is_participant = BooleanField(_l("Participant"))
    is_trainer = BooleanField(_l("Trainer"))
    is_admin = BooleanField(_l("Admin"))
    language = SelectField(_l("Language"), choices=[choice("de", _l("German")), choice("en", _l("English"))])
    site_id = SelectField(_l("Site"), coerce=int)
    cohort = StringField(_l("Cohort"), validators=[Optional(), Length(max=100)])
    programme = StringField(_l("Programme"), validators=[Optional(), Length(max=100)])
    external_id = StringField(
        _l("External ID"),
        validators=[Optional(), Length(max=64)],
        description=_l("The programme's participant number; CSV imports match on it."),
        render_kw=NO_SPELLCHECK,
    )
    active = BooleanField(_l("Active"), default=True)
    password = PasswordField(
        _l("New password"),
        validators=[
            Optional(),
            Length(min=10, max=1024, message=_l("The password needs 10 to 1024 characters.")),
        ],
        description=_l("Optional. At least 10 characters. Leave empty to keep the current one."),
        render_kw={"autocomplete": "new-password"},
    )


class BadgeForm(Form):
    """Assign a new badge, or replace a badge with a new one."""

    uid = StringField(
        _l("Badge UID"),
        validators=[DataRequired(), Length(max=40)],
        description=_l("8, 14 or 20 hex digits, as the reader shows them."),
        render_kw=NO_SPELLCHECK,
    )
    note = StringField(_l("Note"), validators=[Optional(), Length(max=500)])


class EnrolForm(Form):
    """Issue a secure badge: which enrolment station writes it (the choices are the site's stations)."""

    device_id = SelectField(
        _l("Enrolment station"),
        description=_l(
            "Then lay a new, empty NTAG 424 DNA card on that station's reader until it says ready."
        ),
    )


class BlockForm(Form):
    note = StringField(
        _l("Why is it blocked?"),
        validators=[DataRequired(), Length(max=500)],
        description=_l("For example: reported lost on 3 March."),
    )


class TokenForm(Form):
    name = StringField(
        _l("What is it for?"),
        validators=[DataRequired(), Length(max=100)],
        description=_l("For example: funder export script."),
    )
    expires_days = IntegerField(
        _l("Valid for (days)"),
        validators=[Optional(), NumberRange(1, 3650)],
        description=_l("Empty: until revoked."),
    )


class ImportForm(Form):
    file = FileField(_l("CSV file"), validators=[FileRequired()], render_kw={"accept": ".csv,text/csv"})
    site_id = SelectField(_l("Site for new people"), coerce=int)


class MachineTypeForm(Form):
    slug = _slug()
    name = StringField(_l("Name (English)"), validators=[DataRequired(), Length(max=200)])
    name_de = StringField(_l("Name (German)"), validators=[Optional(), Length(max=200)])
    job_kind = SelectField(
        _l("Jobs on this machine"),
        choices=[choice("print", _l("Prints")), choice("cut", _l("Cuts")), choice("other", _l("Other"))],
    )


def machine_type_form(competencies: list[tuple[int, str]], **kwargs: Any) -> MachineTypeForm:
    """The form with one "minimum level" choice per competency (``req_<id>``)."""

    class WithRequirements(MachineTypeForm):
        pass

    for competency_id, name in competencies:
        field = SelectField(
            name,
            choices=[choice("", _l("Not required")), *level_choices()],
            default="",
            validators=[Optional()],
        )
        setattr(WithRequirements, f"req_{competency_id}", field)
    form: MachineTypeForm = WithRequirements(**kwargs)
    return form


class MachineForm(Form):
    slug = _slug()
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    site_id = SelectField(_l("Site"), coerce=int)
    machine_type_id = SelectField(_l("Machine type"), coerce=int)
    status = SelectField(
        _l("Status"),
        choices=[
            choice(MachineStatus.AVAILABLE.value, _l("Available")),
            choice(MachineStatus.MAINTENANCE.value, _l("Maintenance")),
            choice(MachineStatus.DISABLED.value, _l("Disabled")),
        ],
    )
    max_session_min = IntegerField(
        _l("Longest session (minutes)"), default=240, validators=[InputRequired(), NumberRange(1, 24 * 60)]
    )
    idle_timeout_min = IntegerField(
        _l("Lock when idle for (minutes)"), default=15, validators=[InputRequired(), NumberRange(1, 24 * 60)]
    )
    guard_min = IntegerField(
        _l("Keep free before a booking (minutes)"),
        default=15,
        validators=[InputRequired(), NumberRange(0, 240)],
    )
    opening_hours = _hours_field(
        _l(
            "Only when this machine keeps other hours than its site, e.g. mon-thu 10:00-16:00. "
            "Empty: the site's opening hours."
        )
    )

    def validate_opening_hours(self, field: Any) -> None:
        _check_hours(field)


class CompetencyForm(Form):
    slug = _slug()
    name = StringField(_l("Name (English)"), validators=[DataRequired(), Length(max=200)])
    name_de = StringField(_l("Name (German)"), validators=[Optional(), Length(max=200)])
    validity_months = IntegerField(
        _l("Valid for (months)"),
        validators=[Optional(), NumberRange(1, 240)],
        description=_l("Empty: does not expire."),
    )
    prerequisite_id = SelectField(_l("Needs first"), coerce=optional_int, validators=[Optional()])


# A briefing's content version: what a person writes on paper ("2026-1", "v3.2", "2026/03").
CONTENT_VERSION = r"^\s*[0-9A-Za-z][0-9A-Za-z._/-]*\s*$"


class StepForm(Form):
    kind = SelectField(
        _l("Kind"),
        choices=[
            choice(StepKind.BRIEFING.value, _l("Briefing")),
            choice(StepKind.SUPERVISED_HOURS.value, _l("Supervised hours")),
            choice(StepKind.SIGNOFF.value, _l("Practical sign-off")),
        ],
    )
    name = StringField(_l("Name (English)"), validators=[DataRequired(), Length(max=200)])
    name_de = StringField(_l("Name (German)"), validators=[Optional(), Length(max=200)])
    leads_to = SelectField(_l("Leads to level"), choices=level_choices())
    hours = FloatField(
        _l("Hours"),
        validators=[Optional()],
        description=_l("Only for supervised hours: how many are needed."),
    )
    content_version = StringField(
        _l("Content version"),
        validators=[
            Optional(),
            Length(max=40),
            Regexp(
                CONTENT_VERSION,
                message=_l("A version is letters, digits, dots, dashes and slashes (e.g. 2026-1)."),
            ),
        ],
        description=_l(
            "Only for briefings: the version of the safety instruction briefed (e.g. 2026-1). "
            "Each briefing records the version current then; change it when the content changes."
        ),
    )

    def validate(self, extra_validators: Any = None) -> bool:
        # Across two fields, so here: Optional() would skip an inline validate_hours when empty.
        valid: bool = super().validate(extra_validators)
        if self.hours.errors or self.content_version.errors:
            return False
        if self.kind.data != StepKind.BRIEFING.value and (self.content_version.data or "").strip():
            self.add_error("content_version", _l("Only briefings have a content version: leave this empty."))
            return False
        hours = self.hours.data
        if self.kind.data == StepKind.SUPERVISED_HOURS.value:
            if hours is None or not 0 < hours <= 1000:
                self.add_error("hours", _l("Supervised hours need a number of hours (more than 0)."))
                return False
        elif hours is not None:
            self.add_error("hours", _l("Only supervised hours have hours: leave this empty."))
            return False
        return valid


class ButtonForm(Form):
    """A button with nothing but the CSRF token (deactivate, unblock, move, delete)."""


class ProgrammeFieldForm(Form):
    """A field a programme asks of its participants (server.services.programme_data checks the rest)."""

    label = StringField(_l("Label (English)"), validators=[DataRequired(), Length(max=200)])
    label_de = StringField(_l("Label (German)"), validators=[Optional(), Length(max=200)])
    kind = SelectField(
        _l("Kind"),
        choices=[
            choice(FieldKind.TEXT.value, _l("Text")),
            choice(FieldKind.DATE.value, _l("Date")),
            choice(FieldKind.CHOICE.value, _l("Choice")),
            choice(FieldKind.YES_NO.value, _l("Yes or no")),
        ],
    )
    options = TextAreaField(
        _l("Options (for a choice)"),
        validators=[Optional(), Length(max=10000)],
        description=_l("One option a line, English | German, e.g. None | Keiner."),
        render_kw={"rows": 4},
    )
    required = BooleanField(_l("Required"))
    special = BooleanField(
        _l("Special category of personal data (GDPR Art. 9: health, ethnic origin, religion …)"),
        description=_l("Kept apart, seen by admins only, exported only under pseudonyms."),
    )
    needs_consent = BooleanField(
        _l("Needs the participant's consent"),
        default=True,
        description=_l(
            "Untick only when the programme's contract or a law is the basis (e.g. a customer number)."
        ),
    )


class ConsentTextForm(Form):
    """A new version of a programme's consent text."""

    text = TextAreaField(
        _l("Text (English)"), validators=[Optional(), Length(max=20000)], render_kw={"rows": 6}
    )
    text_de = TextAreaField(
        _l("Text (German)"), validators=[Optional(), Length(max=20000)], render_kw={"rows": 6}
    )
