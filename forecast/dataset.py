"""The training set of one fit: the reference class plus the target theater cut at its as-of date.

Every closed case (with an outcome) enters with its full crisis window, except
the target and any held-out cases (backtests leave a case out). The target
enters with its at-risk days up to `as_of` as "no escalation yet", built only
from evidence visible by `as_of`: it never sees its own outcome.
"""

from __future__ import annotations

import datetime as dt

from forecast import store
from forecast.features import READING, Reading, TheaterPanel, build_panel
from forecast.schema import Evidence, Theater


class DatasetError(ValueError):
    """A fit that cannot be set up (unknown theater, as-of outside the crisis...)."""


def latest_evidence_date(evidence: list[Evidence]) -> dt.date:
    return max(r.known_on for r in evidence if r.kind != "outcome")


def default_as_of(theater: Theater, evidence: list[Evidence]) -> dt.date:
    """The latest evidence date; for a closed case, the day before its outcome at the latest."""
    outcome = next((r for r in evidence if r.kind == "outcome"), None)
    latest = latest_evidence_date(evidence) if any(r.kind != "outcome" for r in evidence) else theater.start
    if outcome is not None:
        latest = min(latest, outcome.date - dt.timedelta(days=1))
    return max(latest, theater.start)


def check_as_of(theater: Theater, evidence: list[Evidence], as_of: dt.date) -> None:
    if as_of < theater.start:
        raise DatasetError(f"--as-of {as_of}: before the crisis window of {theater.id} starts ({theater.start})")
    outcome = next((r for r in evidence if r.kind == "outcome"), None)
    if outcome is not None and as_of >= outcome.date:
        what = "escalated" if outcome.escalated else "ended"
        raise DatasetError(f"--as-of {as_of}: {theater.id} {what} on {outcome.date}; "
                           f"an as-of date must fall before it")


def assemble(theaters: list[Theater], evidence: list[Evidence], target: str, as_of: dt.date | None,
             held_out: frozenset[str] = frozenset(), reading: Reading = READING) -> tuple[list[TheaterPanel], dt.date]:
    """Panels for a fit of `target` as of `as_of` (default: its latest evidence), read by the profile's
    `reading`; target panel last."""
    by_theater: dict[str, list[Evidence]] = {t.id: [] for t in theaters}
    for row in evidence:
        by_theater[row.theater].append(row)
    known = {t.id: t for t in theaters}
    if target not in known:
        raise DatasetError(f"unknown theater {target!r}; see `forecast theaters`")
    own = by_theater[target]
    as_of = as_of or default_as_of(known[target], own)
    check_as_of(known[target], own, as_of)
    # A replay rehearses a closed case: that case (its outcome above all) must not teach its own copy.
    held_out = held_out | {known[target].replay_of} - {None}
    panels = [build_panel(t, by_theater[t.id], reading=reading) for t in theaters
              if t.id != target and t.id not in held_out and _closed(by_theater[t.id])]
    panels.append(build_panel(known[target], own, cut=as_of, reading=reading))
    return panels, as_of


def _closed(rows: list[Evidence]) -> bool:
    return any(r.kind == "outcome" for r in rows)


def from_store(eng, target: str, as_of: dt.date | None, held_out: frozenset[str] = frozenset(),
               reading: Reading = READING):
    return assemble(store.load_theaters(eng), store.load_evidence(eng), target, as_of, held_out, reading)
