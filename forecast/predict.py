r"""Prediction: from posterior draws to the forecast an analyst reads (DESIGN §5).

For posterior draw d the daily hazard on a future day t (known by as-of date c) is

    h_d(t) = sigmoid(alpha_d + sigma_d z_d + beta_d . x(t | c))      (forecast.hazard)

where x(t | c) uses only evidence visible by c: scheduled exercises stay on
their calendar (so overstay switches on by itself when an announced end passes),
claims and arrived units persist, signs fade unless reported again, and the force level
continues its random walk from the filtered level (its variance grows with the
drift). Then

    P_d(escalation within H days) = 1 - prod_{t <= H} (1 - h_d(t))

Per-draw quantities are kept (`draws.nc` of a run), and every summary —
the stored forecast and the dashboard's reweighted one — comes from
`summarise(draws, weights)`, so the two cannot disagree.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import xarray as xr

from forecast import hazard, reweight, wording
from forecast.features import INDICATORS, TheaterPanel, build_panel, static_covariates
from forecast.model import N_PATHS, force_paths
from forecast.sampling import stacked

HORIZONS = (7, 30, 90)
HISTORY_STEP_DAYS = 7
INTERVAL = (0.1, 0.9)  # 80% intervals
MAX_DRAWS = 2000
def iso(day) -> str:
    """YYYY-MM-DD of a datetime64 of any unit (NetCDF round trips turn days into nanoseconds)."""
    return str(np.datetime64(day, "D"))


# --- per-draw quantities ------------------------------------------------------------------


def hazard_params(stage2: xr.Dataset, target: str) -> dict[str, np.ndarray]:
    """alpha, beta, sigma_theater and the target's z, one row per posterior draw."""
    post = stacked(stage2)
    return {"alpha": post["alpha"].values, "beta": post["beta"].values,
            "sigma_theater": post["sigma_theater"].values, "z": post["z"].sel(theater=target).values}


def future_covariates(panel: TheaterPanel, stage1: xr.Dataset, picks, shocks, days: np.ndarray) -> np.ndarray:
    """x(t | panel.cut) for `days`: (draws, days, indicators), in INDICATORS order."""
    x_force = force_paths(panel, stage1, days, picks, shocks)
    x_static = static_covariates(panel.rows, days, panel.cut, panel.start, panel.reading)
    return np.concatenate([x_force, np.broadcast_to(x_static, (len(picks),) + x_static.shape)], axis=-1)


def daily_hazard(params: dict, x: np.ndarray) -> np.ndarray:
    """h per draw and day: `params` one row per draw, x (draws, days, indicators)."""
    return hazard.daily(hazard.log_odds(params["alpha"][:, None], params["sigma_theater"][:, None],
                                        params["z"][:, None], x, params["beta"]))


def cumulative_ahead(stage1_draws: xr.Dataset, panel: TheaterPanel, params: dict, days: int,
                     rng: np.random.Generator) -> np.ndarray:
    """P(onset within 1..days days of panel.cut) per draw of `params`, fresh force paths: (draws, days)."""
    n = len(params["alpha"])
    picks = rng.integers(0, stage1_draws.sizes["sample"], n)
    shocks = rng.standard_normal(n)
    x = future_covariates(panel, stage1_draws, picks, shocks, panel.cut + np.arange(1, days + 1))
    return hazard.cumulative(daily_hazard(params, x))


def draws_for(panel: TheaterPanel, stage1: xr.Dataset, stage2: xr.Dataset, seed: int = 0) -> xr.Dataset:
    """Every per-draw quantity the forecast needs, for the target theater as of panel.cut (a run's draws.nc)."""
    return per_draw(panel, stacked(stage1), hazard_params(stage2, panel.id), seed)


def per_draw(panel: TheaterPanel, stage1_draws: xr.Dataset, params: dict, seed: int,
             reuse: tuple[xr.Dataset, np.datetime64] | None = None, survival: np.ndarray | None = None) -> xr.Dataset:
    """`draws_for` from a stacked stage-1 posterior and the target's hazard parameters.

    `reuse` = (draws of the same posterior and seed, date): history columns dated before `date` are
    copied from those draws (the covariates known then did not change), so the live loop recomputes
    only what a change can move. `survival`: the panel's `history_survival`, when the caller has it.
    """
    n = len(params["alpha"])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, stage1_draws.sizes["sample"], n)
    shocks = rng.standard_normal(n)
    as_of = panel.cut
    ahead = as_of + np.arange(1, max(HORIZONS) + 1)
    x = future_covariates(panel, stage1_draws, picks, shocks, ahead)
    cum = hazard.cumulative(daily_hazard(params, x))
    baseline = hazard.quiet_log_odds(params["alpha"], params["sigma_theater"], params["z"])
    contributions = x[:, 0, :] * params["beta"]  # next day's log-odds, per indicator

    history_dates = _history_dates(panel)
    stored = {} if reuse is None else {d: j for j, d in enumerate(reuse[0]["history_date"].values.astype("datetime64[D]"))
                                        if d < reuse[1]}
    history = np.stack([reuse[0]["history_30"].values[:, stored[day]] if day in stored
                        else _prob_within(panel, day, stage1_draws, params, picks, shocks, 30)
                        for day in history_dates], axis=1)
    history_log_weight = _history_log_weights(panel, stage1_draws, params, history_dates, seed, survival)
    return xr.Dataset(
        {
            "cumulative": (("draw", "day"), cum),
            "baseline": (("draw",), baseline),
            "contribution": (("draw", "indicator"), contributions),
            "indicator_value": (("draw", "indicator"), x[:, 0, :]),
            "history_30": (("draw", "history_date"), history),
            "history_log_weight": (("draw", "history_date"), history_log_weight),
            "alpha": (("draw",), params["alpha"]),
            "beta": (("draw", "indicator"), params["beta"]),
            "sigma_theater": (("draw",), params["sigma_theater"]),
        },
        coords={"day": ahead, "indicator": INDICATORS, "history_date": history_dates},
        attrs={"theater": panel.id, "as_of": str(as_of)},
    )


def _history_dates(panel: TheaterPanel) -> np.ndarray:
    """Weekly as-of dates from the crisis start (as the backtest's grid), and the as-of date itself.

    Anchored on the start, so forecasts of one theater as of different dates share their past dates.
    """
    weekly = np.arange(panel.start, panel.cut, HISTORY_STEP_DAYS, dtype="datetime64[D]")
    return np.append(weekly, panel.cut)


def history_survival(panel: TheaterPanel, stage1_draws: xr.Dataset, params: dict, seed: int) -> np.ndarray:
    """The target's log P(quiet through each day of the panel) per draw, over the history weights' paths."""
    rng = np.random.default_rng([seed, 1])
    picks = rng.choice(stage1_draws.sizes["sample"], size=N_PATHS, replace=False)
    paths = force_paths(panel, stage1_draws, panel.days, picks, rng.standard_normal(N_PATHS))
    return hazard.survival_by_day(params["alpha"], params["sigma_theater"], params["z"][:, None],
                                  params["beta"], panel.static, paths)[:, 0, :]  # (draws, days)


def _history_log_weights(panel: TheaterPanel, stage1_draws: xr.Dataset, params: dict, dates: np.ndarray,
                         seed: int, survival: np.ndarray | None = None) -> np.ndarray:
    """Per draw and past date d: log of the importance weight that takes the target's quiet days after d
    back out of the fit, log P(quiet through d) - log P(quiet through the as-of date).

    The fit learned from every at-risk day of the target up to its as-of date (its own theater
    effect most of all); an as-of fit on d would have seen only the days up to d. Weighting the
    stored draws by this ratio (`forecast.reweight`, Pareto-smoothed) gives the posterior that
    fit would have had, up to the target's later troop estimates in stage 1.
    """
    if survival is None:
        survival = history_survival(panel, stage1_draws, params, seed)
    through = (dates - panel.start).astype(int)  # index of each date among the panel's days
    return survival[:, through] - survival[:, -1:]


def _prob_within(panel, day, stage1_draws, params, picks, shocks, horizon: int) -> np.ndarray:
    """P(onset within `horizon` days) per draw, with covariates as known on `day`."""
    past = build_panel(panel.theater, panel.rows, cut=day.astype(dt.date), reading=panel.reading)
    ahead = day + np.arange(1, horizon + 1)
    x = future_covariates(past, stage1_draws, picks, shocks, ahead)
    return hazard.cumulative(daily_hazard(params, x))[:, -1]


# --- summaries ------------------------------------------------------------------------------


def weighted_quantile(values: np.ndarray, q, weights: np.ndarray | None) -> np.ndarray:
    """Quantiles along axis 0 under normalised draw weights (None: equal)."""
    if weights is None:
        return np.quantile(values, q, axis=0)
    order = np.argsort(values, axis=0)
    sorted_values = np.take_along_axis(values, order, axis=0)
    cdf = np.cumsum(weights[order], axis=0) - 0.5 * weights[order]
    q = np.atleast_1d(q)
    flat_values = sorted_values.reshape(len(values), -1)
    flat_cdf = cdf.reshape(len(values), -1)
    out = np.stack([np.interp(q, flat_cdf[:, k], flat_values[:, k]) for k in range(flat_values.shape[1])], axis=-1)
    return out.reshape((len(q),) + values.shape[1:])


def _band(values: np.ndarray, weights: np.ndarray | None) -> dict:
    w = None if weights is None else weights / weights.sum()
    mean = np.average(values, axis=0, weights=w)
    lo, hi = weighted_quantile(values, INTERVAL, w)
    return {"mean": mean, "lo": lo, "hi": hi}


def _scalar(band: dict) -> dict:
    return {k: round(float(v), 4) for k, v in band.items()}


def prob_band(values: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """Mean and 80% interval of one per-draw quantity, rounded as in a forecast document."""
    return _scalar(_band(values, weights))


def summarise(draws: xr.Dataset, weights: np.ndarray | None = None) -> dict:
    """The forecast document (DESIGN §6) from per-draw quantities, optionally reweighted."""
    cum = draws["cumulative"].values
    days = draws["day"].values
    prob = {str(h): prob_band(cum[:, h - 1], weights) for h in HORIZONS}
    curve = _band(cum, weights)
    timing = _timing(curve["mean"], days)
    baseline = _band(draws["baseline"].values, weights)
    contrib = _band(draws["contribution"].values, weights)
    value = np.average(draws["indicator_value"].values, axis=0,
                       weights=None if weights is None else weights / weights.sum())
    drivers = [{"indicator": name, "log_odds": round(float(contrib["mean"][j]), 4),
                "lo": round(float(contrib["lo"][j]), 4), "hi": round(float(contrib["hi"][j]), 4),
                "value": round(float(value[j]), 4)}
               for j, name in enumerate(draws["indicator"].values)]
    drivers.sort(key=lambda d: -abs(d["log_odds"]))
    return {
        "as_of": draws.attrs["as_of"],
        "prob": prob,
        "words": wording.words(prob["30"]["mean"]),
        "timing": timing,
        "cumulative": [{"date": iso(d), "mean": round(float(m), 4), "lo": round(float(lo), 4),
                        "hi": round(float(hi), 4)}
                       for d, m, lo, hi in zip(days, curve["mean"], curve["lo"], curve["hi"])],
        "baseline_log_odds": _scalar(baseline),
        "log_odds_now": round(float(baseline["mean"] + sum(d["log_odds"] for d in drivers)), 4),
        "drivers": drivers,
        "history": history(draws, weights),
    }


def history(draws: xr.Dataset, weights: np.ndarray | None = None) -> list[dict]:
    """P(escalation within 30 days) as the engine would have said on each past week.

    Each date's draws are reweighted to the posterior an as-of fit on that date would have had
    (`history_log_weight`, combined with `weights`, Pareto-smoothed): method "reweighted", with its
    Pareto k and whether it is reliable (k <= reweight.PARETO_K_MAX); the as-of date itself is the
    run ("as fitted"). `hindsight` is the same date under the run's own posterior, which knows the
    quiet days that followed. Runs made before 2026-12-01 stored no weights: method "hindsight".
    """
    values = draws["history_30"].values
    log_w = draws["history_log_weight"].values if "history_log_weight" in draws else None
    w = None if weights is None else weights / weights.sum()
    base = np.zeros(len(values)) if w is None else np.log(np.maximum(w, 1e-300))  # smoothed weights may underflow
    out = []
    for j, day in enumerate(draws["history_date"].values):
        hindsight = _band(values[:, j], w)
        entry = {"date": iso(day), "method": "hindsight", "pareto_k": None, "reliable": True,
                 "hindsight": round(float(hindsight["mean"]), 4)}
        band = hindsight
        if log_w is not None and np.ptp(log_w[:, j]) > 0:
            honest = reweight.psis(base + log_w[:, j])
            band = _band(values[:, j], honest.w)
            entry.update(method="reweighted", pareto_k=round(honest.pareto_k, 3), reliable=honest.verdict != "unreliable")
        elif log_w is not None:
            entry["method"] = "as fitted"
        entry.update({k: round(float(band[k]), 4) for k in ("mean", "lo", "hi")})
        out.append(entry)
    return out


def _timing(curve: np.ndarray, days: np.ndarray) -> dict:
    """Onset date percentiles given escalation within the horizon (the curve rescaled to 1)."""
    total = curve[-1]
    horizon = int(len(days))
    if total <= 0:
        return {"median": None, "p10": None, "p90": None, "horizon_days": horizon, "p_within_horizon": 0.0}
    conditional = curve / total

    def at(q: float) -> str:
        return iso(days[int(np.searchsorted(conditional, q))])

    return {"median": at(0.5), "p10": at(0.1), "p90": at(0.9), "horizon_days": horizon,
            "p_within_horizon": round(float(total), 4)}
