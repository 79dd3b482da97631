"""What the page, `show` and reports say is the right number (issue 15): the theater a link names, stale
evidence flagged, history as it was said then, uncertainty in words, base-rate changes explained, side by side.

Fast lane: the session's flagship run comes from `prior_sampling` (prior draws standing in for the sampler),
so every number here is computed by the real code from a stored run.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from streamlit.testing.v1 import AppTest

from forecast import wording

from conftest import FLAGSHIP, REPO

APP = REPO / "dashboards" / "app.py"
NEW_ROW = {"kind": "sign", "theater": FLAGSHIP, "date": "2022-02-01", "category": "medical",
           "description": "Test: blood supplies moved forward", "source": "test source"}


def page(**query) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [(e.message, e.stack_trace) for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(e.body if hasattr(e, "body") else str(e.value) for e in elements)


def import_row(cli, tmp_path, row=NEW_ROW) -> None:
    path = tmp_path / f"row-{abs(hash(json.dumps(row)))}.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    cli.ok("import", path)


# --- the theater a link names ----------------------------------------------------------------


def test_a_link_by_id_opens_that_theater_before_and_after_another_is_fitted(fitted_store):
    from forecast import refit, store

    from prior_sampling import prior_sample

    def opened() -> AppTest:
        at = page(theater=FLAGSHIP, tab="Drivers")
        assert "Russian build-up" in at.subheader[0].value
        assert "What drives the forecast" in texts(at.subheader)  # the tab the link names
        assert at.query_params["theater"] in (FLAGSHIP, [FLAGSHIP])  # the link the page keeps
        return at

    opened()
    run = refit.refit(store.engine(), "zapad-2017", dt.date(2017, 8, 15), sample=prior_sample)
    assert run.published  # zapad-2017 is now the most recently fitted theater (the page's default)
    opened()
    assert "Zapad" in page().subheader[0].value  # without a link: the default


def test_an_unknown_theater_id_says_so_and_shows_nothing_else(fitted_store):
    at = page(theater="atlantis-2099")
    assert "No theater with id `atlantis-2099`" in texts(at.error)
    assert not at.metric and not at.get("vega_lite_chart")


# --- stale evidence --------------------------------------------------------------------------


def test_a_row_imported_after_the_run_raises_the_banner_and_is_not_in_the_run(fitted_store, tmp_path):
    from forecast import freshness, runs, store

    assert not texts(page().warning)
    import_row(fitted_store, tmp_path)
    at = page()
    assert "Stale forecast" in texts(at.warning) and "1 row added" in texts(at.warning)
    assert at.button(key="refit:banner")
    at.session_state["tab"] = "Evidence"
    at.run()
    table = at.dataframe[0].value
    new = table[table["what"].str.contains("blood supplies moved forward")]
    assert len(new) == 1 and not new["in run"].iloc[0]
    run = runs.require_published(FLAGSHIP)
    seen = [r for r in store.load_evidence(store.engine(), FLAGSHIP) if freshness.in_run(run.manifest, r)]
    assert int(table["in run"].sum()) == len(seen) == len(run.manifest["seen"]["target_rows"])

    shown = fitted_store.json("show", FLAGSHIP)
    assert shown["stale"]["stale"] and shown["stale"]["added"] == 1
    assert f"forecast refit {FLAGSHIP} --as-of" in shown["stale"]["command"]
    assert "STALE" in fitted_store.ok("show", FLAGSHIP).stdout


def test_freshness_names_changed_removed_and_reference_rows(fitted_store, tmp_path):
    from forecast import dataset, freshness, runs, store

    run = runs.require_published(FLAGSHIP)
    panels, _ = dataset.from_store(store.engine(), FLAGSHIP, dt.date.fromisoformat(run.manifest["as_of"]))
    assert freshness.compare(run.manifest, panels).stale is False
    target = next(p for p in panels if p.id == FLAGSHIP)
    edited = [p if p.id != FLAGSHIP else type(p)(p.theater, p.rows[1:], p.days, p.static, p.event, p.troops, p.cut)
              for p in panels]  # one row gone
    gone = freshness.compare(run.manifest, edited)
    assert gone.stale and gone.removed == 1 and gone.added == 0
    reference = [p for p in panels if p.id != "zapad-2017"]
    other = freshness.compare(run.manifest, reference)
    assert other.stale and other.reference_changed == ["zapad-2017"] and "zapad-2017" in other.summary()
    assert target.rows  # the flagship has rows to drop
    legacy = {k: v for k, v in run.manifest.items() if k != "seen"}  # a run made before the record
    assert freshness.compare(legacy, panels).stale is False and not freshness.compare(legacy, panels).detail


# --- history as it was said then ---------------------------------------------------------------


def test_history_is_reweighted_to_each_date_and_says_how(fitted_store):
    from forecast import reweight, runs

    history = runs.require_published(FLAGSHIP).document()["history"]
    assert history[-1]["method"] == "as fitted" and history[-1]["mean"] == history[-1]["hindsight"]
    for entry in history[:-1]:
        assert entry["method"] == "reweighted" and entry["pareto_k"] is not None
        assert entry["reliable"] == (entry["pareto_k"] <= reweight.PARETO_K_MAX)
        assert 0 <= entry["lo"] <= entry["hi"] <= 1 and 0 <= entry["hindsight"] <= 1


# --- uncertainty in words ------------------------------------------------------------------------


@pytest.mark.parametrize("p, text", [(0.999, "> 99%"), (0.995, "> 99%"), (0.9949, "99%"), (0.31, "31%"),
                                     (0.004, "0.4%"), (0.0004, "< 0.1%"), (None, "—")])
def test_probabilities_are_never_printed_as_a_rounded_certainty(p, text):
    assert wording.pct(p) == text


def test_the_interval_is_explained_where_it_first_appears(fitted_store, tmp_path):
    at = page()
    assert "not a second forecast" in texts(at.caption)
    assert "not a second forecast" in fitted_store.ok("show", FLAGSHIP).stdout
    written = fitted_store.json("report", FLAGSHIP, "--format", "json", "-o", tmp_path / "r.json")
    assert "not a second forecast" in json.loads((tmp_path / "r.json").read_text())["interval_meaning"]
    assert written


# --- priors: errors in the inputs' units, explanations, load, compare ---------------------------


def test_an_unusable_base_rate_is_refused_in_percent_and_the_last_usable_priors_stay(fitted_store):
    at = page()
    at.session_state["tab"] = "Priors"
    at.run()
    at.number_input(key="w:prior:sign_bridging:value").set_value(3.0)
    at.run()
    usable = [m.value for m in at.metric][:3]
    at.number_input(key="w:prior:base_rate:value").set_value(60.0)  # outside its 80% range 4%–40%
    at.run()
    assert "the value 60% must lie inside its 80% range 4%–40%" in texts(at.error)
    assert [m.value for m in at.metric][:3] == usable  # the bridging change is kept, not reverted


def test_a_base_rate_change_against_its_direction_is_explained():
    from forecast import dashboard_view as view
    from forecast import priors

    fitted = priors.load("default")
    higher = fitted.with_values(base_rate=priors.Stated(0.3, 0.04, 0.6, "r"))
    stored = {"prob": {"30": {"mean": 0.64}}}
    text = view.against_direction(fitted, higher, stored, {"prob": {"30": {"mean": 0.61}}})
    assert text.startswith("Raising the base rate moved the 30-day forecast the other way") and "64% → 61%" in text
    assert view.against_direction(fitted, higher, stored, {"prob": {"30": {"mean": 0.70}}}) is None


def test_a_saved_profile_loads_back_and_keeps_the_analysts_rationale(fitted_store, tmp_path, monkeypatch):
    import shutil

    from forecast import priors

    folder = tmp_path / "priors"
    folder.mkdir()
    shutil.copy(REPO / "models" / "priors" / "default.toml", folder / "default.toml")
    monkeypatch.setenv("FORECAST_PRIORS_DIR", str(folder))
    at = page()
    at.session_state["tab"] = "Priors"
    at.run()
    at.number_input(key="w:prior:sign_medical:value").set_value(5.0)
    at.run()
    at.text_input(key="prior:save_name").set_value("medical-heavy")
    at.text_area(key="prior:rationale").set_value("Blood supplies were the best lead in 2022.")
    at.run()
    at.button(key="prior:save").click()
    at.run()
    assert priors.load("medical-heavy").description == "Blood supplies were the best lead in 2022."

    at.button(key="prior:reset").click()
    at.run()
    assert at.number_input(key="w:prior:sign_medical:value").value == pytest.approx(3.0)
    at.selectbox(key="prior:load_name").set_value("medical-heavy")
    at.run()
    at.button(key="prior:load").click()
    at.run()
    assert at.number_input(key="w:prior:sign_medical:value").value == pytest.approx(5.0)

    at.session_state["tab"] = "Compare"
    at.run()
    at.selectbox(key="compare:with").set_value("this run under profile medical-heavy")
    at.run()
    table = at.dataframe[0].value
    assert list(table["what"][:3]) == ["P(within 7 days)", "P(within 30 days)", "P(within 90 days)"]
    assert len(at.get("vega_lite_chart")) == 2  # the headline's spread and the two timing curves
