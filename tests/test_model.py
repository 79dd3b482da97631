"""Correctness of the model (DESIGN §5): parameter recovery, no leakage, drivers that add up, the gate.

- Recovery: data simulated from the model's own generative process
  (forecast.simulate: the hazard sees the covariates the model computes, with the
  true stage-1 parameters) are fitted; the true values must lie in the 94%
  intervals, and the source biases and noise must be recovered closely.
- No leakage: a fit as of a date gives the same forecast, number for number,
  whether or not evidence dated after it and the outcome are in the store
  (panel-level leakage checks, reported-later rows included, are in
  test_features.py).
- Drivers: baseline plus drivers is the forecast's log-odds, per draw.
- Gate: a run with bad diagnostics is refused.

The simulation-based calibration of the whole model is benchmarks/sbc.py (not
part of the default run; its results are benchmarks/sbc_results.json).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy.special import logit

from forecast import model, predict, priors, refit, runs, sampling, simulate, store, store_schema, wording
from forecast.features import INDICATORS, build_panel

FLAGSHIP = "russia-ukraine-2022"
SMALL = dict(chains=2, cores=2, progressbar=False)


# --- the simulator is the model --------------------------------------------------------------


def _params(**over) -> dict:
    mu, _ = priors.load("default").beta_priors()
    beta = mu.copy()
    for name, value in {"force_level": 0.6, "overstay": 1.0, "sign_medical": 1.6, "claim_verified": -2.5}.items():
        beta[INDICATORS.index(name)] = value
    return {"alpha": -6.0, "beta": beta, "sigma_theater": 0.5, "bias": np.array([0.3, -0.1, 0.0, -0.2]),
            "noise": np.array([0.2, 0.35, 0.25, 0.45]), "drift": 0.15, **over}


def test_simulated_hazard_uses_exactly_the_models_covariates():
    """The closed-case panels a fit builds carry the covariates and the event the simulation drew from."""
    params = _params()
    sim = simulate.simulate(params, 12, 90, np.random.default_rng(5), garrison_share=0.5)
    assert sum(r.kind == "troops" and r.reported is not None for r in sim.evidence) > 0
    assert any(t.garrison for t in sim.theaters) and not all(t.garrison for t in sim.theaters)
    for panel, x, shock, event_day in zip(sim.panels(), sim.x, sim.shocks, sim.event_day):
        n = len(panel.days)
        assert n == (event_day + 1 if event_day >= 0 else 90)
        assert panel.event.sum() == (event_day >= 0) and (event_day < 0 or panel.event[-1] == 1)
        assert np.array_equal(panel.static, x[:n, 2:])
        stage1 = simulate.stage1_dataset(params)
        force = model.force_paths(panel, stage1, panel.days, np.array([0]), np.array([shock]))[0]
        assert np.allclose(force, x[:n, :2])
        assert x[:, 0].any() and np.isfinite(x).all()


def test_force_covariate_of_a_day_does_not_depend_on_which_days_are_asked_for():
    """The forecast's x(t | cut) must be the fit's: force_paths over future days only vs over the whole panel."""
    params = _params()
    sim = simulate.simulate(params, 6, 200, np.random.default_rng(3), estimates=(8, 12), garrison_share=0.0)
    stage1 = simulate.stage1_dataset(params)
    for theater in sim.theaters:
        rows = [r for r in sim.evidence if r.theater == theater.id]
        panel = build_panel(theater, rows, cut=theater.start + dt.timedelta(days=120))
        ahead = panel.cut + np.arange(1, 91)
        forecast = model.force_paths(panel, stage1, ahead, np.array([0]), np.array([0.0]))[0]
        whole = model.force_paths(panel, stage1, np.concatenate([panel.days, ahead]), np.array([0]),
                                  np.array([0.0]))[0][len(panel.days):]
        assert np.allclose(forecast, whole), theater.id


# --- parameter recovery ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def recovery():
    """60 simulated theaters × 120 days, fitted once (about 45 s on 2 cores, mostly compiling)."""
    params = _params()
    sim = simulate.simulate(params, 60, 120, np.random.default_rng(11), estimates=(4, 10))
    panels = sim.panels()
    fitted = model.fit(panels, panels[-1].id, priors.load("default"),
                       sampling.SamplerSettings(draws=300, tune=400, seed=11, **SMALL))
    return params, sim, fitted


def _draws(idata, name: str) -> np.ndarray:
    values = idata.posterior[name].values
    return values.reshape(-1, *values.shape[2:])


def _interval(draws: np.ndarray, prob: float = 0.94) -> tuple[np.ndarray, np.ndarray]:
    return np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)


@pytest.mark.slow
def test_recovery_fit_converges(recovery):
    _, sim, fitted = recovery
    n = len(sim.event_day)
    assert 0.2 * n <= (sim.event_day >= 0).sum() <= 0.8 * n  # informative: neither all nor none escalate
    d = model.diagnostics(fitted)
    assert d["divergences"] == 0 and d["r_hat_max"] < 1.05 and d["ess_bulk_min"] > 100, d


MOVED = ["force_level", "overstay", "sign_medical", "claim_verified"]  # betas set away from their prior means


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alpha", "sigma_theater"] + [f"beta[{b}]" for b in MOVED])
def test_recovery_hazard_parameters_inside_94_percent_intervals(recovery, name):
    params, _, fitted = recovery
    if name.startswith("beta["):
        j = INDICATORS.index(name[5:-1])
        draws, truth = _draws(fitted.stage2, "beta")[:, j], params["beta"][j]
    else:
        draws, truth = _draws(fitted.stage2, name), params[name]
    lo, hi = _interval(draws)
    assert lo <= truth <= hi, (name, truth, lo, hi)


@pytest.mark.slow
def test_recovery_every_beta_inside_its_99_percent_interval(recovery):
    params, _, fitted = recovery
    lo, hi = _interval(_draws(fitted.stage2, "beta"), 0.99)
    outside = [n for n, t, a, b in zip(INDICATORS, params["beta"], lo, hi) if not a <= t <= b]
    assert not outside, outside


@pytest.mark.slow
def test_recovery_under_the_graded_lead_time_reading_with_the_time_since_start_term():
    """Issue 18's readings together (lead-time kernels, credibility grades, a baseline hazard that
    falls with the time since the build-up began): every parameter recovered, the new one learned."""
    import dataclasses

    from forecast import selection

    reading = next(c for c in selection.load_candidates(priors.load("default"), ["lead-graded"])
                   if c.name == "lead-graded").profile.reading
    reading = dataclasses.replace(reading, crisis_age=True)
    age = INDICATORS.index("crisis_age")
    params = _params()
    params["beta"][age] = -0.4  # the hazard of week 15 is a third of week 0's: 1.5 prior sd from neutral
    sim = simulate.simulate(params, 60, 120, np.random.default_rng(12), estimates=(4, 10), reading=reading)
    panels = sim.panels()
    assert all(p.reading == reading for p in panels)
    fitted = model.fit(panels, panels[-1].id, priors.load("default"),
                       sampling.SamplerSettings(draws=500, tune=500, seed=12, **SMALL))
    d = model.diagnostics(fitted)
    # sigma_theater mixes slowest: at 2 x 300 draws its bulk ESS was 65 on one CPU, R-hat 1.05.
    assert d["divergences"] == 0 and d["r_hat_max"] < 1.05 and d["ess_bulk_min"] > 100, d
    lo, hi = _interval(_draws(fitted.stage2, "beta"), 0.99)
    outside = [n for n, t, a, b in zip(INDICATORS, params["beta"], lo, hi) if not a <= t <= b]
    assert not outside, outside
    for name in ("alpha", "sigma_theater"):
        lo, hi = _interval(_draws(fitted.stage2, name))
        assert lo <= params[name] <= hi, (name, params[name], lo, hi)
    learned = _draws(fitted.stage2, "beta")[:, age]
    assert learned.std() < 0.8 * priors.load("default").beta_priors()[1][age], learned.std()


@pytest.mark.slow
def test_recovery_the_data_teach_the_hazard(recovery):
    """Not just the prior: alpha and the effects moved away from the prior are pinned down by the data."""
    params, _, fitted = recovery
    profile = priors.load("default")
    alpha = _draws(fitted.stage2, "alpha")
    assert alpha.std() < 0.6 * profile.alpha_prior().parameters["sigma"]
    assert abs(alpha.mean() - params["alpha"]) < 0.5
    beta = _draws(fitted.stage2, "beta")
    mu, sd = profile.beta_priors()
    for name in ("sign_medical", "claim_verified"):
        j = INDICATORS.index(name)
        assert beta[:, j].std() < 0.8 * sd[j], name
        assert abs(beta[:, j].mean() - params["beta"][j]) < abs(mu[j] - params["beta"][j]), name


@pytest.mark.slow
@pytest.mark.parametrize("name, tolerance", [("bias", 0.1), ("noise", 0.08), ("drift", 0.05)])
def test_recovery_stage1_biases_noise_and_drift(recovery, name, tolerance):
    params, _, fitted = recovery
    draws = _draws(fitted.stage1, name)
    lo, hi = _interval(draws)
    truth = np.asarray(params[name])
    assert np.all((lo <= truth) & (truth <= hi)), (name, truth, lo, hi)
    assert np.all(np.abs(draws.mean(axis=0) - truth) < tolerance), (name, truth, draws.mean(axis=0))
    if name == "bias":
        assert np.allclose(draws.sum(axis=1), 0, atol=1e-8)  # anchored: biases sum to zero


@pytest.mark.slow
def test_log_likelihood_per_theater_is_the_models_and_az_loo_reads_it(recovery):
    """The stage-2 log_likelihood group holds each theater's term of the hazard likelihood, per draw."""
    import arviz as az

    _, sim, fitted = recovery
    ll = fitted.stage2.log_likelihood[model.LOG_LIKELIHOOD]
    assert ll.dims == ("chain", "draw", "theater") and ll.sizes["theater"] == len(sim.theaters)
    assert model.LOG_LIKELIHOOD not in fitted.stage2.posterior and np.isfinite(ll.values).all()
    # Summed over theaters, the recorded terms are the likelihood the sampler used (the Potential).
    built = model.build_stage2(fitted.panels, fitted.x_force, fitted.profile)
    potential = built.compile_fn(built.potentiallogp)
    post = fitted.stage2.posterior
    for chain, draw in ((0, 0), (1, 123)):
        point = {"alpha": post["alpha"].values[chain, draw], "beta": post["beta"].values[chain, draw],
                 "z": post["z"].values[chain, draw],
                 "sigma_theater_log__": np.log(post["sigma_theater"].values[chain, draw])}
        assert float(potential(point)) == pytest.approx(float(ll.values[chain, draw].sum()), rel=1e-9)
    loo = az.loo(fitted.stage2)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == len(sim.theaters)


# --- no leakage: the whole fit -------------------------------------------------------------------


@pytest.fixture
def flagship_run(sampled_store):
    """The session's published, really sampled fit of the flagship as of 2022-02-15, made on the full store."""
    run = runs.latest(FLAGSHIP)
    assert run is not None and run.published
    return run


@pytest.mark.slow
def test_fit_as_of_a_date_gives_the_same_forecast_without_later_evidence_and_outcome(sampled_store, flagship_run,
                                                                                     tmp_path):
    """Refit the flagship as of 2022-02-15 on a store holding only what was known then: same forecast.

    The published run was fitted on the full bundled store — evidence up to the invasion,
    the Union Resolve extension of 20 Feb and the outcome of 24 Feb included. The second
    store has every other case in full but the flagship only as known on the as-of date.
    Same code path (`refit.refit`), settings and seed, so any difference would be
    something the fit saw after its as-of date. (Rows dated before the as-of date but
    reported after it are checked at the panel level in test_features.py.)
    """
    as_of = dt.date.fromisoformat(flagship_run.manifest["as_of"])
    eng = store.engine(sampled_store.db_url)
    theaters, evidence = store.load_theaters(eng), store.load_evidence(eng)
    own = [r for r in evidence if r.theater == FLAGSHIP]
    later = [r for r in own if r.kind == "outcome" or r.known_on > as_of]
    assert any(r.kind == "outcome" for r in later) and any(r.kind != "outcome" for r in later)

    then = store.engine(f"sqlite:///{tmp_path / 'as-known-then.db'}")
    store_schema.upgrade(then)
    store.write(then, theaters, [r for r in evidence if r.theater != FLAGSHIP or r not in later], origin="test")
    run = refit.refit(then, FLAGSHIP, as_of)

    assert run.id != flagship_run.id and run.published
    assert run.manifest["data_hash"] == flagship_run.manifest["data_hash"]
    assert np.array_equal(run.draws()["alpha"].values, flagship_run.draws()["alpha"].values)
    assert run.forecast() == flagship_run.forecast()


@pytest.mark.slow
def test_baseline_plus_drivers_is_the_forecast_log_odds(flagship_run):
    doc = flagship_run.forecast()
    total = doc["baseline_log_odds"]["mean"] + sum(d["log_odds"] for d in doc["drivers"])
    assert total == pytest.approx(doc["log_odds_now"], abs=1e-6)
    assert {d["indicator"] for d in doc["drivers"]} == set(INDICATORS)

    # Per draw: baseline + contributions is the log-odds of the next day's hazard, which the curve starts from.
    draws = flagship_run.draws()
    per_draw = draws["baseline"].values + draws["contribution"].values.sum(axis=1)
    assert np.allclose(per_draw, logit(draws["cumulative"].values[:, 0]), atol=1e-6)
    assert np.allclose(draws["contribution"].values, draws["indicator_value"].values * draws["beta"].values)
    assert predict.summarise(draws) == doc


@pytest.mark.slow
def test_forecast_document_is_coherent(flagship_run):
    doc = flagship_run.forecast()
    p = [doc["prob"][str(h)]["mean"] for h in predict.HORIZONS]
    assert 0 <= p[0] <= p[1] <= p[2] <= 1
    for band in doc["prob"].values():
        assert band["lo"] <= band["mean"] <= band["hi"]
    curve = [c["mean"] for c in doc["cumulative"]]
    assert len(curve) == max(predict.HORIZONS) and np.all(np.diff(curve) >= -1e-9)
    assert doc["prob"]["90"]["mean"] == pytest.approx(curve[-1], abs=1e-4)
    t = doc["timing"]
    assert t["p10"] <= t["median"] <= t["p90"]
    assert doc["words"] == wording.words(doc["prob"]["30"]["mean"])
    assert doc["history"][-1]["date"] == doc["as_of"] == flagship_run.manifest["as_of"]
    assert doc["history"][-1]["mean"] == pytest.approx(doc["prob"]["30"]["mean"], abs=1e-4)


@pytest.mark.slow
def test_published_run_passed_the_gate(flagship_run):
    assert runs.gate(flagship_run.manifest["diagnostics"]) == []
    assert flagship_run.manifest["status"] == "published" and flagship_run.manifest["reason"] is None


# --- the convergence gate --------------------------------------------------------------------------

GOOD = {"r_hat_max": 1.004, "ess_bulk_min": 812.0, "divergences": 0}


@pytest.mark.parametrize("bad, reason", [
    ({"r_hat_max": 1.02}, "R-hat 1.020 > 1.01"),
    ({"r_hat_max": float("nan")}, "R-hat"),
    ({"ess_bulk_min": 399.0}, "bulk ESS 399 < 400"),
    ({"ess_bulk_min": float("nan")}, "bulk ESS"),
    ({"divergences": 3}, "3 divergent transitions"),
])
def test_gate_rejects_bad_diagnostics(bad, reason):
    assert runs.gate(GOOD) == []
    assert runs.gate({**GOOD, "r_hat_max": 1.01, "ess_bulk_min": 400}) == []  # the bounds themselves pass
    reasons = runs.gate({**GOOD, **bad})
    assert len(reasons) == 1 and reason in reasons[0], reasons


def test_gate_lists_every_reason():
    assert len(runs.gate({"r_hat_max": 1.2, "ess_bulk_min": 10, "divergences": 1})) == 3


def test_words_follow_the_estimative_bands():
    cases = {0.01: "almost no chance", 0.1: "very unlikely", 0.3: "unlikely", 0.5: "roughly even",
             0.7: "likely", 0.9: "very likely", 0.99: "almost certain"}
    for p, word in cases.items():
        assert wording.words(p) == word


def test_a_refits_stage1_sizes_are_rounded_up_so_the_next_weeks_refit_keeps_its_graph():
    """model.stage1_bucket: the padded sizes hold the data's and do not change with one more week of estimates."""
    sim = simulate.simulate(_params(), 8, 120, np.random.default_rng(4), estimates=(6, 10))
    sizes = []
    for cut in (60, 67):
        panels = [build_panel(t, [r for r in sim.evidence if r.theater == t.id],
                              cut=t.start + dt.timedelta(days=cut)) for t in sim.theaters]
        knots = model.stage1_knots(panels)
        n_start, n_step = int(knots["first"].sum()), int((~knots["first"].astype(bool)).sum())
        bucket = model.stage1_bucket(panels)
        assert bucket[0] >= n_start and bucket[1] >= n_step and bucket[0] % 8 == 0 and bucket[1] % 64 == 0
        sizes.append((n_step, bucket))
        model.build_stage1(panels, bucket)  # the padded model builds
    assert sizes[0][0] < sizes[1][0] and sizes[0][1] == sizes[1][1], sizes  # more estimates, same graph


def test_models_that_differ_only_in_their_theater_count_never_share_a_compiled_model():
    """The compile cache's key holds the parameters' shapes: z's length comes from a coordinate (None in its type)."""
    keys = set()
    for n in (3, 5):
        panels = simulate.simulate(_params(), n, 40, np.random.default_rng(1)).panels()
        rows = sum(len(p.days) for p in panels)
        keys.add(sampling.fingerprint(model.build_stage2(panels, np.zeros((model.N_PATHS, rows, 2)),
                                                         priors.load("default")), model.STAGE2_VARS))
    assert len(keys) == 2
