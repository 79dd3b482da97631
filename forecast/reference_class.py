"""The closed cases a backtest scores: each case's as-of grid, what happened after each date, climatology.

A case is a closed theater (one with an outcome row). Its as-of dates run weekly
from the crisis start, every date strictly before the outcome. Outcome at horizon
H from as-of d: 1 if the case escalated on a day <= d + H, else 0; a case that
ended without escalation counts as 0 at every horizon, even when d + H runs past
the end of its crisis (we treat the end as final).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from forecast.features import READING, Reading, TheaterPanel, build_panel
from forecast.schema import Evidence, Theater

STEP_DAYS = 7


@dataclass
class Case:
    theater: Theater
    rows: list[Evidence]  # evidence without the outcome
    outcome: Evidence

    @property
    def id(self) -> str:
        return self.theater.id

    @property
    def escalated(self) -> bool:
        return bool(self.outcome.escalated)

    @property
    def end(self) -> dt.date:
        """Escalation date, or the day the crisis ended without escalation."""
        return self.outcome.date

    def as_of_dates(self) -> list[dt.date]:
        """Weekly from the crisis start, every date strictly before the outcome."""
        days = (self.end - self.theater.start).days
        return [self.theater.start + dt.timedelta(days=k) for k in range(0, max(days, 0), STEP_DAYS)]

    def observed(self, as_of: dt.date, horizon: int) -> int:
        """1 if escalation came within `horizon` days after `as_of`; a non-escalated case is 0."""
        return int(self.escalated and self.end <= as_of + dt.timedelta(days=horizon))

    def full_panel(self, reading: Reading = READING) -> TheaterPanel:
        return build_panel(self.theater, self.rows + [self.outcome], reading=reading)


def load_cases(theaters: list[Theater], evidence: list[Evidence]) -> dict[str, Case]:
    """Every closed case (with an outcome), by id, in theater order."""
    rows: dict[str, list[Evidence]] = {t.id: [] for t in theaters}
    outcomes: dict[str, Evidence] = {}
    for r in evidence:
        if r.kind == "outcome":
            outcomes[r.theater] = r
        else:
            rows[r.theater].append(r)
    return {t.id: Case(t, rows[t.id], outcomes[t.id]) for t in theaters if t.id in outcomes}


def climatology(cases: dict[str, Case], held_out: str, horizon: int) -> float:
    """Base rate of the outcome at `horizon` over the as-of points of every other closed case."""
    ys = [c.observed(d, horizon) for cid, c in cases.items() if cid != held_out for d in c.as_of_dates()]
    return float(np.mean(ys)) if ys else float("nan")
