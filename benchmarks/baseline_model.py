r"""The baseline a user would write by hand for the same model (issue 8).

Same data, same priors, same likelihood as `forecast.model` — only the way it is
written and sampled differs:

- stage 1: the latent log force level on the same knots (`model.stage1_knots`),
  written as a *centred* random walk, one vector variable per knot position
  across theaters:

      L_0[c] ~ Normal(MU0, sqrt(TAU0^2 + drift^2 * gap_0[c]))
      L_k[c] ~ Normal(L_{k-1}[c], drift * sqrt(gap_k[c]))

  with the project's own priors of bias, noise and drift (copied from its stage-1
  model, so they follow any change there);
- stage 2: the same hazard with *centred* theater effects
  `theta_c ~ Normal(alpha, sigma_theater)`, evaluated on every theater-day
  (no collapsing of identical weekly rows), with the same simulated likelihood
  over the same number of force-imputation paths, built by the package's own
  `model.all_force_paths` from this baseline's stage-1 posterior;
- both stages sampled with `pm.sample()` and PyMC's defaults (NUTS,
  jitter+adapt_diag, 1000 tune + 1000 draws, target_accept 0.8,
  chains = max(2, cores), cores = min(4, CPUs // 2): on 2 CPUs, 2 chains run one after
  the other on one core). Only `random_seed` (for
  reproducibility) and `progressbar=False` (display only) are passed.

`fit_baseline` returns both posteriors and the timing of each stage: compile
(everything in `pm.sample` before the sampling loop starts: graph compilation and
NUTS initialisation), sampling (PyMC's own `sampling_time`: the tune + draw loop
of all chains) and post-processing (trace conversion and PyMC's convergence
checks).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pymc as pm
import pytensor.tensor as pt

from forecast import model as project
from forecast.features import FORCE, INDICATORS, TheaterPanel
from forecast.priors import STAGE1_PRIORS, Profile
from forecast.schema import SOURCE_TYPES

RANDOM_SEED = 20220224  # the project's seed; sets RNG state only, not a sampler setting


# --- stage 1: centred random walk ---------------------------------------------------------


def knot_positions(k: dict) -> tuple[np.ndarray, np.ndarray]:
    """(is a theater's first knot, position of each knot within its theater: 0 for the first)."""
    first = k["first"].astype(bool)
    owner = np.cumsum(first) - 1  # theater (with estimates) of each knot
    return first, np.arange(len(first)) - np.flatnonzero(first)[owner]


def build_stage1_centred(panels: list[TheaterPanel]) -> pm.Model:
    """Log force level on the project's knots as a centred random walk (one RV per knot position)."""
    k = project.stage1_knots(panels)
    first, position = knot_positions(k)
    coords = {"source_type": SOURCE_TYPES, "estimate": np.arange(len(k["y"]))}
    with pm.Model(coords=coords) as model:
        # The project's stage-1 priors, exactly (forecast.priors.STAGE1_PRIORS).
        bias, noise, drift = (STAGE1_PRIORS[name].create_variable(name) for name in project.STAGE1_VARS)

        level = pt.zeros(len(first))
        for j in range(int(position.max()) + 1):
            at = np.flatnonzero(position == j)
            gap = k["gap"][at]
            if j == 0:
                value = pm.Normal(f"level_{j}", mu=project.MU0,
                                  sigma=pt.sqrt(project.TAU0**2 + drift**2 * gap), shape=len(at))
            else:
                value = pm.Normal(f"level_{j}", mu=level[at - 1], sigma=drift * np.sqrt(gap), shape=len(at))
            level = pt.set_subtensor(level[at], value)
        src = k["source"]
        pm.Normal("log_estimate", mu=level[k["knot"]] + bias[src], sigma=noise[src], observed=k["y"],
                  dims="estimate")
    return model


# --- stage 2: centred theater effects, daily rows ----------------------------------------


def daily_rows(panels: list[TheaterPanel]) -> dict[str, np.ndarray]:
    return {"theater": np.concatenate([np.full(len(p.days), i) for i, p in enumerate(panels)]),
            "static": np.concatenate([p.static for p in panels]),
            "event": np.concatenate([p.event for p in panels]).astype(int)}


def build_stage2_centred(panels: list[TheaterPanel], x_force: np.ndarray, profile: Profile) -> pm.Model:
    """x_force: (paths, theater-days, 2), theater-days in panel order (as `model.build_stage2`)."""
    rows = daily_rows(panels)
    rows_of = np.eye(len(panels))[rows["theater"]]  # (days, theaters)
    coords = {"indicator": INDICATORS, "theater": [p.id for p in panels]}
    with pm.Model(coords=coords) as model:
        alpha, beta, sigma_theater = project.hazard_priors(profile)  # the project's priors, exactly
        theta = pm.Normal("theta", mu=alpha, sigma=sigma_theater, dims="theater")  # centred

        eta_static = theta[rows["theater"]] + pt.dot(rows["static"], beta[len(FORCE):])
        eta = eta_static[None, :] + pt.dot(x_force, beta[: len(FORCE)])  # (paths, days)
        loglik_days = pm.logp(pm.Bernoulli.dist(logit_p=eta), rows["event"][None, :])
        per_theater = pt.dot(loglik_days, rows_of)  # (paths, theaters)
        loglik = pt.logsumexp(per_theater, axis=0) - np.log(x_force.shape[0])
        pm.Potential("hazard_likelihood", loglik.sum())
    return model


# --- sampling with PyMC's defaults ------------------------------------------------------------


def pymc_defaults() -> dict:
    """The defaults `pm.sample` uses on this machine, read from its signature and its core rule."""
    sig = inspect.signature(pm.sample).parameters
    cores = min(4, pm.sampling.mcmc._cpu_count())
    return {"sampler": "PyMC NUTS (pm.sample defaults)", "draws": sig["draws"].default,
            "tune": sig["tune"].default, "init": sig["init"].default,
            "target_accept": 0.8, "cores": cores, "chains": max(2, cores),
            "discard_tuned_samples": sig["discard_tuned_samples"].default,
            "compute_convergence_checks": sig["compute_convergence_checks"].default,
            "pymc": pm.__version__, "passed": {"random_seed": RANDOM_SEED, "progressbar": False}}


class _SamplingStart(logging.Handler):
    """Notes when pm.sample logs the start of its sampling loop ("Multiprocess sampling ...")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.at: float | None = None

    def emit(self, record):
        message = record.getMessage()
        if self.at is None and ("sampling (" in message or "Sequential sampling" in message):
            self.at = record.created


def timed_sample(model: pm.Model) -> tuple[az.InferenceData, dict]:
    """pm.sample() with its defaults; seconds split into compile, sampling and post-processing."""
    logger = logging.getLogger("pymc")
    handler = _SamplingStart()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started_wall = time.time()
    started = time.perf_counter()
    try:
        with model:
            idata = pm.sample(random_seed=RANDOM_SEED, progressbar=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    wall = time.perf_counter() - started
    sampling = float(idata.posterior.attrs["sampling_time"])
    compile_ = (handler.at - started_wall) if handler.at is not None else None
    return idata, {"compile": compile_, "sampling": sampling,
                   "post": wall - sampling - (compile_ or 0.0), "wall": wall}


@dataclass
class BaselineFit:
    stage1: az.InferenceData
    stage2: az.InferenceData
    x_force: np.ndarray
    seconds: dict = field(default_factory=dict)


def fit_baseline(panels: list[TheaterPanel], profile: Profile) -> BaselineFit:
    """Stage 1, the force paths (package code, the project's seed), then stage 2 — both with pm.sample()."""
    stage1, s1 = timed_sample(build_stage1_centred(panels))
    draws1 = stage1.posterior.stack(sample=("chain", "draw")).transpose("sample", ...)
    rng = np.random.default_rng(RANDOM_SEED)
    picks = rng.choice(draws1.sizes["sample"], size=project.N_PATHS, replace=False)
    shocks = rng.standard_normal((project.N_PATHS, len(panels)))
    x_force = project.all_force_paths(panels, draws1, picks, shocks)
    stage2, s2 = timed_sample(build_stage2_centred(panels, x_force, profile))
    seconds = {f"stage1_{k}": v for k, v in s1.items()} | {f"stage2_{k}": v for k, v in s2.items()}
    return BaselineFit(stage1, stage2, x_force, seconds)


# --- proof that it is the same model ------------------------------------------------------------


def equivalence(panels: list[TheaterPanel], x_force: np.ndarray, profile: Profile, points: int = 5,
                seed: int = 0) -> dict:
    """Max |difference| of the joint log density, project vs baseline, at random matched points.

    Centred and non-centred forms of one model differ only by the Jacobian of the
    reparameterisation: log p_centred(L) = log p_noncentred(step) - sum log(drift sqrt(gap))
    for the random walk, and log p(theta) = log p(z) - n_theaters log(sigma_theater) for the
    theater effects. Everything else (priors, likelihood; daily rows vs collapsed groups)
    must agree exactly, so both differences should be ~1e-9.
    """
    rng = np.random.default_rng(seed)
    out = {}

    # stage 1
    k = project.stage1_knots(panels)
    first, position = knot_positions(k)
    proj, base = project.build_stage1(panels), build_stage1_centred(panels)
    logp_p, logp_b = proj.compile_logp(), base.compile_logp()
    worst = 0.0
    for _ in range(points):
        x = {name: v + rng.normal(0, 0.5, np.shape(v)) for name, v in proj.initial_point().items()}
        drift = float(np.exp(x["drift_log__"]))
        moves = np.zeros(len(first))
        moves[first] = x["start"]
        moves[~first] = drift * np.sqrt(k["gap"][~first]) * x["step"]
        level = k["chain"] @ moves
        y = {name: x[name] for name in ("bias_zerosum__", "noise_log__", "drift_log__")}
        for j in range(int(position.max()) + 1):
            y[f"level_{j}"] = level[position == j]
        jacobian = np.sum(np.log(drift * np.sqrt(k["gap"][~first])))
        worst = max(worst, abs(logp_b(y) - (logp_p(x) - jacobian)))
    out["stage1_max_abs_diff"] = float(worst)

    # stage 2 (the same force paths in both)
    proj, base = project.build_stage2(panels, x_force, profile), build_stage2_centred(panels, x_force, profile)
    logp_p, logp_b = proj.compile_logp(), base.compile_logp()
    worst = 0.0
    for _ in range(points):
        x = {name: v + rng.normal(0, 0.5, np.shape(v)) for name, v in proj.initial_point().items()}
        sigma = float(np.exp(x["sigma_theater_log__"]))
        y = {name: x[name] for name in ("alpha", "beta", "sigma_theater_log__")} | {
            "theta": x["alpha"] + sigma * x["z"]}
        jacobian = len(panels) * np.log(sigma)
        worst = max(worst, abs(logp_b(y) - (logp_p(x) - jacobian)))
    out["stage2_max_abs_diff"] = float(worst)
    return out
