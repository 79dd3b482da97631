"""The crisis window: which dates an evidence row may carry, given its theater's start and outcome.

Checked at import (`forecast.ingest`) for every row, against the theater declared in the batch or
already stored; data/README.md "Evidence outside the window" lists the bundled exceptions.
"""

from __future__ import annotations

import datetime as dt

from forecast.schema import Evidence, Theater

EXERCISE_LEAD_DAYS = 366  # an exercise schedule may be announced (and start) up to a year before the crisis start
EXERCISE_MAX_DAYS = 366  # no scheduled exercise lasts longer
HELD_BEFORE_START_DAYS = 366  # a fact may have held up to a year before the start if first reported in the window
TROOPS_AFTER_OUTCOME_DAYS = 31  # troop rows may follow the outcome for the level series (2021-spring: 10 days)
FUTURE_SLACK_DAYS = 1  # a fact cannot have held (or been reported) after tomorrow


def window_problems(row: Evidence, theater: Theater, outcome: Evidence | None,
                    today: dt.date | None = None) -> list[tuple[str, str]]:
    """(field, reason) for every window rule a row breaks; `outcome`: the theater's outcome, if any.

    - no date or reported day after tomorrow (a fact cannot have held in the future);
    - nothing known before the crisis start (the first public report of the build-up): a
      row dated earlier must be `reported` on or after the start, at most
      HELD_BEFORE_START_DAYS after it held (eritrea-djibouti-2008's incursion of 16 Apr,
      reported on the start day); an exercise's schedule may instead be announced (and the
      exercise start) up to EXERCISE_LEAD_DAYS earlier (russia-ukraine-2022's Zapad-2021
      row); an exercise lasts at most EXERCISE_MAX_DAYS;
    - the outcome is not before the start;
    - nothing after the outcome, except troop rows up to TROOPS_AFTER_OUTCOME_DAYS later
      (russia-ukraine-2021-spring keeps two for its level series).
    """
    today = today or dt.date.today()
    latest = today + dt.timedelta(days=FUTURE_SLACK_DAYS)
    start, out = theater.start, []
    for name in ("date", "reported"):
        value = getattr(row, name)
        if value is not None and value > latest:
            out.append((name, f"{value} is in the future (today is {today})"))
    if row.kind == "outcome":
        if row.date < start:
            out.append(("date", f"the outcome ({row.date}) is before {theater.id} starts ({start})"))
        return out
    if row.kind == "exercise":
        earliest = start - dt.timedelta(days=EXERCISE_LEAD_DAYS)
        for name in ("date", "start"):
            if getattr(row, name) < earliest:
                out.append((name, f"{getattr(row, name)} is more than {EXERCISE_LEAD_DAYS} days before "
                                  f"{theater.id} starts ({start})"))
        if (row.end - row.start).days > EXERCISE_MAX_DAYS:
            out.append(("end", f"the exercise would last {(row.end - row.start).days} days "
                               f"(more than {EXERCISE_MAX_DAYS})"))
    elif row.date < start:
        if row.reported is None or row.reported < start:
            out.append(("date", f"{row.date} is before {theater.id} starts ({start}) and was not reported after "
                                "it: only a fact first reported in the window (set `reported`) or an exercise "
                                "schedule may be dated earlier"))
        elif (start - row.date).days > HELD_BEFORE_START_DAYS:
            out.append(("date", f"{row.date} is more than {HELD_BEFORE_START_DAYS} days before {theater.id} "
                                f"starts ({start})"))
    if outcome is not None and outcome.date >= start:
        end = outcome.date
        if row.kind == "troops":
            if (row.date - end).days > TROOPS_AFTER_OUTCOME_DAYS:
                out.append(("date", f"{row.date} is more than {TROOPS_AFTER_OUTCOME_DAYS} days after the "
                                    f"outcome of {theater.id} ({end})"))
        elif row.date > end:
            out.append(("date", f"{row.date} is after the outcome of {theater.id} ({end}); only troop rows "
                                f"may follow it (up to {TROOPS_AFTER_OUTCOME_DAYS} days)"))
    return out
