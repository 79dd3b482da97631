"""The Streamlit dashboard through streamlit.testing.v1.AppTest: every tab, instant priors, states, refit.

The app runs in-process against the test's own store and runs folder (FORECAST_* env of the
fixtures), so what it shows is the fitted flagship of `fitted_store`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from forecast import wording

from conftest import FLAGSHIP, REPO

APP = REPO / "dashboards" / "app.py"
TABS = ["Forecast", "Drivers", "Evidence", "Priors", "Diagnostics", "Export"]


def app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [(e.message, e.stack_trace) for e in at.exception]
    return at


def headline(at: AppTest) -> list[str]:
    return [m.value for m in at.metric][:3]


def texts(elements) -> str:
    return "\n".join(e.body if hasattr(e, "body") else str(e.value) for e in elements)


def flagship_run():
    from forecast import runs

    return runs.require_published(FLAGSHIP)


def run_folders() -> set[str]:
    from forecast import runs

    return {r.id for r in runs.history(FLAGSHIP)}


def open_tab(at: AppTest, tab: str) -> AppTest:
    at.session_state["tab"] = tab
    return run(at)


@pytest.fixture
def no_sampling(monkeypatch):
    """Any attempt to fit a model fails the test."""
    from forecast import model

    def refuse(*args, **kwargs):
        raise AssertionError("the dashboard sampled a posterior")

    monkeypatch.setattr(model, "fit", refuse)


@pytest.fixture
def priors_dir(tmp_path, monkeypatch) -> Path:
    """A private priors folder holding the default profile (Save as profile writes here)."""
    folder = tmp_path / "priors"
    folder.mkdir()
    shutil.copy(REPO / "models" / "priors" / "default.toml", folder / "default.toml")
    monkeypatch.setenv("FORECAST_PRIORS_DIR", str(folder))
    return folder


# --- the page ------------------------------------------------------------------------------


def test_every_tab_shows_the_stored_forecast(fitted_store, no_sampling):
    from forecast import store

    doc = flagship_run().document()
    at = app()
    assert "Russian build-up" in at.subheader[0].value
    assert headline(at) == [wording.pct(doc["prob"][h]["mean"]) for h in ("7", "30", "90")]
    assert f"to escalate within 30 days — {wording.pct(doc['prob']['30']['mean'])}" in texts(at.markdown)
    assert doc["words"].capitalize() in texts(at.markdown)
    assert f"As of {doc['as_of']}" in texts(at.markdown) and "published" in texts(at.markdown)
    assert doc["run_id"] in texts(at.caption)

    # Forecast (the default tab): the spread of P(30 days) by the headline, history, its evidence strip, timing.
    assert len(at.get("vega_lite_chart")) == 4
    assert "median onset" in texts(at.caption)

    open_tab(at, "Drivers")
    assert len(at.get("vega_lite_chart")) == 2  # the headline's spread and the waterfall
    drivers = at.dataframe[0].value
    assert len(drivers) == len(doc["drivers"])
    assert drivers["log-odds"].iloc[0] == doc["drivers"][0]["log_odds"]

    open_tab(at, "Evidence")
    table = at.dataframe[0].value
    rows = store.load_evidence(store.engine(), FLAGSHIP)
    assert len(table) == len(rows)
    assert set(table.columns) >= {"date", "kind", "what", "source"}
    at.multiselect(key="evidence:kinds").set_value(["troops"])
    run(at)
    troops = at.dataframe[0].value
    assert len(troops) == sum(r.kind == "troops" for r in rows) > 0
    assert set(troops["kind"]) == {"troops"}
    assert troops["source"].str.len().min() > 0

    open_tab(at, "Priors")
    assert at.number_input(key="w:prior:base_rate:value").value == pytest.approx(15.0)
    assert at.number_input(key="w:prior:sign_ultimatum:value").value == pytest.approx(3.0)
    assert at.button(key="refit:priors-tab") and at.button(key="prior:save")

    open_tab(at, "Diagnostics")
    gate = at.dataframe[0].value
    assert list(gate["check"]) == ["max R-hat", "min bulk ESS", "divergent transitions"]
    assert set(gate["passes"]) == {"yes"}
    assert at.get("image"), "ArviZ trace plot missing"
    at.radio(key="diag:kind").set_value("rank")
    run(at)
    assert at.get("image")

    open_tab(at, "Export")
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download HTML", "Download PDF", "Download JSON"]
    assert not at.warning


@pytest.mark.slow  # the direction of the change is the real posterior's
def test_prior_change_moves_the_headline_instantly_without_sampling(sampled_store, no_sampling):
    at = app()
    open_tab(at, "Priors")
    before, folders = headline(at), run_folders()

    # An analyst who believes blood-supply reports say much more: LR 6 in [3, 12] (default 3 in [1.2, 8]).
    # Few cases report medical signs, so their beta follows its prior and the direction is robust
    # (unit arrivals, which the data pin down, moved P(30 days) by +1 to +3 points across machines).
    at.number_input(key="w:prior:sign_medical:high").set_value(12.0)
    run(at)  # one value at a time, each step a valid profile
    at.number_input(key="w:prior:sign_medical:value").set_value(6.0)
    run(at)
    at.number_input(key="w:prior:sign_medical:low").set_value(3.0)
    started = time.perf_counter()
    run(at)
    elapsed = time.perf_counter() - started

    after = headline(at)
    print(f"headline {before} -> {after}")
    p30 = [float(v.rstrip("%")) for v in (before[1], after[1])]
    assert p30[1] >= p30[0] + 5, "the flagship's blood-supply reports: a stronger prior raises P(30 days)"
    assert run_folders() == folders, "a prior change must not create a run"
    reweight_ms = at.session_state["timing:reweight_ms"]
    print(f"prior change: page rerun {elapsed * 1000:.0f} ms, reweighting {reweight_ms:.0f} ms")
    # Its speed is measured by benchmarks/live_loop.py; this bound only catches a page that samples
    # or hangs, with room for a loaded CI machine.
    assert reweight_ms < 5000
    assert elapsed < 5.0, f"the page took {elapsed:.2f} s to update"
    banner = texts(at.info) + texts(at.warning)
    assert "Priors adjusted" in banner and "Pareto k" in banner
    assert any("vs stored run" in (m.delta or "") for m in at.metric)

    # The other tabs show the reweighted numbers too (they are drawn from the same document).
    open_tab(at, "Forecast")
    assert headline(at) == after
    assert len(at.get("vega_lite_chart")) == 4

    # Back to the run's priors: back to the stored numbers.
    open_tab(at, "Priors")
    at.button(key="prior:reset").click()
    run(at)
    assert headline(at) == before
    assert not any("Priors adjusted" in t for t in (texts(at.info), texts(at.warning)))


def test_far_priors_warn_with_pareto_k_and_offer_a_refit(fitted_store, no_sampling):
    at = app()
    open_tab(at, "Priors")
    for name, (value, low, high) in {"base_rate": (92.0, 90.0, 95.0)}.items():
        at.number_input(key=f"w:prior:{name}:high").set_value(high)
        run(at)
        at.number_input(key=f"w:prior:{name}:low").set_value(low)
        run(at)
        at.number_input(key=f"w:prior:{name}:value").set_value(value)
        run(at)
    warning = texts(at.warning)
    assert "Pareto k" in warning and "above 0.7" in warning and "Refit" in warning
    assert at.button(key="refit:banner").label == "Refit with these priors"


def test_unusable_priors_are_refused_with_the_reason(fitted_store, no_sampling):
    at = app()
    open_tab(at, "Priors")
    stored = headline(at)
    at.number_input(key="w:prior:sign_medical:value").set_value(20.0)  # above its range [1.2, 8]
    run(at)
    assert "indicators.sign_medical" in texts(at.error) and "not inside its range" in texts(at.error)
    assert headline(at) == stored


def test_save_as_profile(fitted_store, priors_dir, no_sampling):
    from forecast import priors

    at = app()
    open_tab(at, "Priors")
    at.number_input(key="w:prior:sign_bridging:value").set_value(3.5)
    run(at)

    def save(name: str, overwrite: bool = False) -> AppTest:
        at.text_input(key="prior:save_name").set_value(name)
        at.checkbox(key="prior:overwrite").set_value(overwrite)
        run(at)
        at.button(key="prior:save").click()
        return run(at)

    save("hawkish-test")
    assert "Saved" in texts(at.success)
    saved = priors.load("hawkish-test")
    assert saved.indicators["sign_bridging"].value == 3.5
    assert saved.indicators["sign_medical"] == priors.load("default").indicators["sign_medical"]

    save("default", overwrite=True)
    assert "default profile is not overwritten" in texts(at.error)
    save("hawkish-test")
    assert "exists" in texts(at.error)
    save("Not A Name")
    assert "profile name" in texts(at.error)
    assert sorted(p.name for p in priors_dir.iterdir()) == ["default.toml", "hawkish-test.toml"]
    assert (priors_dir / "default.toml").read_text() == (REPO / "models" / "priors" / "default.toml").read_text()


# --- states --------------------------------------------------------------------------------


def test_rejected_latest_run_shows_the_last_published_and_why(fitted_store, no_sampling):
    published = flagship_run()
    rejected_id = "29990101T000000-rejctd"
    folder = published.path.parent / rejected_id
    shutil.copytree(published.path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(run_id=rejected_id, status="rejected", created_at="2999-01-01T00:00:00+00:00",
                    reason="max R-hat 1.080 > 1.01; 12 divergent transitions")
    (folder / "manifest.json").write_text(json.dumps(manifest))

    at = app()
    warning = texts(at.warning)
    assert rejected_id in warning and "rejected" in warning and "max R-hat 1.080 > 1.01" in warning
    assert published.id in warning
    assert published.id in texts(at.caption)

    assert headline(at)[1] == wording.pct(published.document()["prob"]["30"]["mean"])


def test_no_run_yet_says_which_command_to_run(initialised_store, no_sampling):
    at = app()
    at.selectbox(key="theater").set_value(FLAGSHIP)
    run(at)
    assert "No forecast" in texts(at.warning)
    assert any(f"forecast refit {FLAGSHIP} --as-of" in c.value for c in at.code)
    assert at.button(key="refit:first").label == "Fit now"
    assert len(at.dataframe[0].value) > 0  # the evidence is still there to read
    assert not at.metric


def test_theater_without_troop_estimates(initialised_store, no_sampling):
    at = app()
    at.selectbox(key="theater").set_value("taiwan-strait-2022")
    run(at)
    assert "No troop estimates" in texts(at.info)
    assert "forecast refit taiwan-strait-2022" in "\n".join(c.value for c in at.code)


def test_store_not_initialised(tmp_path, monkeypatch):
    monkeypatch.setenv("FORECAST_DB_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    at = app()
    assert "forecast init" in texts(at.error)
    assert any("forecast init" in c.value for c in at.code)


def test_dashboard_command_checks_its_port(cli):
    result = cli("dashboard", "--port", "0")
    assert result.exit_code == 2 and "--port" in result.stderr
    help_text = cli("dashboard", "--help").stdout
    assert "127.0.0.1" in help_text and "--address" in help_text


# --- export and refit ------------------------------------------------------------------------


def test_export_goes_through_the_report_renderer(fitted_store):
    """What the Export tab's buttons download: the run's report, or the reweighted one."""
    from forecast import dashboard_view as view
    from forecast import reweight, store

    run_ = flagship_run()
    rw = reweight.PriorReweighter(run_)
    eng = store.engine()
    plain = json.loads(view.export_report(eng, run_, "json", run_.document()))
    assert plain["run"]["run_id"] == run_.id and not plain["reweighted"]

    profile = view.adjusted_profile(rw.profile, (0.3, 0.1, 0.6), {})
    shown = rw.apply(profile)
    doc = view.document(run_, shown.document, profile, shown)
    reweighted = json.loads(view.export_report(eng, run_, "json", doc, profile, "Flagship"))
    assert reweighted["reweighted"]["from_run"] == run_.id
    assert reweighted["reweighted"]["pareto_k"] == pytest.approx(shown.pareto_k, abs=1e-3)
    assert reweighted["forecast"]["prob"]["30"] == doc["prob"]["30"] != run_.forecast()["prob"]["30"]
    html = view.export_report(eng, run_, "html", doc, profile, "Flagship").decode()
    assert "Flagship" in html and run_.id in html


@pytest.mark.slow
def test_refit_button_runs_a_real_refit_in_the_background(fitted_store, monkeypatch):
    """The button starts the real refit in a thread; the page stays usable and then shows the new run."""
    # Small settings keep the test short (the run is then rejected by the gate, which the page must say).
    for name, value in (("DRAWS", "30"), ("TUNE", "30"), ("CHAINS", "1")):
        monkeypatch.setenv(f"FORECAST_DASHBOARD_{name}", value)
    before = run_folders()
    at = app()
    open_tab(at, "Priors")
    at.number_input(key="w:prior:sign_bridging:value").set_value(3.0)
    run(at)
    at.button(key="refit:priors-tab").click()
    run(at)
    progress = at.get("progress")
    assert progress and "Refitting" in progress[0].proto.text
    # The page stays usable while it runs.
    started = time.perf_counter()
    open_tab(at, "Evidence")
    assert time.perf_counter() - started < 5
    deadline = time.monotonic() + 240
    message = ""
    while time.monotonic() < deadline:
        time.sleep(1)
        run(at)
        message = texts(at.success) + texts(at.error) + texts(at.warning)
        if "Refit done" in message or "Refit failed" in message:
            break
    new = run_folders() - before
    assert len(new) == 1, f"no new run after 4 minutes: {message}"
    (new_id,) = new
    from forecast import runs

    made = next(r for r in runs.history(FLAGSHIP) if r.id == new_id)
    assert made.manifest["prior_profile"] == "default-adjusted"
    assert made.manifest["sampler"]["draws"] == 30
    assert "sign_bridging" in made.profile_text() and "value = 3" in made.profile_text()
    assert new_id in message
    if not made.published:  # expected with these settings: the page says so and keeps the old run
        assert "rejected" in message
