"""Evidence schema: one pydantic model per kind of DESIGN §4.

Every row has a theater, a date, a source. Each kind adds its own fields and
its own natural key: the fields that say *which* fact a row is, so importing
the same fact again updates it instead of duplicating it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

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
KINDS = ("troops", "unit_move", "exercise", "sign", "claim", "outcome")

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=80)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Theater(_Row):
    kind: Literal["theater"] = "theater"
    id: Slug
    name: Text
    actor: Text
    target: Text
    start: dt.date
    garrison: float | None = Field(default=None, gt=0)
    garrison_source: str | None = None
    source: Text
    url: str | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _garrison_sourced(self):
        if self.garrison is not None and not self.garrison_source:
            raise ValueError("garrison_source: required when garrison is given")
        return self


class Evidence(_Row):
    """Fields every evidence row shares. Each kind adds its fields and `describe()`: one line saying
    what the row records, which the page, the reports and the CLI all print."""

    theater: Slug
    date: dt.date
    source: Text
    url: str | None = None
    reported: dt.date | None = None
    date_precision: Literal["day", "week", "month"] = "day"
    notes: str | None = None

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
    estimate: float = Field(gt=0)
    low: float | None = Field(default=None, gt=0)
    high: float | None = Field(default=None, gt=0)
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
    home_district: str | None = None
    distance_km: float | None = Field(default=None, ge=0)
    key_fields: ClassVar[tuple[str, ...]] = ("date", "unit", "direction")

    def describe(self) -> str:
        verb = "arrives" if self.direction == "arrive" else "departs"
        home = f" from {self.home_district}" if self.home_district and self.direction == "arrive" else ""
        far = f" ({_count(self.distance_km)} km)" if self.distance_km is not None else ""
        return f"{self.unit} {verb}{home}{far}"


class Exercise(Evidence):
    kind: Literal["exercise"]
    name: Text
    start: dt.date
    end: dt.date
    announced_by: str | None = None
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
    key_fields: ClassVar[tuple[str, ...]] = ("date", "category", "description")

    def describe(self) -> str:
        return f"{self.category.replace('_', ' ')}: {self.description}"


class Claim(Evidence):
    kind: Literal["claim"]
    claim_type: Literal[CLAIM_TYPES]
    verified: bool
    verified_by: str | None = None
    key_fields: ClassVar[tuple[str, ...]] = ("date", "claim_type", "source")

    def describe(self) -> str:
        status = "verified" if self.verified else "unverified"
        by = f" ({'confirmed' if self.verified else 'disputed'} by {self.verified_by})" if self.verified_by else ""
        return f"{self.claim_type.replace('_', ' ')} claim, {status}{by}"


class Outcome(Evidence):
    kind: Literal["outcome"]
    escalated: bool
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

