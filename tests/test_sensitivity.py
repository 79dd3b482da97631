"""`forecast sensitivity`: the backtest under several prior profiles, one table.

The fits draw from the prior (`prior_sampling`), so the profiles' differences show directly in the
forecasts; a profile that cannot be read stops the command before any fit.
"""

from __future__ import annotations

import csv
import json

import pytest

from prior_sampling import prior_sample

CASE = "crimea-2014"


@pytest.mark.slow
def test_one_backtest_per_profile(initialised_store, tmp_path):
    from forecast import backtest, priors, sampling, sensitivity, store
    from forecast.executor import Serial

    settings = sampling.SamplerSettings(draws=60, tune=20, chains=2, progressbar=False)
    options = backtest.Options(cases=[CASE, "georgia-2008"], metaculus=False, check_exact=0, settings=settings,
                               sample=prior_sample, progress=False)
    profiles = [priors.load("default"), priors.load("sceptical")]
    study = sensitivity.run(store.engine(initialised_store), profiles, options, Serial())
    rows = study["profiles"]
    assert [r["profile"] for r in rows] == ["default", "sceptical"]
    assert rows[0]["prior_hash"] != rows[1]["prior_hash"]
    assert rows[0]["brier"] != rows[1]["brier"]  # other priors, other forecasts
    for r, doc in zip(rows, study["documents"]):
        assert r["brier"] == doc["brier"] and r["auc"] == doc["auc"] and r["n_forecasts"] == doc["n_forecasts"]
        assert doc["cases_run"] == [CASE, "georgia-2008"]

    text = sensitivity.text(study)
    assert "default" in text and "sceptical" in text and len(text.splitlines()) == 3 + 2 * 3
    files = sensitivity.write_outputs(study, tmp_path / "out")
    with (tmp_path / "out" / "sensitivity.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and {t["profile"] for t in table} == {"default", "sceptical"}
    assert json.loads((tmp_path / "out" / "sensitivity.json").read_text())["profiles"][1]["profile"] == "sceptical"
    assert (tmp_path / "out" / "sceptical" / "backtest.json").is_file() and len(files) > 2


def test_unreadable_profile_stops_before_any_fit(initialised_cli, tmp_path):
    res = initialised_cli("sensitivity", "--profiles", "default", "nosuch", "--case", CASE, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "no such prior profile" in res.stderr
    assert not (tmp_path / "out").exists()
