"""Features as of a date (forecast.features, forecast.dataset): what each covariate means, and no leakage.

Covariates are built from rows visible by min(day, cut): scheduled exercises
are known ahead, so exercise and overstay switch on by the calendar on future
days; everything else is known from the day it was seen. A fit as of a date
never sees later evidence nor the target's outcome.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from forecast import dataset, store
from forecast.features import (
    INDICATORS,
    READING,
    SIGN_HALF_LIFE_WEEKS,
    STATIC,
    Reading,
    build_panel,
    data_hash,
    static_covariates,
)
from forecast.schema import CREDIBILITY, MODEL_BY_KIND, Theater

D = dt.date
COL = {name: i for i, name in enumerate(STATIC)}
START = D(2024, 1, 1)
FLAGSHIP = "russia-ukraine-2022"


def _theater(**over) -> Theater:
    return Theater(**{**dict(id="testland-2024", name="Testland", actor="A", target="B", start=START,
                             source="test"), **over})


def _row(kind: str, date: D, **fields):
    return MODEL_BY_KIND[kind].model_validate({"kind": kind, "theater": "testland-2024", "date": date,
                                               "source": fields.pop("source", f"test {kind}"), **fields})


def _exercise(announced: D, start: D, end: D, name: str = "Winter Shield", **over):
    return _row("exercise", announced, name=name, start=start, end=end, **over)


def _claim(date: D, verified: bool, **over):
    return _row("claim", date, claim_type="withdrawal", verified=verified, source=f"claim {verified} {date}", **over)


def _days(first: D, last: D) -> np.ndarray:
    return np.arange(np.datetime64(first, "D"), np.datetime64(last, "D") + 1)


def _on(days: np.ndarray, values: np.ndarray) -> list[str]:
    """The days on which a 0/1 covariate is on, as ISO strings."""
    return [str(d) for d in days[values.astype(bool)]]


def _span(first: D, last: D) -> list[str]:
    return [str(d) for d in _days(first, last)]


# --- exercise and overstay -------------------------------------------------------------


def test_scheduled_exercise_and_overstay_switch_on_by_calendar_on_future_days():
    """As of 10 Jan an exercise announced for 20 Jan–1 Feb is on by the calendar, and overstay follows its end."""
    rows = [_exercise(D(2024, 1, 5), D(2024, 1, 20), D(2024, 2, 1))]
    panel = build_panel(_theater(), rows, cut=D(2024, 1, 10))
    future = panel.cut + np.arange(1, 61)
    x = static_covariates(panel.rows, future, panel.cut)
    assert _on(future, x[:, COL["exercise"]]) == _span(D(2024, 1, 20), D(2024, 2, 1))
    assert _on(future, x[:, COL["overstay"]]) == _span(D(2024, 2, 2), D(2024, 3, 10))
    assert not x[:, [COL[c] for c in STATIC if c not in ("exercise", "overstay")]].any()
    # The panel's own days (up to the cut) are before the exercise: nothing on yet.
    assert not panel.static.any()


def test_exercise_announced_after_the_cut_is_not_known():
    rows = [_exercise(D(2024, 1, 15), D(2024, 1, 20), D(2024, 2, 1))]
    panel = build_panel(_theater(), rows, cut=D(2024, 1, 10))
    assert panel.rows == []
    future = panel.cut + np.arange(1, 61)
    assert not static_covariates(panel.rows, future, panel.cut).any()
    # Without the cut (a closed case) the same exercise counts once announced.
    known = static_covariates(rows, future)
    assert _on(future, known[:, COL["exercise"]]) == _span(D(2024, 1, 20), D(2024, 2, 1))


def test_extension_moves_the_scheduled_end_once_announced():
    rows = [_exercise(D(2024, 1, 5), D(2024, 1, 20), D(2024, 2, 1)),
            _exercise(D(2024, 1, 30), D(2024, 1, 20), D(2024, 2, 10), name="Winter Shield (extended)")]
    days = _days(D(2024, 1, 1), D(2024, 2, 20))
    x = static_covariates(rows, days)
    assert _on(days, x[:, COL["overstay"]]) == _span(D(2024, 2, 11), D(2024, 2, 20))
    # Known only by an as-of date before the extension: overstay starts after the original end.
    early = build_panel(_theater(), rows, cut=D(2024, 1, 25))
    future = early.cut + np.arange(1, 27)
    xf = static_covariates(early.rows, future, early.cut)
    assert _on(future, xf[:, COL["overstay"]]) == _span(D(2024, 2, 2), D(2024, 2, 20))


def test_verified_withdrawal_ends_overstay_unverified_does_not():
    exercise = _exercise(D(2024, 1, 5), D(2024, 1, 20), D(2024, 2, 1))
    days = _days(D(2024, 1, 1), D(2024, 2, 29))
    verified = static_covariates([exercise, _claim(D(2024, 2, 10), True)], days)
    assert _on(days, verified[:, COL["overstay"]]) == _span(D(2024, 2, 2), D(2024, 2, 9))
    assert _on(days, verified[:, COL["claim_verified"]]) == _span(D(2024, 2, 10), D(2024, 2, 29))

    unverified = static_covariates([exercise, _claim(D(2024, 2, 10), False)], days)
    assert _on(days, unverified[:, COL["overstay"]]) == _span(D(2024, 2, 2), D(2024, 2, 29))
    assert _on(days, unverified[:, COL["claim_unverified"]]) == _span(D(2024, 2, 10), D(2024, 2, 29))

    # A verified withdrawal *before* the scheduled end is not a withdrawal after it.
    before = static_covariates([exercise, _claim(D(2024, 1, 25), True)], days)
    assert _on(days, before[:, COL["overstay"]]) == _span(D(2024, 2, 2), D(2024, 2, 29))


def test_verified_withdrawal_reported_after_the_cut_does_not_end_overstay_in_the_forecast():
    rows = [_exercise(D(2024, 1, 5), D(2024, 1, 20), D(2024, 2, 1)),
            _claim(D(2024, 2, 10), True)]
    panel = build_panel(_theater(), rows, cut=D(2024, 2, 5))
    future = panel.cut + np.arange(1, 20)
    x = static_covariates(panel.rows, future, panel.cut)
    assert x[:, COL["overstay"]].all() and not x[:, COL["claim_verified"]].any()


# --- unit arrivals ---------------------------------------------------------------------


def _move(date: D, direction: str, km: float | None, unit: str):
    return _row("unit_move", date, unit=unit, direction=direction, distance_km=km)


def test_unit_arrivals_are_distance_weighted_and_signed():
    days = _days(D(2024, 1, 1), D(2024, 1, 31))
    far = static_covariates([_move(D(2024, 1, 10), "arrive", 4000, "far")], days)[:, COL["unit_arrivals"]]
    near = static_covariates([_move(D(2024, 1, 10), "arrive", 0, "near")], days)[:, COL["unit_arrivals"]]
    unknown = static_covariates([_move(D(2024, 1, 10), "arrive", None, "?")], days)[:, COL["unit_arrivals"]]
    gone = static_covariates([_move(D(2024, 1, 10), "depart", 4000, "far")], days)[:, COL["unit_arrivals"]]
    before, after = days < np.datetime64("2024-01-10"), days >= np.datetime64("2024-01-10")
    assert not far[before].any() and not gone[before].any()
    # weight 1 + km/1000, on a signed log scale
    assert np.allclose(far[after], np.log1p(5.0)) and np.allclose(near[after], np.log1p(1.0))
    assert np.allclose(unknown[after], near[after])
    assert np.allclose(gone[after], -np.log1p(5.0))
    assert far[after][0] > near[after][0] > 0 > gone[after][0]


def test_unit_arrivals_are_net_of_departures():
    days = _days(D(2024, 1, 1), D(2024, 1, 31))
    rows = [_move(D(2024, 1, 5), "arrive", 3000, "a"), _move(D(2024, 1, 8), "arrive", 1000, "b"),
            _move(D(2024, 1, 12), "depart", 3000, "a")]
    x = static_covariates(rows, days)[:, COL["unit_arrivals"]]
    at = {str(d): v for d, v in zip(days, x)}
    assert at["2024-01-06"] == pytest.approx(np.log1p(4.0))
    assert at["2024-01-09"] == pytest.approx(np.log1p(6.0))
    assert at["2024-01-12"] == pytest.approx(np.log1p(2.0))  # 4 + 2 - 4


def test_unit_move_counts_from_the_day_it_became_known():
    rows = [_move(D(2024, 1, 5), "arrive", 1000, "late news").model_copy(update={"reported": D(2024, 1, 9)})]
    days = _days(D(2024, 1, 1), D(2024, 1, 15))
    x = static_covariates(rows, days)[:, COL["unit_arrivals"]]
    assert _on(days, x != 0) == _span(D(2024, 1, 9), D(2024, 1, 15))


# --- signs and claims ------------------------------------------------------------------


def test_signs_count_from_first_seen_add_up_and_fade_by_crisis_week():
    rows = [_row("sign", D(2024, 1, 12), category="medical", description="field hospital"),
            _row("sign", D(2024, 1, 20), category="medical", description="blood supplies"),
            _row("sign", D(2024, 1, 14), category="bridging", description="pontoons", reported=D(2024, 1, 18))]
    panel = build_panel(_theater(), rows, cut=D(2024, 1, 25))
    medical, bridging = panel.static[:, COL["sign_medical"]], panel.static[:, COL["sign_bridging"]]
    assert _on(panel.days, medical) == _span(D(2024, 1, 12), D(2024, 1, 25))
    assert _on(panel.days, bridging) == _span(D(2024, 1, 18), D(2024, 1, 25))  # from the day it was reported
    # One fresh report weighs 1 (the prior's "once seen" ratio) for the rest of its crisis week.
    week = (panel.days - np.datetime64(START, "D")).astype(int) // 7
    assert np.allclose(medical[(panel.days >= np.datetime64("2024-01-12")) & (week == 1)], 1.0)  # Jan 12-14
    # A second report adds on the log2 scale: 1 + the first report's faded weight.
    faded = 0.5 ** (1 / SIGN_HALF_LIFE_WEEKS)
    assert medical[panel.days == np.datetime64("2024-01-20")][0] == pytest.approx(np.log2(1 + 1 + faded))
    assert len(np.unique(medical[week == week[-1]])) == 1  # constant within a crisis week
    # Into the forecast signs stay on but fade: half the weight after SIGN_HALF_LIFE_WEEKS more weeks.
    future = panel.cut + np.arange(0, 7 * SIGN_HALF_LIFE_WEEKS + 1)  # the cut falls on a Thursday of week 3
    x = static_covariates(panel.rows, future, panel.cut, np.datetime64(START, "D"))
    assert (x[:, COL["sign_medical"]] > 0).all() and (x[:, COL["sign_bridging"]] > 0).all()
    assert (np.diff(x[:, COL["sign_medical"]]) <= 0).all()
    weight = 2 ** x[:, COL["sign_medical"]] - 1  # the summed report weights behind the log2
    assert weight[-1] == pytest.approx(weight[0] / 2)
    assert not x[:, [COL[f"sign_{c}"] for c in ("fuel_ammo", "evacuation", "ultimatum")]].any()


def test_indicator_order_is_force_then_static():
    assert INDICATORS[:2] == ["force_level", "force_growth"] and INDICATORS[2:] == STATIC


# --- panels and labels -----------------------------------------------------------------


def test_closed_case_panel_ends_at_its_outcome():
    rows = [_row("sign", D(2024, 1, 3), category="medical", description="x"),
            _row("outcome", D(2024, 1, 20), escalated=True)]
    panel = build_panel(_theater(), rows)
    assert str(panel.days[0]) == "2024-01-01" and str(panel.days[-1]) == "2024-01-20"
    assert panel.event.tolist() == [0] * 19 + [1]
    assert all(r.kind != "outcome" for r in panel.rows)

    censored = build_panel(_theater(), rows[:1] + [_row("outcome", D(2024, 1, 20), escalated=False)])
    assert len(censored.days) == 20 and not censored.event.any()


def test_open_theater_needs_an_as_of_date():
    with pytest.raises(ValueError, match="open"):
        build_panel(_theater(), [_row("sign", D(2024, 1, 3), category="medical", description="x")])


# --- no leakage, on the bundled data ---------------------------------------------------


def _bundled(url):
    eng = store.engine(url)
    try:
        return store.load_theaters(eng), store.load_evidence(eng)
    finally:
        eng.dispose()


def _future_rows(theater: str, as_of: D) -> list:
    """Evidence a fit as of `as_of` must not see: dated after it, or dated before but reported after."""
    def row(kind, date, **fields):
        return MODEL_BY_KIND[kind].model_validate({"kind": kind, "theater": theater, "date": date,
                                                   "source": fields.pop("source", "leakage test"), **fields})

    later = as_of + dt.timedelta(days=2)
    return [
        row("troops", later, estimate=500_000, source_type="media", source="leak: future estimate"),
        row("troops", as_of - dt.timedelta(days=3), reported=later, estimate=400_000, source_type="osint",
            source="leak: estimate reported late"),
        row("sign", later, category="ultimatum", description="leak: future ultimatum"),
        row("sign", as_of - dt.timedelta(days=5), reported=later, category="evacuation",
            description="leak: evacuation reported late"),
        row("unit_move", later, unit="leak: future unit", direction="arrive", distance_km=5000),
        row("claim", later, claim_type="withdrawal", verified=True, source="leak: future withdrawal"),
        row("exercise", later, name="leak: exercise announced later", start=as_of - dt.timedelta(days=10),
            end=as_of + dt.timedelta(days=20)),
    ]


def _panel_state(panel) -> dict:
    return {"days": panel.days.tolist(), "static": panel.static.tolist(), "event": panel.event.tolist(),
            "troops": (panel.troops.date.tolist(), panel.troops.visible.tolist(),
                       panel.troops.log_estimate.tolist(), panel.troops.source_type.tolist()),
            "rows": sorted(r.model_dump_json() for r in panel.rows), "cut": str(panel.cut)}


def test_panels_as_of_a_date_ignore_later_evidence_and_the_outcome(initialised_store):
    """The flagship as of 2022-02-01, with and without everything that came after (its outcome included)."""
    as_of = D(2022, 2, 1)
    theaters, evidence = _bundled(initialised_store)
    known_then = [r for r in evidence
                  if r.theater != FLAGSHIP or (r.kind != "outcome" and r.known_on <= as_of)]
    dropped = [r for r in evidence if r not in known_then]
    assert any(r.kind == "outcome" for r in dropped) and any(r.kind == "troops" for r in dropped)

    eng = store.engine(initialised_store)
    try:
        store.write(eng, [], _future_rows(FLAGSHIP, as_of), origin="leakage test")
        with_future, as_of_b = dataset.from_store(eng, FLAGSHIP, as_of)
    finally:
        eng.dispose()
    without, as_of_a = dataset.assemble(theaters, known_then, FLAGSHIP, as_of)

    assert as_of_a == as_of_b == as_of
    assert [p.id for p in with_future] == [p.id for p in without]
    for a, b in zip(without, with_future):
        assert _panel_state(a) == _panel_state(b), a.id
    assert data_hash(without) == data_hash(with_future)

    target = with_future[-1]
    assert target.id == FLAGSHIP and str(target.days[-1]) == str(as_of) and not target.event.any()
    assert all(r.known_on <= as_of and r.kind != "outcome" for r in target.rows)
    assert not any(r.source.startswith("leak") or getattr(r, "description", "").startswith("leak")
                   or getattr(r, "unit", "").startswith("leak") or getattr(r, "name", "").startswith("leak")
                   for r in target.rows)


def test_data_hash_sees_evidence_known_by_the_cut(initialised_store):
    """The converse: evidence visible by the as-of date does change the hash (the hash is not blind)."""
    as_of = D(2022, 2, 1)
    theaters, evidence = _bundled(initialised_store)
    before, _ = dataset.assemble(theaters, evidence, FLAGSHIP, as_of)
    extra = MODEL_BY_KIND["sign"].model_validate({"kind": "sign", "theater": FLAGSHIP, "date": as_of,
                                                  "category": "medical", "description": "seen on the day",
                                                  "source": "test"})
    after, _ = dataset.assemble(theaters, evidence + [extra], FLAGSHIP, as_of)
    assert data_hash(before) != data_hash(after)
    assert after[-1].static[-1, COL["sign_medical"]] > before[-1].static[-1, COL["sign_medical"]]


@pytest.mark.parametrize("target, as_of", [("russia-ukraine-2022", D(2022, 1, 15)),
                                           ("georgia-2008", D(2008, 7, 1)),
                                           ("russia-ukraine-2021-spring", D(2021, 4, 20))])
def test_known_outcome_refitted_as_of_an_earlier_date_is_never_seen(initialised_store, target, as_of):
    theaters, evidence = _bundled(initialised_store)
    outcome = next(r for r in evidence if r.theater == target and r.kind == "outcome")
    assert outcome.date > as_of
    panels, _ = dataset.assemble(theaters, evidence, target, as_of)
    own = [p for p in panels if p.id == target]
    assert len(own) == 1 and own[0] is panels[-1]  # not also in the reference class
    panel = own[0]
    assert not panel.event.any()
    assert str(panel.days[-1]) == str(as_of) and str(panel.cut) == str(as_of)
    assert outcome not in panel.rows and all(r.kind != "outcome" for r in panel.rows)
    assert all(r.known_on <= as_of for r in panel.rows)
    assert all(d <= np.datetime64(as_of) for d in panel.troops.visible)
    # The same fit with the outcome removed from the store gives the same panels.
    without, _ = dataset.assemble(theaters, [r for r in evidence if r is not outcome], target, as_of)
    assert data_hash(panels) == data_hash(without)


def test_backtest_leaves_the_held_out_case_out(initialised_store):
    theaters, evidence = _bundled(initialised_store)
    panels, _ = dataset.assemble(theaters, evidence, FLAGSHIP, D(2022, 2, 15), held_out=frozenset({"georgia-2008"}))
    assert "georgia-2008" not in [p.id for p in panels]
    full, _ = dataset.assemble(theaters, evidence, FLAGSHIP, D(2022, 2, 15))
    assert "georgia-2008" in [p.id for p in full]


def test_as_of_on_or_after_the_outcome_is_refused(initialised_store):
    theaters, evidence = _bundled(initialised_store)
    with pytest.raises(dataset.DatasetError, match="escalated on 2022-02-24"):
        dataset.assemble(theaters, evidence, FLAGSHIP, D(2022, 2, 24))


# --- readings (issue 18): lead-time kernels, credibility, weekly density, survival-only ---------

LEAD = Reading(kernel="lead", lead_weeks=(("medical", 4.0), ("evacuation", 0.0)))


LAST = D(2024, 4, 30)


def _weights(rows, reading, category="medical") -> np.ndarray:
    """The summed report weights behind a sign covariate, per day from START to LAST."""
    x = static_covariates(rows, _days(START, LAST), origin=np.datetime64(START, "D"), reading=reading)
    return 2 ** x[:, COL[f"sign_{category}"]] - 1


def test_a_preparation_sign_peaks_after_its_lead_time_and_an_imminent_one_at_once():
    weekly = _weights([_row("sign", START, category="medical", description="blood")], LEAD)[::7]
    assert weekly[:6] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0, 0.5 ** (1 / 4)])  # rises over 4 weeks
    assert weekly[8] == pytest.approx(0.5)  # then halves every 4 weeks
    imminent = _weights([_row("sign", START, category="evacuation", description="embassy")], LEAD, "evacuation")[::7]
    assert imminent[:3] == pytest.approx([1.0, 0.5, 0.25])
    # The scale stretches every lead: the same report peaks at week 8 with lead_scale 2.
    longer = _weights([_row("sign", START, category="medical", description="blood")],
                      dataclasses.replace(LEAD, lead_scale=2.0))[::7]
    assert int(np.argmax(longer)) == 8
    # The original reading: 1 at once, halving every SIGN_HALF_LIFE_WEEKS.
    fading = _weights([_row("sign", START, category="medical", description="blood")], READING)[::7]
    assert fading[0] == 1 and fading[SIGN_HALF_LIFE_WEEKS] == pytest.approx(0.5)


def test_credibility_weights_a_report_and_an_ungraded_row_reads_as_a_single_source():
    graded = Reading(credibility=(("confirmed", 1.0), ("single_source", 0.6), ("party", 0.4), ("denied", 0.2)))
    day_one = {}
    for grade in (*CREDIBILITY, None):
        extra = {"credibility": grade} if grade else {}
        row = _row("sign", START, category="medical", description="blood", **extra)
        day_one[grade] = _weights([row], graded)[0]
        assert _weights([row], READING)[0] == 1.0  # without grading every report counts 1
    assert day_one == pytest.approx({"confirmed": 1.0, "single_source": 0.6, "party": 0.4, "denied": 0.2,
                                     None: 0.6})
    move = [_row("unit_move", START, unit="1st Tank", direction="arrive", distance_km=0, credibility="denied")]
    arrivals = static_covariates(move, _days(START, START), reading=graded)[0, COL["unit_arrivals"]]
    assert arrivals == pytest.approx(np.log1p(0.2))


def test_weekly_density_counts_one_report_per_category_and_week():
    same_week = [_row("sign", START + dt.timedelta(days=d), category="medical", description=f"report {d}")
                 for d in (0, 2, 4)]
    assert _weights(same_week, READING)[6] == pytest.approx(3.0)
    weekly = Reading(density="weekly")
    assert _weights(same_week, weekly)[:7] == pytest.approx([1.0] * 7)  # the first is seen on day 0
    next_week = same_week + [_row("sign", START + dt.timedelta(days=8), category="medical", description="later")]
    assert _weights(next_week, weekly)[8] == pytest.approx(1 + 0.5 ** (1 / SIGN_HALF_LIFE_WEEKS))


def test_the_survival_only_reading_has_no_indicator_and_the_panel_keeps_its_reading():
    rows = [_row("sign", START, category="medical", description="blood"),
            _row("unit_move", START, unit="1st Tank", direction="arrive", distance_km=900)]
    off = Reading(indicators=False)
    panel = build_panel(_theater(), rows, cut=D(2024, 2, 1), reading=off)
    assert not panel.static.any() and panel.reading == off
    assert build_panel(_theater(), rows, cut=D(2024, 2, 1)).static.any()


def test_the_time_since_start_term_counts_doublings_of_whole_weeks_and_is_off_by_default():
    days = _days(START, LAST)
    weeks = (days - np.datetime64(START, "D")).astype(int) // 7
    for reading in (Reading(crisis_age=True), Reading(crisis_age=True, indicators=False)):
        x = static_covariates([], days, origin=np.datetime64(START, "D"), reading=reading)
        assert x[:, COL["crisis_age"]] == pytest.approx(np.log2(1 + weeks))
        assert not np.delete(x, COL["crisis_age"], axis=1).any()
    assert not static_covariates([], days, origin=np.datetime64(START, "D"))[:, COL["crisis_age"]].any()
