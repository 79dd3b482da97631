"""The live loop (issue 16): record evidence, the instant update, what-if, replay.

Fast lane: the flagship run comes from `prior_sampling` (prior draws standing in for the sampler); the
instant-vs-refit agreement on real fits is measured by `benchmarks/run.py` and reported in the README.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from streamlit.testing.v1 import AppTest

from conftest import FLAGSHIP, REPO, all_counts

APP = REPO / "dashboards" / "app.py"
AS_OF = dt.date(2022, 2, 15)
SIGN = {"kind": "sign", "date": "2022-02-15", "category": "medical", "description": "Test: field hospitals forward",
        "source": "test"}


def _live(fitted_store):
    from forecast import live, runs, store

    eng = store.engine()
    theater = next(t for t in store.load_theaters(eng) if t.id == FLAGSHIP)
    rows = store.load_evidence(eng, FLAGSHIP)
    return live.LiveRun(runs.require_published(FLAGSHIP), theater, rows), rows


def _row(record: dict):
    from forecast.schema import EVIDENCE_ADAPTER

    return EVIDENCE_ADAPTER.validate_python({"theater": FLAGSHIP, **record})


def test_the_same_evidence_gives_the_stored_forecast_number_for_number(fitted_store):
    from forecast import runs

    lr, rows = _live(fitted_store)
    same = lr.forecast(rows, AS_OF)
    stored = runs.require_published(FLAGSHIP).forecast()
    assert same.weights.pareto_k is None  # nothing changed: equal weights
    for key in ("prob", "timing", "cumulative", "drivers", "history", "baseline_log_odds"):
        assert same.document[key] == stored[key], key


def test_a_new_sign_moves_the_forecast_and_says_how_far_to_trust_it(fitted_store):
    lr, rows = _live(fitted_store)
    update = lr.forecast(rows + [_row(SIGN)], AS_OF)
    assert update.weights.pareto_k is not None and update.weights.ess > 0
    assert update.document["prob"] != lr.forecast(rows, AS_OF).document["prob"]
    medical = next(d for d in update.document["drivers"] if d["indicator"] == "sign_medical")
    assert medical["value"] > 0  # the new report is in the covariates of the days ahead
    assert "Pareto k" in update.explanation() and not update.stage1_changed
    troops = _row({"kind": "troops", "date": "2022-02-15", "estimate": 190000, "source_type": "government",
                   "source": "test troops"})
    assert lr.forecast(rows + [troops], AS_OF).stage1_changed  # said, not hidden
    later = lr.forecast(rows + [_row({**SIGN, "date": "2022-02-20"})], dt.date(2022, 2, 20))
    assert later.as_of == "2022-02-20" and later.document["history"][-1]["date"] == "2022-02-20"
    with pytest.raises(ValueError, match="before the run"):
        lr.forecast(rows, dt.date(2022, 2, 1))


def test_forecast_add_validates_like_an_import_and_writes_with_who_and_why(fitted_store):
    import sqlalchemy as sa

    from forecast import store, store_schema

    before = all_counts(fitted_store.db_url)
    bad = fitted_store("add", FLAGSHIP, "--kind", "sign", "--date", "2022-02-31", "--source", "s", "--category",
                       "medical", "--description", "x")
    assert bad.exit_code == 2 and "--date" in bad.stderr and "nothing was written" in bad.stderr
    wrong_field = fitted_store("add", FLAGSHIP, "--kind", "sign", "--date", "2022-02-10", "--source", "s",
                               "--category", "medical", "--description", "x", "--estimate", "3")
    assert wrong_field.exit_code == 2 and "--estimate" in wrong_field.stderr
    ungraded = fitted_store("add", FLAGSHIP, "--kind", "sign", "--date", "2022-02-10", "--source", "s",
                            "--category", "medical", "--description", "x", "--credibility", "rumour")
    assert ungraded.exit_code == 2 and "--credibility" in ungraded.stderr
    assert all_counts(fitted_store.db_url) == before
    graded = fitted_store.json("add", FLAGSHIP, "--kind", "sign", "--date", "2022-02-10", "--source", "Other desk",
                               "--category", "bridging", "--description", "pontoons", "--credibility", "party")
    assert graded["row"]["credibility"] == "party"

    doc = fitted_store.json("add", FLAGSHIP, "--kind", "sign", "--date", "2022-02-10", "--source", "Test desk",
                            "--category", "medical", "--description", "blood bank moved", "--reason", "new report",
                            "--by", "analyst-a")
    assert doc["inserted"] == 1 and len(doc["row_id"]) == store.ROW_ID_LENGTH
    fixed = fitted_store.json("add", FLAGSHIP, "--kind", "sign", "--date", "2022-02-11", "--source", "Test desk",
                              "--category", "medical", "--description", "blood bank moved", "--replaces",
                              doc["row_id"], "--reason", "date corrected", "--by", "analyst-a")
    assert fixed["retracted"][0]["row_id"] == doc["row_id"]
    rows = [r for r in store.load_evidence(store.engine(), FLAGSHIP) if r.kind == "sign"
            and r.description == "blood bank moved"]
    assert [str(r.date) for r in rows] == ["2022-02-11"]  # the corrected row only; the first is retracted
    with store.engine().connect() as conn:
        origins = [o for (o,) in conn.execute(sa.select(store_schema.evidence_changes.c.origin))]
    assert any("add by analyst-a: new report" in (o or "") for o in origins)
    assert any("retract by analyst-a" in (o or "") for o in origins)


def test_forecast_whatif_prints_both_forecasts_and_writes_nothing(fitted_store):
    before = all_counts(fitted_store.db_url)
    text = fitted_store.ok("whatif", FLAGSHIP, "--row", json.dumps(SIGN)).stdout
    assert "STORED FORECAST" in text and "WHAT IF" in text and "field hospitals forward" in text
    doc = fitted_store.json("whatif", FLAGSHIP, "--row", json.dumps(SIGN),
                            "--row", json.dumps({"kind": "claim", "date": "2022-02-16", "claim_type": "withdrawal",
                                                 "verified": True, "verified_by": "test monitors", "source": "t"}))
    assert doc["written"] is False and len(doc["hypothetical_rows"]) == 2
    assert doc["scenario"]["as_of"] == "2022-02-16" and doc["stored"]["as_of"] == str(AS_OF)
    assert all_counts(fitted_store.db_url) == before
    bad = fitted_store("whatif", FLAGSHIP, "--row", '{"kind": "sign", "date": "2022-02-15"}')
    assert bad.exit_code == 2 and "category" in bad.stderr
    assert fitted_store("whatif", FLAGSHIP, "--row", "{not json").exit_code == 2


def test_replay_makes_an_open_theater_that_refits(fitted_store):
    from forecast import refit, store

    from prior_sampling import prior_sample

    doc = fitted_store.json("replay", FLAGSHIP, "--until", "2022-01-15", "--id", "rehearsal")
    theaters = {t["id"]: t for t in fitted_store.json("theaters")}
    assert theaters["rehearsal"]["outcome"] == "open"
    rows = store.load_evidence(store.engine(), "rehearsal")
    assert len(rows) == doc["rows"] > 0 and all(r.known_on <= dt.date(2022, 1, 15) for r in rows)
    assert not any(r.kind == "outcome" for r in rows)
    run = refit.refit(store.engine(), "rehearsal", None, sample=prior_sample)
    assert run.published and run.manifest["as_of"] == max(str(r.known_on) for r in rows)
    assert FLAGSHIP not in run.manifest["reference_class"]  # the rehearsed case never teaches its own copy
    assert fitted_store("replay", FLAGSHIP, "--until", "2022-01-15", "--id", "rehearsal").exit_code == 2


def test_scenarios_are_saved_per_theater_and_never_stored_as_evidence(fitted_store):
    from forecast import scenarios

    before = all_counts(fitted_store.db_url)
    scenarios.save(FLAGSHIP, "field hospitals", [SIGN])
    assert scenarios.load_all(FLAGSHIP) == {"field hospitals": [SIGN]}
    with pytest.raises(scenarios.ScenarioError):
        scenarios.save(FLAGSHIP, "", [SIGN])
    assert all_counts(fitted_store.db_url) == before


def test_the_page_records_a_row_updates_at_once_and_runs_what_if(fitted_store):
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    stored = [m.value for m in at.metric][:3]
    at.session_state["tab"] = "Evidence"
    at.run()
    at.selectbox(key="record:kind").set_value("sign")
    at.run()
    at.text_input(key="record:source").set_value("Test desk, 2022-02-14")
    at.date_input(key="record:date").set_value(dt.date(2022, 2, 14))
    at.selectbox(key="record:sign:category").set_value("evacuation")
    at.text_input(key="record:sign:description").set_value("Test: another embassy leaves")
    at.button[[b.label for b in at.button].index("Add row")].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    banner = "\n".join(w.body for w in at.info) + "\n".join(w.body for w in at.warning)
    assert "Instant update" in banner and "Pareto k" in banner
    assert [m.value for m in at.metric][:3] != stored or "Instant update" in banner

    at.session_state["tab"] = "What if"
    at.run()
    at.selectbox(key="whatif:kind").set_value("claim")
    at.run()
    at.text_input(key="whatif:source").set_value("hypothetical")
    at.selectbox(key="whatif:claim:claim_type").set_value("withdrawal")
    at.checkbox(key="whatif:claim:verified").check()
    at.button[[b.label for b in at.button].index("Add row")].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["what"][:3]) == ["P(within 7 days)", "P(within 30 days)", "P(within 90 days)"]
    assert at.session_state["whatif:last"]["rows"][0]["claim_type"] == "withdrawal"


def test_a_run_stored_before_the_time_since_start_term_gives_its_forecast_unchanged(fitted_store):
    """A run from before `crisis_age` existed: 16 indicators in its draws, none in its profile."""
    import arviz as az
    import xarray as xr

    from forecast import runs

    run = runs.require_published(FLAGSHIP)
    older = {"indicator": [n for n in run.draws().indicator.values if n != "crisis_age"]}
    draws = run.draws().sel(older)
    stage2 = az.from_netcdf(run.path / "stage2.nc")
    stage2.posterior = stage2.posterior.sel(older)
    draws.to_netcdf(run.path / "draws.nc")
    stage2.to_netcdf(run.path / "stage2.old.nc")  # the stored file is still open (lazily read)
    (run.path / "stage2.old.nc").replace(run.path / "stage2.nc")
    text = run.profile_text()
    (run.path / "profile.toml").write_text(text.split("[indicators.crisis_age]")[0], encoding="utf-8")
    with xr.open_dataset(run.path / "draws.nc") as stored:
        assert "crisis_age" not in stored.indicator.values

    lr, rows = _live(fitted_store)
    same = lr.forecast(rows, AS_OF)
    for key in ("prob", "timing", "cumulative", "history", "baseline_log_odds"):
        assert same.document[key] == run.forecast()[key], key
