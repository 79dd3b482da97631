r"""The escalation model (DESIGN §5): two stages, fitted in order ("cut").

Stage 1 — force level. Each theater's log force level is a Brownian random
walk in weeks from the crisis start,

    L_c(t) = L_c(0) + drift * W(t),   L_c(0) ~ Normal(MU0, TAU0),

seen through every troop estimate i of source type s(i):

    log(estimate_i) ~ Normal(L_c(t_i) + bias[s(i)], noise[s(i)]),

with `bias` summing to zero over source types (only relative biases are
identifiable) and bias, noise, drift pooled across theaters. The walk is
sampled on knots at the theater's estimate dates (the Brownian motion seen at
those times: no weekly knot between two estimates adds information), first
knot centred, later increments non-centred:

    L_c(k) = L_c(k-1) + drift * sqrt(weeks between knots) * step_k,   step_k ~ Normal(0, 1)

Stage 1 never sees an outcome, so whether a war followed cannot revise the
force level.

Filtering. For each stage-1 draw the *filtered* level (estimates known by day
t only) has a closed-form mean and variance (Gaussian conditioning). The hazard
sees it through K imputation paths per theater, each from a different stage-1
draw plus its filtering uncertainty, as log2 ratios:

    force_level  = (L(t) - baseline) / ln 2      (baseline: garrison, else first known level; 0 until known)
    force_growth = force_level(t) - force_level(t - 28 days)

evaluated on weekly knots (constant within each week of the crisis).

Stage 2 — hazard. A discrete-time hazard of escalation onset over
theater-days, partially pooled (non-centred):

    logit h[c,t] = alpha + sigma_theater * z_c + sum_j beta_j x[c,t,j],   z_c ~ Normal(0, 1)
    y[c,t] ~ Bernoulli(h[c,t])  over at-risk days (event day last; censored days all 0)

Days of one theater and week with identical covariates are merged (n days, e
events: e log h + (n - e) log(1 - h)), which is exact and ~5x cheaper.

The measurement error of the force covariates is integrated by simulated
likelihood over the K paths of each theater:

    log p(y_c) = log mean_k prod_t p(y[c,t] | x_k[c,t])

The per-theater simulated log-likelihood is also kept, per draw, as the
`log_likelihood` group of the stage-2 posterior (variable `hazard`, dim
`theater`), so `az.loo` can score leave-one-theater-out fit.

Priors for alpha, beta and sigma_theater come from the analyst's profile, the
stage-1 priors from `forecast.priors.STAGE1_PRIORS`. The hazard formula itself
is `forecast.hazard.log_odds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from forecast import hazard
from forecast.features import FORCE, FORCE_GROWTH_DAYS, INDICATORS, TheaterPanel, crisis_week
from forecast.priors import STAGE1_PRIORS, Profile
from forecast.sampling import SamplerSettings, sample, stacked
from forecast.schema import SOURCE_TYPES

MU0 = STAGE1_PRIORS["level_start"].parameters["mu"]  # a theater's initial log force level
TAU0 = STAGE1_PRIORS["level_start"].parameters["sigma"]
STAGE1_VARS = ["bias", "noise", "drift"]  # kept from stage 1: the latent knots are recomputed by filtering
HAZARD_PARAMS = ["alpha", "beta", "sigma_theater"]  # the hazard's pooled parameters
STAGE2_VARS = HAZARD_PARAMS + ["z"]
LOG_LIKELIHOOD = "hazard"  # stage 2's per-theater log-likelihood, moved to the log_likelihood group
N_PATHS = 12  # imputation paths of the filtered force level per theater
LN2 = np.log(2)


# --- stage 1: force level --------------------------------------------------------


def _weeks(days: np.ndarray, origin: np.datetime64) -> np.ndarray:
    return (days - origin).astype(float) / 7.0


def _origin(panel: TheaterPanel) -> np.datetime64:
    return min(panel.start, panel.troops.date.min()) if len(panel.troops) else panel.start


def stage1_knots(panels: list[TheaterPanel]) -> dict[str, np.ndarray]:
    """The random walk's knots: each theater's distinct estimate days, in weeks from its origin.

    `chain` sums increments along each theater (lower-triangular ones within a
    theater), `scale_*` give each increment's sd as TAU0 and drift multipliers,
    `knot` maps every estimate to its knot.
    """
    weeks, first, knot, y, source = [], [], [], [], []
    for p in panels:
        if not len(p.troops):
            continue
        t = _weeks(p.troops.date, _origin(p))
        unique = np.unique(t)
        knot.extend(len(weeks) + np.searchsorted(unique, t))
        first.extend([True] + [False] * (len(unique) - 1))
        weeks.extend(unique)
        y.extend(p.troops.log_estimate)
        source.extend(p.troops.source_type)
    weeks, first = np.array(weeks), np.array(first)
    gap = np.where(first, weeks, np.diff(weeks, prepend=0.0))  # first knot: time since the origin
    owner = np.cumsum(first) - 1
    chain = (owner[:, None] == owner[None, :]) & (np.arange(len(weeks))[:, None] >= np.arange(len(weeks))[None, :])
    return {"chain": chain.astype(float), "first": first.astype(float), "gap": gap,
            "knot": np.array(knot), "y": np.array(y), "source": np.array(source)}


STAGE1_BUCKET = (8, 64)  # latent sizes (starts, increments) a refit rounds up to: see stage1_bucket


def stage1_bucket(panels: list[TheaterPanel]) -> tuple[int, int]:
    """Stage 1's latent sizes rounded up to STAGE1_BUCKET, for a refit.

    A theater's next refit usually brings a few more troop estimates; with the sizes rounded
    up its stage-1 graph is unchanged, so a long-lived process (the dashboard, a warm Dask
    worker) reuses the compiled model with the new data instead of compiling again.
    """
    first = stage1_knots(panels)["first"].astype(bool)
    return tuple(-(-int(n) // b) * b for n, b in zip((first.sum(), (~first).sum()), STAGE1_BUCKET))


def stage1_data(k: dict, pad: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The knots as data: where first knots and increments sit, and their gaps (padded to `pad`)."""
    first = k["first"].astype(bool)
    n_start, n_step = int(first.sum()), int((~first).sum())
    size = pad or (n_start, n_step)
    if size[0] < n_start or size[1] < n_step:
        raise ValueError(f"stage 1 pad {size} is smaller than the data's ({n_start}, {n_step})")
    gap_first, gap_step = np.zeros(size[0]), np.zeros(size[1])
    gap_first[:n_start], gap_step[:n_step] = k["gap"][first], k["gap"][~first]
    return {"chain": k["chain"], "first_at": np.flatnonzero(first), "step_at": np.flatnonzero(~first),
            "gap_first": gap_first, "gap_step": gap_step, "knot": k["knot"], "y": k["y"], "source": k["source"]}


def build_stage1(panels: list[TheaterPanel], pad: tuple[int, int] | None = None) -> pm.Model:
    """Latent log level on knots (non-centred increments), seen through biased, noisy sources.

    The data enter as containers and `pad` (starts, increments) can fix the latent sizes, so a
    backtest reuses one compiled model across reference classes; padded entries touch no estimate.
    """
    k = stage1_knots(panels)
    coords = {"source_type": SOURCE_TYPES, "knot": np.arange(len(k["gap"])), "estimate": np.arange(len(k["y"]))}
    with pm.Model(coords=coords) as model:
        bias, noise, drift = (STAGE1_PRIORS[name].create_variable(name) for name in STAGE1_VARS)

        # First knot centred (each is pinned by its own estimates), later increments non-centred.
        data = stage1_data(k, pad)
        d = {name: pm.Data(f"stage1_{name}", value) for name, value in data.items()}
        start = pm.Normal("start", MU0, pt.sqrt(TAU0**2 + drift**2 * d["gap_first"]), shape=len(data["gap_first"]))
        step = pm.Normal("step", 0.0, 1.0, shape=len(data["gap_step"]))
        moves = pt.zeros(d["chain"].shape[0])
        moves = pt.set_subtensor(moves[d["first_at"]], start[: d["first_at"].shape[0]])
        moves = pt.set_subtensor(moves[d["step_at"]], (drift * pt.sqrt(d["gap_step"]) * step)[: d["step_at"].shape[0]])
        level = pt.dot(d["chain"], moves)  # L at each knot
        src = d["source"]
        pm.Normal("log_estimate", mu=level[d["knot"]] + bias[src], sigma=noise[src], observed=d["y"])
    return model


# --- filtering: the level known on each day ------------------------------------------


def filtered_level(panel: TheaterPanel, bias, noise, drift, days: np.ndarray):
    """Mean and variance (draws × days) of L(t) given the estimates visible by each day.

    `bias`, `noise`: (draws, source types); `drift`: (draws,). Days with no
    visible estimate get NaN (no information about the level).
    """
    draws = len(drift)
    mean = np.full((draws, len(days)), np.nan)
    var = np.full((draws, len(days)), np.nan)
    obs = panel.troops
    if not len(obs):
        return mean, var
    origin = _origin(panel)
    t_obs = _weeks(obs.date, origin)
    t_days = _weeks(days, origin)
    known_by = np.minimum(days, panel.cut)
    for epoch in np.unique(obs.visible):
        idx = np.flatnonzero(obs.visible <= epoch)
        in_epoch = known_by >= epoch
        later = obs.visible[obs.visible > epoch]
        if later.size:
            in_epoch &= known_by < later.min()
        if not in_epoch.any():
            continue
        t = t_obs[idx]
        s = obs.source_type[idx]
        t_star = t.max()
        K = TAU0**2 + drift[:, None, None] ** 2 * np.minimum(t[:, None], t[None, :])
        K = K + np.eye(len(idx)) * noise[:, s][:, :, None] ** 2
        k = TAU0**2 + drift[:, None] ** 2 * t[None, :]  # Cov(L(t*), y), since t_i <= t*
        resid = obs.log_estimate[idx][None, :] - MU0 - bias[:, s]
        solved = np.linalg.solve(K, np.stack([resid, k], axis=-1))
        m_star = MU0 + np.einsum("di,di->d", k, solved[..., 0])
        v_star = TAU0**2 + drift**2 * t_star - np.einsum("di,di->d", k, solved[..., 1])
        ahead = np.maximum(t_days[in_epoch] - t_star, 0)
        mean[:, in_epoch] = m_star[:, None]
        var[:, in_epoch] = v_star[:, None] + drift[:, None] ** 2 * ahead[None, :]
    return mean, np.maximum(var, 0)


def week_of(panel: TheaterPanel, days: np.ndarray) -> np.ndarray:
    """Index of the weekly knot (counted from the crisis start) each day falls in."""
    return crisis_week(days, panel.start)


def force_paths(panel: TheaterPanel, stage1: xr.Dataset, days: np.ndarray, picks: np.ndarray,
                shocks: np.ndarray) -> np.ndarray:
    """Force covariates (paths × days × 2), constant within each weekly knot.

    force_level: log2 of the filtered level over the garrison (else over the
    first known level); 0 until an estimate is visible. force_growth: the
    change of force_level over the last FORCE_GROWTH_DAYS.
    """
    if not panel.reading.indicators:  # the survival-only reading: no force covariates either
        return np.zeros((len(picks), len(days), len(FORCE)))
    start = panel.start
    knot_day = start + week_of(panel, days) * 7
    grid = np.unique(np.concatenate([knot_day, knot_day - FORCE_GROWTH_DAYS]))
    first_known = None  # without a garrison the baseline is the level at the first knot an estimate is visible
    if panel.log_garrison is None and len(panel.troops):
        weeks = -(-(panel.troops.visible.min() - start).astype(int) // 7)  # ceil: the first knot on or after it
        first_known = start + max(weeks, -(FORCE_GROWTH_DAYS // 7)) * 7
        grid = np.union1d(grid, [first_known])
    bias, noise = stage1["bias"].values[picks], stage1["noise"].values[picks]
    mean, var = filtered_level(panel, bias, noise, stage1["drift"].values[picks], grid)
    level = mean + np.sqrt(var) * shocks[:, None]
    known = ~np.isnan(level[0])
    ratio = np.zeros_like(level)
    if known.any():
        baseline = panel.log_garrison if first_known is None else level[:, [np.searchsorted(grid, first_known)]]
        ratio[:, known] = (level[:, known] - baseline) / LN2
    now = np.searchsorted(grid, knot_day)
    before = np.searchsorted(grid, knot_day - FORCE_GROWTH_DAYS)
    return np.stack([ratio[:, now], ratio[:, now] - ratio[:, before]], axis=-1)


# --- stage 2: hazard -------------------------------------------------------------------


def collapse(panels: list[TheaterPanel], x_force: np.ndarray) -> dict[str, np.ndarray]:
    """Merge theater-days with identical covariates (same theater, week, static row).

    The likelihood of n such days with e events is e log h + (n - e) log(1 - h),
    so the hazard is evaluated once per group instead of once per day.
    """
    theater = np.concatenate([np.full(len(p.days), i) for i, p in enumerate(panels)])
    week = np.concatenate([week_of(p, p.days) for p in panels])
    x_static = np.concatenate([p.static for p in panels])
    keys = np.column_stack([theater, week, x_static])
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    group = group.ravel()
    event = np.concatenate([p.event for p in panels]).astype(float)
    return {"theater": theater[first], "static": x_static[first], "force": x_force[:, first],
            "days": np.bincount(group).astype(float), "events": np.bincount(group, weights=event)}


def hazard_priors(profile: Profile):
    """alpha, beta (dims "indicator") and sigma_theater from the analyst's profile, in the current model."""
    from pymc_extras.prior import Prior

    mu, sigma = profile.beta_priors()
    alpha = profile.alpha_prior().create_variable("alpha")
    beta = Prior("Normal", mu=mu, sigma=sigma, dims="indicator").create_variable("beta")
    sigma_theater = profile.spread_prior().create_variable("sigma_theater")
    return alpha, beta, sigma_theater


def build_stage2(panels: list[TheaterPanel], x_force: np.ndarray, profile: Profile) -> pm.Model:
    """x_force: (paths, rows, 2), rows = theater-days in panel order."""
    g = collapse(panels, x_force)
    rows_of = np.eye(len(panels))[g["theater"]]  # (groups, theaters): sums groups per theater
    coords = {"indicator": INDICATORS, "theater": [p.id for p in panels]}
    with pm.Model(coords=coords) as model:
        alpha, beta, sigma_theater = hazard_priors(profile)
        z = pm.Normal("z", 0.0, 1.0, dims="theater")  # non-centred theater effects

        # Data as containers, so a backtest can reuse one compiled model across reference classes.
        d = {name: pm.Data(f"stage2_{name}", value) for name, value in
             {**{k: g[k] for k in ("theater", "static", "force", "days", "events")}, "rows_of": rows_of}.items()}
        # The static covariates are the same on every path: their term is computed once.
        eta_static = hazard.log_odds(alpha, sigma_theater, z[d["theater"]], d["static"], beta[len(FORCE):])
        eta = eta_static[None, :] + hazard.covariate_term(d["force"], beta[: len(FORCE)])  # (paths, groups)
        loglik_groups = hazard.grouped_log_lik(eta, d["days"], d["events"], lambda e: pt.log(pt.sigmoid(e)))
        per_theater = pt.dot(loglik_groups, d["rows_of"])  # (paths, theaters)
        loglik = pt.logsumexp(per_theater, axis=0) - np.log(x_force.shape[0])
        pm.Potential("hazard_likelihood", loglik.sum())
        # The same per-theater terms, recorded per draw (not a second likelihood: it adds no density).
        pm.Deterministic(LOG_LIKELIHOOD, loglik, dims="theater")
    return model


# --- fitting -----------------------------------------------------------------------------


@dataclass
class Fit:
    """A fitted model: what prediction and the run store need."""

    panels: list[TheaterPanel]
    target: str
    profile: Profile
    stage1: object  # az.InferenceData
    stage2: object  # az.InferenceData, with the per-theater log_likelihood group
    x_force: np.ndarray  # (paths, rows, 2)
    picks: np.ndarray  # stage-1 draw index per path
    shocks: np.ndarray  # filtering shock per path and theater: (paths, theaters)
    seconds: dict

    def panel(self, theater: str) -> TheaterPanel:
        return next(p for p in self.panels if p.id == theater)

    @property
    def stage1_draws(self) -> xr.Dataset:
        return stacked(self.stage1.posterior)


def all_force_paths(panels, stage1_draws: xr.Dataset, picks, shocks) -> np.ndarray:
    return np.concatenate([force_paths(p, stage1_draws, p.days, picks, shocks[:, i])
                           for i, p in enumerate(panels)], axis=1)


def fit(panels: list[TheaterPanel], target: str, profile: Profile, settings: SamplerSettings,
        compiler=None, stage1_pad: tuple[int, int] | None = None, sample=sample) -> Fit:
    """Stage 1, then the filtered force paths, then stage 2.

    `compiler`, `sample`: see `forecast.sampling.sample` (its stand-in in fast tests); `stage1_pad`: build_stage1.
    """
    seconds: dict[str, float] = {}
    stage1 = fit_stage1(panels, settings, seconds, compiler, stage1_pad, sample)
    return fit_stage2(panels, target, profile, settings, stage1, dict(seconds), compiler, sample)


def fit_stage1(panels: list[TheaterPanel], settings: SamplerSettings, seconds: dict, compiler=None,
               stage1_pad: tuple[int, int] | None = None, sample=sample):
    """Stage 1 alone: it reads only troop estimates, so fits that differ in their reading share it."""
    return sample(build_stage1(panels, stage1_pad), settings, STAGE1_VARS, "stage1", seconds,
                  settings.stage1_target_accept, draws=settings.draws * settings.stage1_draws_factor,
                  compiler=compiler)


def fit_stage2(panels: list[TheaterPanel], target: str, profile: Profile, settings: SamplerSettings, stage1,
               seconds: dict, compiler=None, sample=sample) -> Fit:
    """The filtered force paths from `stage1`'s draws, then stage 2 (`seconds` already holds stage 1's)."""
    rng = np.random.default_rng(settings.seed)
    draws1 = stacked(stage1.posterior)
    picks = rng.choice(draws1.sizes["sample"], size=N_PATHS, replace=False)
    shocks = rng.standard_normal((N_PATHS, len(panels)))
    x_force = all_force_paths(panels, draws1, picks, shocks)

    stage2 = sample(build_stage2(panels, x_force, profile), settings, STAGE2_VARS + [LOG_LIKELIHOOD], "stage2",
                    seconds, settings.stage2_target_accept, low_rank=True, compiler=compiler)
    return Fit(panels, target, profile, stage1, with_log_likelihood(stage2), x_force, picks, shocks, seconds)


def with_log_likelihood(stage2):
    """Stage 2 with its recorded per-theater log-likelihood moved from the posterior to `log_likelihood`."""
    ll = stage2.posterior[LOG_LIKELIHOOD]
    stage2.posterior = stage2.posterior.drop_vars(LOG_LIKELIHOOD)
    stage2.add_groups(log_likelihood=ll.to_dataset())
    return stage2


def stage_diagnostics(fit: Fit) -> dict[str, dict]:
    """Per stage: max R-hat, min bulk ESS and the parameter that sets it, divergences (sampled parameters)."""
    import arviz as az

    out = {}
    for stage, idata, names in (("stage1", fit.stage1, STAGE1_VARS), ("stage2", fit.stage2, STAGE2_VARS)):
        summary = az.summary(idata, var_names=names, kind="diagnostics")
        out[stage] = {"r_hat_max": float(summary["r_hat"].max()), "ess_bulk_min": float(summary["ess_bulk"].min()),
                      "limiting_param": str(summary["ess_bulk"].idxmin()),
                      "divergences": int(idata.sample_stats["diverging"].sum())}
    return out


def diagnostics(fit: Fit) -> dict:
    """Convergence over both stages: max R-hat, min bulk ESS, divergences (of the sampled parameters)."""
    stages = stage_diagnostics(fit).values()
    return {"r_hat_max": max(s["r_hat_max"] for s in stages), "ess_bulk_min": min(s["ess_bulk_min"] for s in stages),
            "divergences": sum(s["divergences"] for s in stages),
            "sampling_seconds": round(sum(v for k, v in fit.seconds.items() if k.endswith("_sampling")), 2),
            "compile_seconds": round(sum(v for k, v in fit.seconds.items() if k.endswith("_compile")), 2),
            "stage_seconds": {k: round(v, 2) for k, v in fit.seconds.items()}}
