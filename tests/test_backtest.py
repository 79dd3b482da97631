"""Backtest and calibration (issue 5): `forecast backtest` on three cases with small settings.

- The JSON document: every score by horizon, reliability bins, the per-case
  table, the flagship-versus-Metaculus rows, diagnostics of every fit.
- Files: the CSV tables and the two PNG charts, written to --out.
- No leakage: a held-out case's forecasts are identical, number for number,
  when its outcome date changes or evidence dated after an as-of date is added.
- The scoring helpers (AUC, reliability/ECE, climatology, censoring) on small
  hand-checked inputs, and the public-forecast data file.

The full backtest (every case, default settings) is a benchmark, not a test:
see README "Backtest and calibration".
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from forecast import backtest, public_record, sampling, scoring, store

from conftest import CASES_DIR, DATA_DIR, Cli, sqlite_url_for

CASES = ["crimea-2014", "taiwan-strait-1996", "georgia-2008"]  # escalated (short), none, escalated (long)
SMALL = ["--draws", "100", "--tune", "150", "--chains", "2"]
SMALL_SETTINGS = sampling.SamplerSettings(draws=100, tune=150, chains=2, progressbar=False)
HS = ("7", "30", "90")


@pytest.fixture(scope="module")
def store_copy(initialised_template, tmp_path_factory):
    """A private copy of the initialised store and a runs folder for this module."""
    folder = tmp_path_factory.mktemp("backtest")
    db = folder / "forecast.db"
    shutil.copyfile(initialised_template, db)
    db.chmod(0o644)
    (folder / "runs").mkdir()
    return folder


@pytest.fixture(scope="module")
def result(store_copy):
    """One real backtest run on three cases, with the Metaculus comparison."""
    cli = Cli(sqlite_url_for(store_copy / "forecast.db"), store_copy / "runs")
    out = store_copy / "out"
    args = ["backtest", *[a for c in CASES for a in ("--case", c)], *SMALL, "--metaculus", "--check-exact", "1", "--out", out, "--json"]
    res = cli(*args)
    assert res.exit_code == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return json.loads(res.stdout), out, res.stderr


# --- the document ------------------------------------------------------------------------------


@pytest.mark.slow
def test_scores_by_horizon(result):
    doc, _, _ = result
    for key in ("brier", "brier_skill", "brier_climatology", "log_score", "ece", "auc", "reliability", "base_rate"):
        assert set(doc[key]) == set(HS), key
    for h in HS:
        assert 0 <= doc["brier"][h] <= 1 and 0 <= doc["brier_climatology"][h] <= 1
        assert doc["brier_skill"][h] == pytest.approx(1 - doc["brier"][h] / doc["brier_climatology"][h], abs=2e-3)
        ci = doc["brier_skill_interval"][h]
        assert ci["lo"] <= ci["hi"] and ci["level"] == 0.9
        assert set(doc["population"]["brier_skill"]) == set(HS)
        assert doc["log_score"][h] >= 0
        assert 0 <= doc["ece"][h] <= 1
        assert doc["auc"][h] is None or 0 <= doc["auc"][h] <= 1
        bins = doc["reliability"][h]
        assert len(bins) == scoring.N_BINS and sum(b["n"] for b in bins) == doc["n_forecasts"]
        for b in bins:
            if b["n"]:
                assert b["lo"] <= b["mean_forecast"] <= b["hi"] and 0 <= b["observed"] <= 1
    assert isinstance(doc["seconds"], float) and doc["seconds"] > 0
    assert doc["cases_run"] == CASES


@pytest.mark.slow
def test_every_forecast_is_a_probability_before_its_outcome(result):
    doc, _, _ = result
    cases = {c["id"]: c for c in doc["cases"]}
    assert list(cases) == CASES
    assert doc["n_forecasts"] == len(doc["forecasts"]) == sum(c["forecasts"] for c in cases.values())
    for f in doc["forecasts"]:
        assert f["as_of"] < cases[f["case"]]["end_date"], f  # no as-of date on or after the outcome
        for key in ("prob", "prob_population"):
            for h in HS:
                p = f[key][h]
                assert 0 <= p["lo"] <= p["mean"] <= p["hi"] <= 1, (f["case"], f["as_of"], key, h, p)
        assert f["observed"][h] in (0, 1) and 0 <= f["climatology"][h] <= 1
        assert f["method"] in ("loco-weighted", "exact-refit")
        # cumulative in the horizon: P(within 7) <= P(within 30) <= P(within 90), draw by draw
        assert f["prob"]["7"]["mean"] <= f["prob"]["30"]["mean"] + 1e-9 <= f["prob"]["90"]["mean"] + 2e-9
    # weekly as-of dates from the crisis start
    georgia = [f["as_of"] for f in doc["forecasts"] if f["case"] == "georgia-2008"]
    assert georgia[0] == cases["georgia-2008"]["start"]
    assert all((dt.date.fromisoformat(b) - dt.date.fromisoformat(a)).days == 7 for a, b in zip(georgia, georgia[1:]))


@pytest.mark.slow
def test_metaculus_rows_beside_the_engine(result):
    doc, _, _ = result
    public = json.loads((DATA_DIR / "public_forecasts.json").read_text())["questions"][0]
    rows = doc["metaculus"]["rows"]
    assert [r["date"] for r in rows] == [f["date"] for f in public["forecasts"]]
    for r, f in zip(rows, public["forecasts"]):
        assert r["metaculus"] == f["probability"] and r["resolves_by"] == "2022-12-31"
        assert 0 <= r["engine"]["lo"] <= r["engine"]["mean"] <= r["engine"]["hi"] <= 1
        # the question runs to 2022-12-31: at least as likely as within 90 days
        assert r["engine"]["mean"] >= r["engine_within_90"]["mean"] - 1e-9
    assert "Metaculus" in doc["metaculus"]["source"]


@pytest.mark.slow
def test_diagnostics_recorded_for_every_fit(result):
    doc, _, stderr = result
    g = doc["diagnostics"]
    labels = [f["fit"] for f in g["per_fit"]]
    assert [lab for lab in labels if lab.startswith("loco:")] == [f"loco:{c}" for c in CASES]
    assert len(labels) == g["fits"] == len(set(labels))
    for f in g["per_fit"]:
        assert f["r_hat_max"] > 0 and f["ess_bulk_min"] > 0 and f["divergences"] >= 0
    assert g["compile_reuses"] > 0  # one compilation serves many fits
    assert len(doc["exactness"]["checks"]) == 1  # --check-exact 1
    check = doc["exactness"]["checks"][0]
    assert f"exact:{check['case']}:{check['as_of']}" in labels and set(check["abs_diff"]) == set(HS)
    assert "backtest" in stderr  # the progress bar


@pytest.mark.slow
def test_a_worker_process_gives_the_serial_forecasts(result, store_copy):
    """The real sampler on a Dask worker process (its own compile cache): the serial run's numbers exactly."""
    doc, _, _ = result
    cli = Cli(sqlite_url_for(store_copy / "forecast.db"), store_copy / "runs")
    res = cli("backtest", "--case", CASES[0], *SMALL, "--no-metaculus", "--check-exact", "0", "--workers", "1",
              "--out", store_copy / "on-worker", "--json")
    assert res.exit_code == 0, res.stderr
    assert "fits run on: local Dask cluster, 1 worker process" in res.stderr
    spread = json.loads(res.stdout)
    serial = [f for f in doc["forecasts"] if f["case"] == CASES[0]]
    assert [f["prob"] for f in spread["forecasts"]] == [f["prob"] for f in serial]
    fit = spread["diagnostics"]["per_fit"][0]
    assert fit["fit"] == f"loco:{CASES[0]}" and not fit["worker"].endswith(f":{os.getpid()}")
    logged = next(f for f in doc["diagnostics"]["per_fit"] if f["fit"] == fit["fit"])
    assert (fit["r_hat_max"], fit["ess_bulk_min"]) == (logged["r_hat_max"], logged["ess_bulk_min"])


@pytest.mark.slow
def test_files_written(result):
    doc, out, _ = result
    for name in ("forecasts.csv", "cases.csv", "scores.csv", "reliability.csv", "metaculus.csv",
                 "reliability.png", "metaculus.png", "backtest.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in doc["files"]
    for name in ("reliability.png", "metaculus.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "forecasts.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == doc["n_forecasts"] and {"case", "as_of", "p_30", "observed_30", "climatology_30"} <= set(rows[0])
    with (out / "metaculus.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert json.loads((out / "backtest.json").read_text())["brier_skill"] == doc["brier_skill"]
    assert not list(out.glob(".*.tmp"))  # written through temporary files, none left behind


# --- no leakage --------------------------------------------------------------------------------


def _forecasts(url: str, case: str) -> dict:
    options = backtest.Options(cases=[case], metaculus=False, check_exact=0, settings=SMALL_SETTINGS, progress=False)
    doc = backtest.run(store.engine(url), options)
    return {f["as_of"]: f for f in doc["forecasts"]}


def _rewrite(case: str, folder: Path, change) -> Path:
    """A copy of a case file with `change(row)` applied to every row (returns the row to keep)."""
    rows = [json.loads(line) for line in case_lines(case)]
    path = folder / f"{case}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in map(change, rows)) + "\n")
    return path


def case_lines(case: str) -> list[str]:
    return [line for line in (CASES_DIR / f"{case}.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_held_out_case_cannot_see_its_outcome_or_later_evidence(store_copy, tmp_path, result):
    case = "georgia-2008"
    url = sqlite_url_for(store_copy / "leak.db")
    shutil.copyfile(store_copy / "forecast.db", store_copy / "leak.db")
    cli = Cli(url, store_copy / "runs")
    before = _forecasts(url, case)
    dates = sorted(before)

    # 1. The outcome three weeks later: more as-of dates, the same forecasts on the old ones.
    def later(row):
        if row.get("kind") == "outcome":
            row["date"] = (dt.date.fromisoformat(row["date"]) + dt.timedelta(days=21)).isoformat()
        return row

    from forecast import store

    outcome = next(r for r in store.load_evidence(store.engine(url), case) if r.kind == "outcome")
    cli.ok("retract", case, store.row_id(outcome), "--reason", "test: the outcome moves three weeks later")
    cli.ok("import", _rewrite(case, tmp_path, later))  # a stored outcome is replaced only after its retraction
    moved = _forecasts(url, case)
    assert len(moved) == len(before) + 3
    for d in dates:
        assert moved[d]["prob"] == before[d]["prob"], d
        assert moved[d]["prob_population"] == before[d]["prob_population"], d

    # 2. A strong warning sign reported after the third as-of date: earlier forecasts unchanged.
    cut = dt.date.fromisoformat(dates[2])
    sign = {"kind": "sign", "theater": case, "date": (cut + dt.timedelta(days=1)).isoformat(),
            "category": "ultimatum", "description": "test: an ultimatum after the as-of date",
            "source": "test fixture"}
    path = _rewrite(case, tmp_path, later)
    path.write_text(path.read_text() + json.dumps(sign) + "\n")
    cli.ok("import", path)
    signed = _forecasts(url, case)
    for d in dates[:3]:
        assert signed[d]["prob"] == before[d]["prob"], d
    assert any(signed[d]["prob"]["30"]["mean"] != before[d]["prob"]["30"]["mean"] for d in dates[3:])


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_case_is_bad_input(initialised_cli, tmp_path):
    res = initialised_cli("backtest", "--case", "atlantis-2099", "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert "atlantis-2099" in res.stderr and "unknown" in res.stderr
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_folder(initialised_cli, tmp_path):
    (tmp_path / "file").write_text("x")
    res = initialised_cli("backtest", "--case", "crimea-2014", "--out", tmp_path / "file")
    assert res.exit_code == 2 and "folder" in res.stderr


# --- scoring helpers ------------------------------------------------------------------------------


def test_auc_rank_formula():
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.5])
    y = np.array([0, 0, 1, 1, 0, 1])
    pairs = [(a > b) + 0.5 * (a == b) for a in p[y == 1] for b in p[y == 0]]
    assert scoring.auc(p, y) == pytest.approx(np.mean(pairs))
    assert scoring.auc(p, np.zeros(6, dtype=int)) is None


def test_reliability_bins_and_ece():
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    y = np.array([0, 1, 1, 1, 0])
    bins, ece = scoring.reliability(p, y, bins=10)
    assert [b["n"] for b in bins] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert bins[0]["observed"] == 0.5 and bins[9]["observed"] == 1.0
    assert ece == pytest.approx((2 * 0.45 + 1 * 0.55 + 2 * 0.05) / 5, abs=1e-4)
    assert scoring.reliability(np.array([1.0]), np.array([1]))[0][-1]["n"] == 1  # p = 1 is in the last bin


def _case(start: str, end: str, escalated: bool, tid: str = "x") -> backtest.Case:
    from forecast.schema import MODEL_BY_KIND, Theater

    theater = Theater(id=tid, name=tid, actor="a", target="b", start=dt.date.fromisoformat(start), source="test")
    outcome = MODEL_BY_KIND["outcome"](kind="outcome", theater=tid, date=dt.date.fromisoformat(end),
                                       escalated=escalated, source="test")
    return backtest.Case(theater, [], outcome)


def test_as_of_grid_outcomes_and_censoring():
    war = _case("2000-01-01", "2000-01-20", True)
    assert war.as_of_dates() == [dt.date(2000, 1, 1), dt.date(2000, 1, 8), dt.date(2000, 1, 15)]
    assert [war.observed(dt.date(2000, 1, 8), h) for h in (7, 30)] == [0, 1]
    assert war.observed(dt.date(2000, 1, 15), 7) == 1  # 2000-01-20 <= 2000-01-22
    short = _case("2000-01-01", "2000-01-03", True)
    assert short.as_of_dates() == [dt.date(2000, 1, 1)]  # every case gets its start date
    calm = _case("2000-01-01", "2000-01-10", False)
    assert all(calm.observed(d, 90) == 0 for d in calm.as_of_dates())  # censored: no escalation observed


def test_climatology_leaves_the_case_out():
    cases = {"a": _case("2000-01-01", "2000-01-05", True, "a"),  # one as-of date, escalates within 7
             "b": _case("2000-01-01", "2000-01-15", False, "b"),  # two as-of dates, never
             "c": _case("2000-01-01", "2000-01-30", True, "c")}  # five dates: 01, 08, 15, 22, 29
    assert backtest.climatology(cases, "a", 7) == pytest.approx(1 / 7)  # b: 0, 0; c: only 01-29 -> 1 of 5
    assert backtest.climatology(cases, "c", 7) == pytest.approx(1 / 3)  # a: 1; b: 0, 0


def test_public_forecasts_are_sourced():
    doc = json.loads((DATA_DIR / "public_forecasts.json").read_text())
    q = public_record.question_for(doc, "russia-ukraine-2022")
    assert q["question"] == "Will Russia invade Ukraine before 2023?" and q["resolves_by"] == "2022-12-31"
    assert "as stated in the project issue" in q["source"]
    assert [f["date"] for f in q["forecasts"]] == ["2021-12-15", "2022-01-18", "2022-02-13", "2022-02-19"]
    for f in q["forecasts"]:
        assert 0 < f["probability"] < 1 and f["relation"] in ("about", "above", "exact")
        assert f["confirmed_by"] and f["confirmed_url"].startswith("https://")
