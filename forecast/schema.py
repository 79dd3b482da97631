"""Evidence schema: one pydantic model per kind of DESIGN §4.

Every row has a theater, a date, a source. Each kind adds its own fields and
its own natural key: the fields that say *which* fact a row is, so importing
the same fact again updates it instead of duplicating it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

SOURCE_TYPES = ("official", "government", "osint", "media")
SIGN_CATEGORIES = (
    "medical",
    "bridging",
    "fuel_ammo",
    "reserve_callup",
    "air_defence",
    "evacuation",
    "ultimatum",
)
CLAIM_TYPES = ("withdrawal", "de_escalation", "exercise_ending")
# How far a sign or unit move could be believed on the day it became known, graded like the
# Admiralty code's information credibility (data/FORMAT.md): confirmed by an independent party (1),
# one source not confirmed (3), only a party to the conflict says so (4), publicly denied and not
# confirmed (5). Unset: not graded, read as a single source.
CREDIBILITY = ("confirmed", "single_source", "party", "denied")
KINDS = ("troops", "unit_move", "exercise", "sign", "claim", "outcome")

# Every date a row can hold lies in these bounds (issue 21: 0001-01-01 and 9999-12-31 were accepted);
# the window rules of forecast.ingest then check each date against its theater.
FIRST_DAY = dt.date(1900, 1, 1)
LAST_DAY = dt.date(2100, 12, 31)
MAX_PERSONNEL = 50_000_000  # more than any army has ever fielded: a larger figure is a typo or an attack
MAX_DISTANCE_KM = 50_000  # more than once round the Earth
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# Strict types (issue 21 item 3): a number is a JSON number, never a string ("1000"), a bool (true)
# or a non-finite value (Infinity, 1e309, NaN); a bool is true/false, never "yes" or 1; a date is
# the text YYYY-MM-DD, never a number (1738540800). CSV cells are converted before validation
# (forecast.ingest), by the same rules, so a spreadsheet's "5000" and "false" still import.


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {_what(value)}")
    if isinstance(value, int) and abs(value) > 1e300:
        raise ValueError("is not a finite number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_what(value)}")
    return value


def _day(value):
    if isinstance(value, dt.datetime) or not isinstance(value, (str, dt.date)):
        raise ValueError(f"must be a date as text YYYY-MM-DD, not {_what(value)}")
    if isinstance(value, str) and not _ISO_DAY.match(value.strip()):
        raise ValueError(f"must be a date YYYY-MM-DD, not {value.strip()[:40]!r}")
    return value


def _day_in_bounds(value: dt.date) -> dt.date:
    if not FIRST_DAY <= value <= LAST_DAY:
        raise ValueError(f"{value} is outside {FIRST_DAY}..{LAST_DAY}")
    return value


def _text(value):
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {_what(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (a lone surrogate)") from None
    if _CONTROL.search(value):
        raise ValueError("contains a control character")
    return value


def _what(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "null"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


Bool = Annotated[bool, BeforeValidator(_bool)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Personnel = Annotated[Number, Field(gt=0, le=MAX_PERSONNEL)]
Day = Annotated[dt.date, BeforeValidator(_day), AfterValidator(_day_in_bounds)]
Str = Annotated[str, BeforeValidator(_text)]
Slug = Annotated[Str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=80)]
Text = Annotated[Str, Field(min_length=1, max_length=2000)]
Note = Annotated[Str, Field(max_length=20000)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Theater(_Row):
    kind: Literal["theater"] = "theater"
    id: Slug
    name: Text
    actor: Text
    target: Text
    start: Day
    garrison: Personnel | None = None
    garrison_source: Note | None = None
    source: Text
    url: Note | None = None
    notes: Note | None = None
    replay_of: Slug | None = None  # `forecast replay`: the closed case this open copy rehearses (fits leave it out)

    @model_validator(mode="after")
    def _garrison_sourced(self):
        if self.garrison is not None and not self.garrison_source:
            raise ValueError("garrison_source: required when garrison is given")
        return self


class Evidence(_Row):
    """Fields every evidence row shares. Each kind adds its fields and `describe()`: one line saying
    what the row records, which the page, the reports and the CLI all print."""

    theater: Slug
    date: Day
    source: Text
    url: Note | None = None
    reported: Day | None = None
    date_precision: Literal["day", "week", "month"] = "day"
    notes: Note | None = None

    @model_validator(mode="after")
    def _reported_not_before_date(self):
        if self.reported is not None and self.reported < self.date:
            raise ValueError("reported: is before date")
        return self

    def key(self) -> tuple:
        """The natural key: which fact this row is (see each kind)."""
        return (self.kind, self.theater) + tuple(str(getattr(self, f)) for f in self.key_fields)

    key_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def known_on(self) -> dt.date:
        """The first day an analyst could have known this row."""
        return self.reported or self.date

def _count(x: float | None) -> str:
    return "?" if x is None else f"{x:,.0f}"


class Troops(Evidence):
    kind: Literal["troops"]
    estimate: Personnel
    low: Personnel | None = None
    high: Personnel | None = None
    source_type: Literal[SOURCE_TYPES]
    key_fields: ClassVar[tuple[str, ...]] = ("date", "source")

    def describe(self) -> str:
        spread = f" ({_count(self.low or self.estimate)}–{_count(self.high or self.estimate)})" \
            if self.low or self.high else ""
        return f"{_count(self.estimate)} troops{spread} [{self.source_type}]"

    @model_validator(mode="after")
    def _ordered(self):
        if self.low is not None and self.low > self.estimate:
            raise ValueError("low: is above estimate")
        if self.high is not None and self.high < self.estimate:
            raise ValueError("high: is below estimate")
        return self


class UnitMove(Evidence):
    kind: Literal["unit_move"]
    unit: Text
    direction: Literal["arrive", "depart"]
    home_district: Note | None = None
    distance_km: Annotated[Number, Field(ge=0, le=MAX_DISTANCE_KM)] | None = None
    credibility: Literal[CREDIBILITY] | None = None
    key_fields: ClassVar[tuple[str, ...]] = ("date", "unit", "direction")

    def describe(self) -> str:
        verb = "arrives" if self.direction == "arrive" else "departs"
        home = f" from {self.home_district}" if self.home_district and self.direction == "arrive" else ""
        far = f" ({_count(self.distance_km)} km)" if self.distance_km is not None else ""
        return f"{self.unit} {verb}{home}{far}"


class Exercise(Evidence):
    kind: Literal["exercise"]
    name: Text
    start: Day
    end: Day
    announced_by: Note | None = None
    key_fields: ClassVar[tuple[str, ...]] = ("name",)

    def describe(self) -> str:
        by = f", announced by {self.announced_by}" if self.announced_by else ""
        return f"Exercise {self.name}: {self.start} to {self.end}{by}"

    @model_validator(mode="after")
    def _end_after_start(self):
        if self.end < self.start:
            raise ValueError("end: is before start")
        return self


class Sign(Evidence):
    kind: Literal["sign"]
    category: Literal[SIGN_CATEGORIES]
    description: Text
    credibility: Literal[CREDIBILITY] | None = None
    key_fields: ClassVar[tuple[str, ...]] = ("date", "category", "description")

    def describe(self) -> str:
        return f"{self.category.replace('_', ' ')}: {self.description}"


class Claim(Evidence):
    kind: Literal["claim"]
    claim_type: Literal[CLAIM_TYPES]
    verified: Bool
    verified_by: Note | None = None
    key_fields: ClassVar[tuple[str, ...]] = ("date", "claim_type", "source")

    def describe(self) -> str:
        status = "verified" if self.verified else "unverified"
        by = f" ({'confirmed' if self.verified else 'disputed'} by {self.verified_by})" if self.verified_by else ""
        return f"{self.claim_type.replace('_', ' ')} claim, {status}{by}"


class Outcome(Evidence):
    kind: Literal["outcome"]
    escalated: Bool
    key_fields: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> str:
        return "Escalation" if self.escalated else "Crisis ended without escalation"


EvidenceRow = Annotated[
    Union[Troops, UnitMove, Exercise, Sign, Claim, Outcome], Field(discriminator="kind")
]
EVIDENCE_ADAPTER: TypeAdapter = TypeAdapter(EvidenceRow)
MODEL_BY_KIND: dict[str, type[Evidence]] = {
    "troops": Troops,
    "unit_move": UnitMove,
    "exercise": Exercise,
    "sign": Sign,
    "claim": Claim,
    "outcome": Outcome,
}


def kind_fields(kind: str) -> list[str]:
    """The fields a kind adds to the common ones, in declaration order."""
    common = set(Evidence.model_fields)
    return [f for f in MODEL_BY_KIND[kind].model_fields if f not in common and f != "kind"]

