"""Features: the theater × day panel, built only from evidence known by each day.

A row of evidence becomes *visible* on the day an analyst could have known it
(`reported`, else `date`; for an exercise, the day its schedule was announced).
The covariate of theater c on day t uses only rows visible by t — and, for a
forecast or an as-of fit, by the cut date as well. The same function computes
covariates for past days (fitting, history) and future days (forecasting), so
the two can never disagree about what was known when.

Force level is not computed here: the troop estimates go to stage 1 of the
model (`forecast.model`), which returns the filtered level.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from forecast.schema import SIGN_CATEGORIES, SOURCE_TYPES, Evidence, Theater

STATIC = (
    ["exercise", "overstay", "unit_arrivals"]
    + [f"sign_{c}" for c in SIGN_CATEGORIES]
    + ["claim_unverified", "claim_verified"]
    + ["crisis_age"]
)
FORCE = ["force_level", "force_growth"]
INDICATORS = FORCE + STATIC  # the order of the hazard's beta vector
# What each indicator is called on the page, in reports and in the CLI, and what its value measures.
INDICATOR_LABELS = {
    "force_level": ("Force level", "doublings of the filtered level over the garrison (else its first known level)"),
    "force_growth": ("Force growth", "doublings of the force level within 4 weeks"),
    "exercise": ("Exercise under way", "1 while a scheduled exercise is under way"),
    "overstay": ("Overstay after exercise end", "1 once an exercise's scheduled end passed with no verified withdrawal"),
    "unit_arrivals": ("Unit arrivals (net, distance-weighted)",
                      "signed log(1 + net arrivals since the start, each weighted 1 + km / 1000)"),
    "sign_medical": ("Medical / blood supplies", "log2(1 + report weights over time)"),
    "sign_bridging": ("Bridging equipment", "log2(1 + report weights over time)"),
    "sign_fuel_ammo": ("Fuel / ammunition stocks", "log2(1 + report weights over time)"),
    "sign_reserve_callup": ("Reserve call-up", "log2(1 + report weights over time)"),
    "sign_air_defence": ("Air defence / aircraft forward", "log2(1 + report weights over time)"),
    "sign_evacuation": ("Evacuation / embassy drawdown", "log2(1 + report weights over time)"),
    "sign_ultimatum": ("Ultimatum / recognition", "log2(1 + report weights over time)"),
    "claim_unverified": ("Unverified withdrawal claim", "1 once such a claim is made"),
    "claim_verified": ("Verified withdrawal", "1 once a withdrawal is confirmed by an independent party"),
    "crisis_age": ("Time since the build-up began", "log2(1 + whole weeks since the crisis start)"),
}
FORCE_GROWTH_DAYS = 28
NEVER = np.datetime64("9999-12-31")
SIGN_HALF_LIFE_WEEKS = 12  # a sign not reported again fades to half its weight in twelve weeks


@dataclass(frozen=True)
class Reading:
    """How the record becomes covariates: the candidate readings of issue 18.

    A profile states its reading (`forecast.priors`, the `[reading]` table); nested selection
    (`forecast.selection`) judges the candidates. The default is the engine's original reading.

    kernel -- what a report's weight does over the crisis weeks after it is seen (age a):
        "fading": 1 at once, halving every SIGN_HALF_LIFE_WEEKS;
        "lead":   the category's lead time L weeks (`lead_weeks`, times `lead_scale`): a
                  preparation sign rises to 1 over L weeks and then halves every L weeks, so
                  blood supplies weigh most about a month after they are seen; an imminent sign
                  (L < 1: evacuation, ultimatum) weighs 1 at once and halves every week.
    density -- "sum": every report adds; "weekly": one report (the heaviest) per category and
        crisis week, so a crisis written about more does not read as more signs.
    credibility -- weight of a report by its grade (schema.CREDIBILITY); empty: every report 1.
        Applies to signs and to unit moves. An ungraded row weighs as "single_source".
    indicators -- False: every evidence indicator is 0 (the survival-only baseline: base rate,
        theater effect and the time a crisis has gone without escalation).
    crisis_age -- True: the baseline hazard depends on the time since the build-up began, through
        the `crisis_age` covariate log2(1 + weeks since the start): a likelihood ratio rho per
        doubling makes the hazard in week w (1 + w)^log2(rho) times week 0's, a Weibull-like
        duration term that can rise or fall. False: the covariate is 0 (a flat baseline).
    """

    kernel: str = "fading"
    lead_weeks: tuple[tuple[str, float], ...] = ()
    lead_scale: float = 1.0
    density: str = "sum"
    credibility: tuple[tuple[str, float], ...] = ()
    indicators: bool = True
    crisis_age: bool = False
    rationale: str = field(default="", compare=False)  # the analyst's why, kept with the profile

    def uses(self, indicator: str) -> bool:
        """Whether this reading can make `indicator` non-zero (the page offers priors only for those)."""
        return self.crisis_age if indicator == "crisis_age" else self.indicators

    def lead(self, category: str) -> float:
        return dict(self.lead_weeks).get(category, 0.0) * self.lead_scale

    def weight(self, row: Evidence) -> float:
        """A row's credibility weight (1 without credibility weighting)."""
        if not self.credibility:
            return 1.0
        return dict(self.credibility)[getattr(row, "credibility", None) or "single_source"]

    def decay(self, category: str, age: np.ndarray) -> np.ndarray:
        """A report's weight `age` whole crisis weeks after it was seen (age >= 0)."""
        if self.kernel == "fading":
            return 0.5 ** (age / SIGN_HALF_LIFE_WEEKS)
        lead = self.lead(category)
        if lead < 1:
            return 0.5 ** age
        return np.where(age < lead, (age + 1) / (lead + 1), 0.5 ** ((age - lead) / lead))


READING = Reading()  # the original reading: fading signs, every report counted, no grading
KERNELS, DENSITIES = ("fading", "lead"), ("sum", "weekly")


def label(indicator: str) -> str:
    """The indicator's name for people."""
    return INDICATOR_LABELS[indicator][0]


def unit(indicator: str) -> str:
    """What the indicator's value measures."""
    return INDICATOR_LABELS[indicator][1]


def day(d: dt.date) -> np.datetime64:
    return np.datetime64(d, "D")


def crisis_week(days, origin: np.datetime64):
    """Whole weeks since the crisis start: the clock of the force knots and of fading signs."""
    return (np.asarray(days, dtype="datetime64[D]") - origin).astype(int) // 7


def visible_on(row: Evidence) -> dt.date:
    return row.known_on


@dataclass
class TroopObs:
    """Troop estimates of one theater, for stage 1."""

    date: np.ndarray  # datetime64[D], the day the estimate held
    visible: np.ndarray  # datetime64[D], first day it was known
    log_estimate: np.ndarray
    source_type: np.ndarray  # index into SOURCE_TYPES
    source: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.date)


@dataclass
class TheaterPanel:
    """One theater's at-risk days and what was known on each."""

    theater: Theater
    rows: list[Evidence]  # the visible evidence (after the cut), outcome excluded
    days: np.ndarray  # datetime64[D], first to last at-risk day
    static: np.ndarray  # (days, len(STATIC))
    event: np.ndarray  # (days,) 1 on the escalation day, else 0
    troops: TroopObs
    cut: np.datetime64  # nothing visible after this day was used
    reading: Reading = READING  # how its rows became covariates (and how days ahead are read)

    @property
    def id(self) -> str:
        return self.theater.id

    @property
    def start(self) -> np.datetime64:
        """The crisis start: first at-risk day and origin of the weekly clock."""
        return day(self.theater.start)

    @property
    def log_garrison(self) -> float | None:
        return float(np.log(self.theater.garrison)) if self.theater.garrison else None


def troop_obs(rows: list[Evidence]) -> TroopObs:
    troops = sorted((r for r in rows if r.kind == "troops"), key=lambda r: (r.date, r.source))
    return TroopObs(
        date=np.array([day(r.date) for r in troops], dtype="datetime64[D]"),
        visible=np.array([day(visible_on(r)) for r in troops], dtype="datetime64[D]"),
        log_estimate=np.log([r.estimate for r in troops]),
        source_type=np.array([SOURCE_TYPES.index(r.source_type) for r in troops], dtype=int),
        source=[r.source for r in troops],
    )


def static_covariates(rows: list[Evidence], days: np.ndarray, cut: np.datetime64 = NEVER,
                      origin: np.datetime64 | None = None, reading: Reading = READING) -> np.ndarray:
    """Covariates in STATIC order for each day, from rows visible by min(day, cut), read by `reading`.

    `origin`: the crisis start, which fixes the weekly clock signs fade on
    (default: the first day asked for).
    """
    days = np.asarray(days, dtype="datetime64[D]")
    origin = days[0] if origin is None else np.datetime64(origin, "D")
    known_by = np.minimum(days, cut)
    out = np.zeros((len(days), len(STATIC)))
    col = {name: i for i, name in enumerate(STATIC)}
    if reading.crisis_age:  # not evidence but the clock: it holds under the survival-only reading too
        out[:, col["crisis_age"]] = np.log2(1 + np.maximum(crisis_week(days, origin), 0))
    if not reading.indicators:
        return out

    def seen(row) -> np.ndarray:
        # A row counts from the later of the day it held and the day it became known.
        return (day(visible_on(row)) <= known_by) & (day(row.date) <= days)

    exercises = [r for r in rows if r.kind == "exercise"]
    for r in exercises:
        announced = day(visible_on(r)) <= known_by
        out[:, col["exercise"]] += announced & (day(r.start) <= days) & (days <= day(r.end))
    out[:, col["exercise"]] = np.minimum(out[:, col["exercise"]], 1)
    out[:, col["overstay"]] = _overstay(rows, exercises, days, known_by)

    # Units present: a unit that arrived stays until a departure is recorded, so the signal is
    # the running net of arrivals, each weighted by how far it came (a 5,000 km move is costlier).
    arrivals = np.zeros(len(days))
    for r in (r for r in rows if r.kind == "unit_move"):
        weight = (1 if r.direction == "arrive" else -1) * (1 + (r.distance_km or 0) / 1000) * reading.weight(r)
        arrivals += weight * seen(r)
    out[:, col["unit_arrivals"]] = np.sign(arrivals) * np.log1p(np.abs(arrivals))

    for category in SIGN_CATEGORIES:
        reports = [r for r in rows if r.kind == "sign" and r.category == category]
        out[:, col[f"sign_{category}"]] = _sign_intensity(reports, days, origin, seen, reading, category)

    for r in (r for r in rows if r.kind == "claim"):
        target = col["claim_verified" if r.verified else "claim_unverified"]
        out[:, target] = np.maximum(out[:, target], seen(r))
    return out


def _sign_intensity(reports, days, origin, seen, reading: Reading, category: str) -> np.ndarray:
    """log2(1 + the summed weight of the category's reports seen by each day).

    A report weighs its credibility weight times `reading.decay` of its age: under the
    original reading it weighs 1 in the crisis week it is seen and halves every
    SIGN_HALF_LIFE_WEEKS after, so one fresh report gives 1 (the prior's "once seen"
    likelihood ratio), repeated reports add on a log scale, and a sign nobody has reported
    again for months fades instead of staying on for the rest of a long stand-off. Ages
    count whole crisis weeks so the covariate stays constant within a week, like the
    force level. Under the "weekly" density only the heaviest report of each week counts.
    """
    week = crisis_week(days, origin)
    groups: dict[tuple[int, int], list] = {}  # (week seen, report) -- or (week seen, 0): one group a week
    for i, r in enumerate(reports):
        since = int(crisis_week(max(day(r.date), day(visible_on(r))), origin))
        groups.setdefault((since, 0 if reading.density == "weekly" else i), []).append(r)
    weight = np.zeros(len(days))
    for (since, _), group in groups.items():
        # a group counts its heaviest report seen so far (a group of one: that report)
        heaviest = np.max([seen(r) * reading.weight(r) for r in group], axis=0)
        weight += heaviest * reading.decay(category, np.maximum(week - since, 0))
    return np.log2(1 + weight)


def _overstay(rows, exercises, days, known_by) -> np.ndarray:
    """1 once a scheduled exercise end has passed with no verified withdrawal since."""
    groups: dict[str, list] = {}
    for r in exercises:
        groups.setdefault(r.name.removesuffix(" (extended)").strip(), []).append(r)
    withdrawals = [r for r in rows if r.kind == "claim" and r.verified]
    out = np.zeros(len(days))
    for group in groups.values():
        # The latest scheduled end known by each day (an extension moves it).
        end = np.full(len(days), np.datetime64("NaT"), dtype="datetime64[D]")
        for r in group:
            known = day(visible_on(r)) <= known_by
            end = np.where(known & ((end < day(r.end)) | np.isnat(end)), day(r.end), end)
        passed = ~np.isnat(end) & (end < days)
        for w in withdrawals:
            withdrew = (day(visible_on(w)) <= known_by) & (day(w.date) <= days) & (day(w.date) >= end)
            passed &= ~withdrew
        out = np.maximum(out, passed)
    return out


def build_panel(theater: Theater, evidence: list[Evidence], cut: dt.date | None = None,
                reading: Reading = READING) -> TheaterPanel:
    """The panel of one theater. `cut`: the as-of date; None for a closed case (its outcome ends it).

    The panel keeps its `reading`, so the covariates of days ahead are read the same way."""
    outcome = next((r for r in evidence if r.kind == "outcome"), None)
    cut_day = day(cut) if cut else NEVER
    rows = [r for r in evidence if r.kind != "outcome" and day(visible_on(r)) <= cut_day]
    if cut is not None:
        last, event_day = cut_day, None  # an as-of fit never sees the outcome
    elif outcome is not None:
        last = day(outcome.date)
        event_day = last if outcome.escalated else None
    else:
        raise ValueError(f"theater {theater.id} is open: give an as-of date")
    days = np.arange(day(theater.start), last + 1, dtype="datetime64[D]")
    event = (days == event_day).astype(int) if event_day is not None else np.zeros(len(days), dtype=int)
    return TheaterPanel(theater, rows, days, static_covariates(rows, days, cut_day, day(theater.start), reading),
                        event, troop_obs(rows), cut_day, reading)


def data_hash(panels: list[TheaterPanel]) -> str:
    """Hash of exactly the evidence and labels a fit used."""
    digest = hashlib.sha256()
    for p in sorted(panels, key=lambda p: p.id):
        digest.update(p.theater.model_dump_json().encode())
        # An empty window (an outcome before the start, stored before import refused that) hashes as such.
        digest.update(str(p.days[-1] if len(p.days) else "no-days").encode() + p.event.tobytes())
        for r in sorted(p.rows, key=lambda r: json.dumps(r.key(), default=str)):
            digest.update(r.model_dump_json().encode())
    return digest.hexdigest()[:16]
