"""Nested selection of the evidence reading (`forecast backtest --select`, forecast.selection).

The study's fits draw from the prior (`prior_sampling`): the point here is the procedure -- the
choice made inside each fold, never on the held-out case, the selected stream built from the
chosen candidate, the baselines scored in the same run -- and the maths of the inner score.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from prior_sampling import prior_sample

CASES = ["crimea-2014", "georgia-2008"]


@pytest.fixture
def study_parts(initialised_store):
    from forecast import backtest, priors, sampling, selection, store

    settings = sampling.SamplerSettings(draws=40, tune=10, chains=2, progressbar=False)
    options = backtest.Options(cases=CASES, settings=settings, sample=prior_sample, progress=False)
    candidates = selection.load_candidates(priors.load("default"), ["original", "lead-graded"])
    return store.engine(initialised_store), options, candidates


def test_the_candidates_file_resolves_extends_and_always_adds_the_baselines():
    from forecast import priors, selection

    every = {c.name: c for c in selection.load_candidates(priors.load("default"))}
    assert {"original", "lead", "lead-graded-weekly", "survival-only"} <= set(every)
    weekly, graded = every["lead-graded-weekly"].profile.reading, every["lead-graded"].profile.reading
    assert weekly.density == "weekly" and weekly.credibility == graded.credibility != ()
    assert weekly.lead_weeks == every["lead"].profile.reading.lead_weeks and weekly.lead("medical") == 4
    assert every["lead-long"].profile.reading.lead("medical") == 8
    assert every["survival-only"].baseline and not every["survival-only"].profile.reading.indicators
    assert len({c.profile.hash for c in every.values()}) == len(every)  # each reading is its own profile
    only = selection.load_candidates(priors.load("default"), ["lead"])
    assert [c.name for c in only] == ["lead", "survival-only"]


@pytest.mark.parametrize("text, named", [
    ('[a]\nextends = "b"\n', "extends 'b'"),
    ('[a]\nkernel = "sideways"\n', "[a].kernel"),
    ('[a]\nkernel = "lead"\n[a.lead_weeks]\nmedical = 2\n', "[a].lead_weeks"),
    ('[a]\n[a.credibility]\nconfirmed = 1.5\n', "[a].credibility.confirmed"),
])
def test_a_bad_candidate_is_refused_with_file_and_key(tmp_path, text, named):
    from forecast import priors, selection
    from forecast.backtest import BacktestError

    path = tmp_path / "candidates.toml"
    path.write_text(text)
    with pytest.raises(BacktestError) as err:
        selection.load_candidates(priors.load("default"), path=path)
    assert str(path) in str(err.value) and named in str(err.value)


def test_unknown_candidate_on_the_command_line_exits_2(initialised_cli):
    result = initialised_cli("backtest", "--select", "--candidate", "nope", "--case", "crimea-2014")
    assert result.exit_code == 2 and "--candidate nope" in result.stderr and "lead-graded" in result.stderr


@pytest.mark.slow  # a whole study of 56-case fits (prior draws): ~10 s
def test_each_fold_chooses_by_its_inner_score_and_the_selected_stream_is_the_choice(study_parts, tmp_path):
    from forecast import selection

    eng, options, candidates = study_parts
    doc = selection.run(eng, options, candidates)
    assert doc["cases_run"] == CASES
    for case in CASES:
        inner = doc["inner"][case]
        assert set(inner) == {"original", "lead-graded", "survival-only"}
        assert doc["selected"]["choices"][case] == max(["original", "lead-graded"], key=lambda n: inner[n]["elpd"])
        picked = [f for f in doc["forecasts"] if f["case"] == case]
        assert picked and {f["candidate"] for f in picked} == {doc["selected"]["choices"][case]}
    assert sum(doc["selected"]["times_chosen"].values()) == len(CASES)
    names = [c["name"] for c in doc["candidates"]]
    assert names == ["original", "lead-graded", "survival-only"]
    assert doc["baselines"]["climatology"]["brier_skill"]["30"] == 0.0
    assert set(doc["baselines"]) == {"climatology", "indicators_without_survival", "survival-only"}
    assert doc["diagnostics"]["fits"] == len(CASES) * 3

    files = selection.write_outputs(doc, tmp_path / "out")
    with (tmp_path / "out" / "selection.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["stream"] for r in rows} >= {"selected (nested)", "original", "climatology",
                                          "survival-only (baseline)", "indicators without survival"}
    assert len(rows) == 6 * 3 and len(files) == 3
    assert "chosen on all cases" in selection.text(doc)


@pytest.mark.slow  # a whole study of 56-case fits (prior draws): ~10 s
def test_the_inner_score_never_reads_the_held_out_case(study_parts):
    """Whatever the held-out case's record says, its fold's inner scores are the same."""
    from forecast import selection

    eng, options, candidates = study_parts
    study = _study(eng, options, candidates)
    before = selection.fold_job(CASES[0], study)
    for ctx in study.contexts:  # the held-out case's record is now another crisis's, outcome and all
        ctx.full[CASES[0]] = ctx.full["russia-ukraine-2022"]
    after = selection.fold_job(CASES[0], study)
    for name in before["candidates"]:
        assert before["candidates"][name]["inner"] == after["candidates"][name]["inner"]


def _study(eng, options, candidates):
    from forecast import selection, store
    from forecast.reference_class import load_cases

    theaters, evidence = store.load_theaters(eng), store.load_evidence(eng)
    return selection.study_of(theaters, evidence, load_cases(theaters, evidence), candidates, options)


@pytest.mark.slow  # a whole study of 56-case fits (prior draws): ~10 s
def test_a_new_theaters_likelihood_integrates_its_effect_as_monte_carlo_does(study_parts):
    """Gauss-Hermite over z ~ N(0, 1) against 5,000 plain draws of z, on a fitted (prior-draw) model."""
    from forecast import hazard, model, selection
    from forecast.backtest import loco_panels
    from forecast.sampling import stacked

    eng, options, candidates = study_parts
    ctx = _study(eng, options, candidates[:1]).contexts[0]
    fit = model.fit(loco_panels(ctx.cases, ctx.full, CASES[0]), CASES[0], ctx.profile, options.settings,
                    sample=prior_sample)
    theater = next(i for i, p in enumerate(fit.panels) if p.id == CASES[1])
    quadrature = selection.new_theater_log_lik(fit)[:, theater]

    g = model.collapse(fit.panels, fit.x_force)
    own = g["theater"] == theater
    post = stacked(fit.stage2.posterior)
    alpha, beta, sigma = post["alpha"].values, post["beta"].values, post["sigma_theater"].values
    z = np.random.default_rng(1).standard_normal(5_000)
    per_path = []
    for path in g["force"][:, own]:
        x = np.concatenate([path, g["static"][own]], axis=1)
        eta = alpha[:, None, None] + sigma[:, None, None] * z[None, :, None] + (x @ beta.T).T[:, None, :]
        per_path.append(hazard.grouped_log_lik(eta, g["days"][own], g["events"][own]).sum(axis=-1))
    stacked_ll = np.stack(per_path, axis=1).reshape(len(alpha), -1)  # (draws, paths x z)
    monte_carlo = np.logaddexp.reduce(stacked_ll, axis=1) - np.log(stacked_ll.shape[1])
    assert np.median(np.abs(quadrature - monte_carlo)) < 0.03
