r"""Backtest and calibration (issue 5): leave-one-case-out forecasts, proper scores, the public record.

Leave one case out. For every closed case c the model is fitted once on the
reference class *without c*: neither c's evidence nor its outcome enters
either stage. c is then forecast at weekly as-of dates d = start, start + 7,
... (every d before its outcome) from its panel cut at d (evidence visible by
d only), simulated forward as in `forecast.predict`:

- c's theater effect is unknown to that fit, so each posterior draw takes
  fresh effects from the population, z_c ~ Normal(0, 1) (`prob_population`);
- on date d an analyst also knows that c has not escalated yet, and the
  engine's own as-of fit (`forecast refit --as-of d`) learns from it: c's
  at-risk days up to d enter as "no escalation yet". The backtest adds that
  information by weighting each (draw, z_c) by its probability of surviving
  c's at-risk days to d given the covariates known on each of them -- Bayes'
  rule on the likelihood the as-of fit would use (averaged over fixed
  imputation paths of the force level, as in the fit), Pareto-smoothed
  (PSIS); the days ahead use fresh paths, as after a fit. This is the
  scored forecast (`prob`). It differs from the exact as-of fit only in that
  c's troop estimates up to d do not inform the pooled source biases of stage
  1, and in Monte Carlo error; where the weights are unreliable (Pareto k >
  0.7) an exact as-of refit replaces them, and `--check-exact N` measures the
  gap on N forecasts where they are reliable.

No as-of date can leak c's later evidence or its outcome: the fit never sees
c, and the weights use only c's panel cut at d. One fit per case serves all
its as-of dates.

Outcome at horizon H from as-of d: 1 if c escalated on a day <= d + H, else 0.
A case that ended without escalation counts as 0 at every horizon, even when
d + H runs past the end of its crisis (no escalation was observed through the
end; we treat the end as final).

Scores per horizon (7, 30, 90 days), over every (case, as-of) forecast:
Brier score and log score (scoringrules), Brier skill against climatology
(the base rate of the outcome at that horizon over the as-of points of the
*other* closed cases, so the baseline is leave-one-case-out too), reliability
bins with the expected calibration error, and AUC (rank formula).

The public record. For the flagship, the engine's P(escalation by 2022-12-31)
on the dates of the Metaculus community figures (data/public_forecasts.json)
comes from exact as-of fits of the flagship (target cut at each date, the same
fit `forecast refit --as-of` makes), with the hazard simulated to the
question's close rather than 90 days.

Speed. Every fit has the same parameter shapes (the held-out case stays in
the model as an empty panel; stage 1's latent vectors are padded), so each
stage is compiled once and later fits swap only the data
(`nutpie.CompiledModel.with_data`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forecast import config, dataset, model, predict, priors, report, runs, store
from forecast.features import FORCE, STATIC, TheaterPanel, build_panel, troop_obs
from forecast.schema import Evidence, Theater

HORIZONS = predict.HORIZONS
STEP_DAYS = 7
N_BINS = 10
K_THRESHOLD = 0.7  # Pareto k above which importance weights are not trusted
Z_PER_DRAW = 8  # fresh theater effects per posterior draw for a held-out case
LOG_CLIP = 1e-6  # log score of a probability of exactly 0 or 1 would be infinite
PUBLIC_FORECASTS = "public_forecasts.json"


class BacktestError(ValueError):
    """Bad input: unknown or open case, missing public-forecast file..."""


# --- cases and as-of grid ----------------------------------------------------------------


@dataclass
class Case:
    theater: Theater
    rows: list[Evidence]  # evidence without the outcome
    outcome: Evidence

    @property
    def id(self) -> str:
        return self.theater.id

    @property
    def escalated(self) -> bool:
        return bool(self.outcome.escalated)

    @property
    def end(self) -> dt.date:
        """Escalation date, or the day the crisis ended without escalation."""
        return self.outcome.date

    def as_of_dates(self) -> list[dt.date]:
        """Weekly from the crisis start, every date strictly before the outcome."""
        days = (self.end - self.theater.start).days
        return [self.theater.start + dt.timedelta(days=k) for k in range(0, max(days, 0), STEP_DAYS)]

    def observed(self, as_of: dt.date, horizon: int) -> int:
        """1 if escalation came within `horizon` days after `as_of`; a non-escalated case is 0."""
        return int(self.escalated and self.end <= as_of + dt.timedelta(days=horizon))

    def full_panel(self) -> TheaterPanel:
        return build_panel(self.theater, self.rows + [self.outcome])


def load_cases(theaters: list[Theater], evidence: list[Evidence]) -> dict[str, Case]:
    """Every closed case (with an outcome), by id, in theater order."""
    rows: dict[str, list[Evidence]] = {t.id: [] for t in theaters}
    outcomes: dict[str, Evidence] = {}
    for r in evidence:
        if r.kind == "outcome":
            outcomes[r.theater] = r
        else:
            rows[r.theater].append(r)
    return {t.id: Case(t, rows[t.id], outcomes[t.id]) for t in theaters if t.id in outcomes}


def empty_panel(theater: Theater) -> TheaterPanel:
    """A theater with no at-risk days and no evidence: keeps its slot (z) in the model, adds no data."""
    return TheaterPanel(theater, [], np.array([], dtype="datetime64[D]"), np.zeros((0, len(STATIC))),
                        np.zeros(0, dtype=int), troop_obs([]), np.datetime64(theater.start, "D") - 1)


def loco_panels(cases: dict[str, Case], full: dict[str, TheaterPanel], held_out: str) -> list[TheaterPanel]:
    """The reference class without `held_out` (full crisis windows), then `held_out` as an empty panel."""
    return [full[c] for c in cases if c != held_out] + [empty_panel(cases[held_out].theater)]


def stage1_pad(panels: list[TheaterPanel]) -> tuple[int, int]:
    """Latent sizes of stage 1 for the largest data set any fit of this backtest uses."""
    k = model.stage1_knots(panels)
    n_start = int(k["first"].sum())
    return n_start, len(k["gap"]) - n_start


# --- compile once, swap data -----------------------------------------------------------


def fingerprint(pm_model, var_names) -> str:
    """Hash of the model's log-density graph: ops, wiring, constants, data *names* (not their values).

    Two models with the same fingerprint differ only in their pm.Data values, so one
    compiled model serves both.
    """
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import toposort

    digest = hashlib.sha256(repr(list(var_names or [])).encode())
    ids: dict = {}

    def ref(var) -> str:
        if var in ids:
            return ids[var]
        if isinstance(var, SharedVariable):
            tag = f"shared:{var.name}:{var.type}"
        elif isinstance(var, Constant):
            data = np.asarray(var.data)
            tag = f"const:{var.type}:{data.shape}:{hashlib.sha256(data.tobytes()).hexdigest()}"
        else:
            tag = f"input:{var.name}:{var.type}"
        ids[var] = tag
        return tag

    for i, node in enumerate(toposort([pm_model.logp()])):
        digest.update(f"{node.op}({','.join(ref(v) for v in node.inputs)})".encode())
        for j, out in enumerate(node.outputs):
            ids[out] = f"n{i}.{j}:{out.type}"
    for rv in pm_model.free_RVs:
        digest.update(f"{rv.name}:{rv.type}".encode())
    return digest.hexdigest()


class CompileCache:
    """A `compiler` for model.fit: nutpie-compiles each distinct graph once, then swaps its data."""

    def __init__(self):
        self.compiled: dict[str, object] = {}
        self.hits = 0
        self.misses = 0

    def __call__(self, pm_model, var_names=None):
        import nutpie

        key = fingerprint(pm_model, var_names)
        cached = self.compiled.get(key)
        if cached is None:
            self.misses += 1
            self.compiled[key] = nutpie.compile_pymc_model(pm_model, var_names=var_names)
            return self.compiled[key]
        values = {v.name: v.get_value() for v in pm_model.data_vars}
        if not set(cached.shared_data) <= set(values):  # data the graph reads but the model lacks: recompile
            self.misses += 1
            return nutpie.compile_pymc_model(pm_model, var_names=var_names)
        self.hits += 1
        swapped = cached.with_data(**{name: values[name] for name in cached.shared_data})
        return _relabel(swapped, pm_model)


def _relabel(compiled, pm_model):
    """Coordinates of the new model (e.g. theater names) on the reused compiled model."""
    import pandas as pd

    coords = getattr(compiled, "_coords", None)
    if not coords:
        return compiled
    new = {dim: (pd.Index(pm_model.coords[dim]) if pm_model.coords.get(dim) is not None
                 and len(pm_model.coords[dim]) == len(values) else values)
           for dim, values in coords.items()}
    return dataclasses.replace(compiled, _coords=new)


COMPILED = CompileCache()  # process-wide: keyed by graph fingerprint, so reuse is always safe


# --- forecasts ------------------------------------------------------------------------------


def _seed(*parts) -> list[int]:
    """A stable seed from a case id and a date (never from anything the outcome decides)."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def cumulative_by(fit: model.Fit, panel: TheaterPanel, params: dict, days: int,
                  rng: np.random.Generator) -> np.ndarray:
    """P(onset within 1..days days of panel.cut), per draw: (draws, days)."""
    stage1 = fit.stage1_draws
    n = len(params["alpha"])
    picks = rng.integers(0, stage1.sizes["sample"], n)
    shocks = rng.standard_normal(n)
    ahead = panel.cut + np.arange(1, days + 1)
    x = predict.future_covariates(panel, stage1, picks, shocks, ahead)
    return predict.cumulative(predict.daily_hazard(params, x))


def loco_forecasts(fit: model.Fit, case: Case, seed: int) -> list[dict]:
    """Forecasts of a held-out case at each of its as-of dates, from a fit that never saw it.

    Each posterior draw gets Z_PER_DRAW fresh theater effects z ~ N(0, 1). `prob_population` is
    the plain average: a theater the model knows nothing about. `prob` also conditions on what
    an analyst knows on the as-of date and the exact as-of fit uses: the case's own at-risk days
    so far passed without escalation. Each (draw, z) is weighted by the likelihood the as-of fit
    would give those days -- the same form as `model.build_stage2`: survival averaged over
    model.N_PATHS imputation paths of the force covariates, fixed across draws -- with
    Pareto-smoothed importance weights (k and the effective sample size are reported). The
    days ahead use fresh force paths per draw, as `forecast.predict` does after a fit.
    """
    stage1 = fit.stage1_draws
    post = fit.stage2.posterior.stack(sample=("chain", "draw")).transpose("sample", ...)
    alpha, beta, sigma = post["alpha"].values, post["beta"].values, post["sigma_theater"].values
    n, at, n_force = len(alpha), [h - 1 for h in HORIZONS], len(FORCE)
    out = []
    for as_of in case.as_of_dates():
        rng = np.random.default_rng(_seed(seed, case.id, as_of))
        panel = build_panel(case.theater, case.rows, cut=as_of)  # rows carry no outcome
        z = rng.standard_normal((n, Z_PER_DRAW))
        effect = (sigma[:, None] * z)[:, :, None]  # (draws, z, 1)

        # The days so far: no escalation. Likelihood as in the fit, over fixed imputation paths.
        picks = rng.choice(stage1.sizes["sample"], size=model.N_PATHS, replace=False)
        paths = model.force_paths(panel, stage1, panel.days, picks, rng.standard_normal(model.N_PATHS))
        eta_static = alpha[:, None] + np.einsum("tj,dj->dt", panel.static, beta[:, n_force:])
        log_lik = None
        for path in paths:
            eta = eta_static + np.einsum("tj,dj->dt", path, beta[:, :n_force])
            ll = _log_sigmoid(-(eta[:, None, :] + effect)).sum(-1)  # (draws, z)
            log_lik = ll if log_lik is None else np.logaddexp(log_lik, ll)
        log_weight = (log_lik - np.log(len(paths))).ravel()

        # The days ahead, from fresh paths per draw.
        ahead = panel.cut + np.arange(1, max(HORIZONS) + 1)
        x = predict.future_covariates(panel, stage1, rng.integers(0, stage1.sizes["sample"], n),
                                      rng.standard_normal(n), ahead)
        eta = alpha[:, None] + np.einsum("dtj,dj->dt", x, beta)
        cum = -np.expm1(np.cumsum(_log_sigmoid(-(eta[:, None, :] + effect)), axis=-1))[..., at].reshape(n * Z_PER_DRAW, -1)
        smoothed, k = _psis(log_weight)
        w = np.exp(smoothed)
        out.append({"case": case.id, "as_of": as_of.isoformat(),
                    "prob": {str(h): predict.prob_band(cum[:, i], w) for i, h in enumerate(HORIZONS)},
                    "prob_population": {str(h): predict.prob_band(cum[:, i]) for i, h in enumerate(HORIZONS)},
                    "pareto_k": None if k is None else round(k, 3), "ess": round(float(1 / np.sum(w**2)), 1),
                    "at_risk_days": len(panel.days)})
    return out


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _psis(log_weight: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Normalised Pareto-smoothed log weights and the shape k (None for equal weights)."""
    import arviz as az

    if np.ptp(log_weight) == 0:
        return np.full(len(log_weight), -np.log(len(log_weight))), None
    smoothed, k = az.psislw(log_weight)
    return smoothed, float(k)


# --- scores ----------------------------------------------------------------------------------


def climatology(cases: dict[str, Case], held_out: str, horizon: int) -> float:
    """Base rate of the outcome at `horizon` over the as-of points of every other closed case."""
    ys = [c.observed(d, horizon) for cid, c in cases.items() if cid != held_out for d in c.as_of_dates()]
    return float(np.mean(ys)) if ys else float("nan")


def auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank (Mann-Whitney) formula; None with one class only."""
    from scipy.stats import rankdata

    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = N_BINS) -> tuple[list[dict], float]:
    """Equal-width probability bins: count, mean forecast, observed frequency; and the ECE."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        row = {"lo": round(float(edges[b]), 2), "hi": round(float(edges[b + 1]), 2), "n": n,
               "mean_forecast": None, "observed": None}
        if n:
            row["mean_forecast"] = round(float(p[inside].mean()), 4)
            row["observed"] = round(float(y[inside].mean()), 4)
            ece += n / len(p) * abs(row["observed"] - row["mean_forecast"])
        rows.append(row)
    return rows, round(float(ece), 4)


def score(forecasts: list[dict], cases: dict[str, Case]) -> dict:
    """Every score of the issue, per horizon, plus the per-case table."""
    clim = {(cid, h): climatology(cases, cid, h) for cid in {f["case"] for f in forecasts} for h in HORIZONS}
    for f in forecasts:
        case = cases[f["case"]]
        as_of = dt.date.fromisoformat(f["as_of"])
        f["observed"] = {str(h): case.observed(as_of, h) for h in HORIZONS}
        f["climatology"] = {str(h): round(clim[case.id, h], 4) for h in HORIZONS}

    doc = metrics(forecasts, "prob")
    doc["brier_skill_interval"] = skill_interval(forecasts, "prob")
    doc["population"] = {k: v for k, v in metrics(forecasts, "prob_population").items() if k != "reliability"}
    ks = np.array([f["pareto_k"] or 0 for f in forecasts])
    doc["importance"] = {"pareto_k_max": round(float(ks.max()), 3), "pareto_k_over_0.7": int((ks > K_THRESHOLD).sum()),
                         "ess_min": min(f["ess"] for f in forecasts)}
    doc["n_forecasts"] = len(forecasts)
    doc["cases"] = [case_row(cases[cid], [f for f in forecasts if f["case"] == cid])
                    for cid in dict.fromkeys(f["case"] for f in forecasts)]
    return doc


def metrics(forecasts: list[dict], key: str) -> dict:
    """Brier, log score, skill against climatology, reliability, ECE and AUC of forecasts[...][key]."""
    import scoringrules as sr

    doc = {name: {} for name in ("brier", "brier_climatology", "brier_skill", "log_score", "log_score_climatology",
                                 "reliability", "ece", "auc", "base_rate")}
    for h in map(str, HORIZONS):
        p = np.array([f[key][h]["mean"] for f in forecasts])
        y = np.array([f["observed"][h] for f in forecasts])
        c = np.array([f["climatology"][h] for f in forecasts])
        brier, brier_c = float(np.mean(sr.brier_score(y, p))), float(np.mean(sr.brier_score(y, c)))
        doc["brier"][h] = round(brier, 4)
        doc["brier_climatology"][h] = round(brier_c, 4)
        doc["brier_skill"][h] = round(1 - brier / brier_c, 4) if brier_c > 0 else None
        doc["log_score"][h] = round(float(np.mean(sr.log_score(y, np.clip(p, LOG_CLIP, 1 - LOG_CLIP)))), 4)
        doc["log_score_climatology"][h] = round(float(np.mean(sr.log_score(y, np.clip(c, LOG_CLIP, 1 - LOG_CLIP)))), 4)
        doc["reliability"][h], doc["ece"][h] = reliability(p, y)
        a = auc(p, y)
        doc["auc"][h] = None if a is None else round(a, 4)
        doc["base_rate"][h] = round(float(y.mean()), 4)
    return doc


def skill_interval(forecasts: list[dict], key: str, n_boot: int = 4000, level: float = 0.9) -> dict:
    """Case-bootstrap interval of the Brier skill: whole cases resampled with replacement.

    The weekly forecasts of one case are strongly correlated and a few long cases carry
    many of them, so resampling cases (not forecasts) gives the honest uncertainty.
    """
    import scoringrules as sr

    ids = list(dict.fromkeys(f["case"] for f in forecasts))
    rng = np.random.default_rng(20220224)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)  # (boot, cases)
    out = {}
    for h in map(str, HORIZONS):
        model_sum, clim_sum = np.zeros(len(ids)), np.zeros(len(ids))
        for f in forecasts:
            i = ids.index(f["case"])
            model_sum[i] += float(sr.brier_score(f["observed"][h], f[key][h]["mean"]))
            clim_sum[i] += float(sr.brier_score(f["observed"][h], f["climatology"][h]))
        with np.errstate(divide="ignore", invalid="ignore"):
            skill = 1 - (counts @ model_sum) / (counts @ clim_sum)
        skill = skill[np.isfinite(skill)]
        lo, hi = np.quantile(skill, [(1 - level) / 2, (1 + level) / 2]) if len(skill) else (np.nan, np.nan)
        out[h] = {"lo": round(float(lo), 4), "hi": round(float(hi), 4), "level": level}
    return out


def case_row(case: Case, forecasts: list[dict]) -> dict:
    import scoringrules as sr

    row = {"id": case.id, "outcome": "escalated" if case.escalated else "none", "end_date": case.end.isoformat(),
           "start": case.theater.start.isoformat(), "forecasts": len(forecasts),
           "first_as_of": forecasts[0]["as_of"], "last_as_of": forecasts[-1]["as_of"],
           "mean_prob": {}, "last_prob": {}, "observed_rate": {}, "brier": {}, "brier_climatology": {}}
    for h in map(str, HORIZONS):
        p = np.array([f["prob"][h]["mean"] for f in forecasts])
        y = np.array([f["observed"][h] for f in forecasts])
        c = np.array([f["climatology"][h] for f in forecasts])
        row["mean_prob"][h] = round(float(p.mean()), 4)
        row["last_prob"][h] = round(float(p[-1]), 4)
        row["observed_rate"][h] = round(float(y.mean()), 4)
        row["brier"][h] = round(float(np.mean(sr.brier_score(y, p))), 4)
        row["brier_climatology"][h] = round(float(np.mean(sr.brier_score(y, c))), 4)
    return row


# --- the public record -------------------------------------------------------------------------


def public_forecasts(path: Path | None = None) -> dict:
    path = path or config.data_dir() / PUBLIC_FORECASTS
    if not path.exists():
        raise BacktestError(f"{path}: no such file (the public forecasts to compare with)")
    return json.loads(path.read_text())


def metaculus_question(doc: dict, theater: str) -> dict | None:
    return next((q for q in doc["questions"] if q["theater"] == theater), None)


def engine_by(fit: model.Fit, theater: str, as_of: dt.date, until: dt.date, seed: int) -> dict:
    """The engine's P(escalation by `until`) as of `as_of`, from an exact as-of fit of `theater`."""
    rng = np.random.default_rng(_seed(seed, theater, as_of, until))
    params = predict.hazard_params(fit.stage2.posterior, theater)
    days = (until - as_of).days
    cum = cumulative_by(fit, fit.panel(theater), params, days, rng)
    return {"by_close": predict.prob_band(cum[:, -1]), "within_30": predict.prob_band(cum[:, 29]),
            "within_90": predict.prob_band(cum[:, 89]),
            "days": days}


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Options:
    cases: list[str] | None = None  # None: every closed case
    profile: priors.Profile | None = None
    settings: model.SamplerSettings = dataclasses.field(
        default_factory=lambda: model.SamplerSettings(progressbar=False))
    metaculus: bool | None = None  # None: when the flagship's question is in scope
    check_exact: int = 3  # compare this many importance-weighted forecasts with exact as-of refits
    progress: bool = True


def exact_forecast(fit: model.Fit, case: str, seed: int) -> dict:
    """P(escalation within each horizon) from an exact as-of fit of `case` (its own theater effect)."""
    panel = fit.panel(case)
    rng = np.random.default_rng(_seed(seed, case, panel.cut, "exact"))
    cum = cumulative_by(fit, panel, predict.hazard_params(fit.stage2.posterior, case), max(HORIZONS), rng)
    return {str(h): predict.prob_band(cum[:, h - 1]) for h in HORIZONS}


def run(eng, options: Options = Options()) -> dict:
    """Fit, forecast and score; returns the document `forecast backtest --json` prints."""
    from tqdm import tqdm

    started = time.perf_counter()
    profile = options.profile or priors.load("default")
    settings = options.settings
    theaters, evidence = store.load_theaters(eng), store.load_evidence(eng)
    known = {t.id for t in theaters}
    cases = load_cases(theaters, evidence)
    chosen = options.cases or list(cases)
    for cid in chosen:
        if cid not in known:
            raise BacktestError(f"--case {cid}: unknown theater; see `forecast theaters`")
        if cid not in cases:
            raise BacktestError(f"--case {cid}: the case is still open (no outcome), so it cannot be scored")
    chosen = list(dict.fromkeys(chosen))

    public = public_forecasts()
    questions = [q for q in public["questions"] if q["theater"] in cases
                 and (options.metaculus or (options.metaculus is None and q["theater"] in chosen))]
    full = {cid: c.full_panel() for cid, c in cases.items()}
    pad = stage1_pad(list(full.values()))  # every fit below uses a subset of these estimates

    planned = {(q["theater"], pf["date"]) for q in questions for pf in q["forecasts"]}  # exact as-of fits
    bar = tqdm(total=len(chosen) + len(planned), desc="backtest", unit="fit", file=sys.stderr,
               disable=not options.progress)
    timing = {"compile": 0.0, "sampling": 0.0, "forecast": 0.0}
    fits_log, forecasts = [], []
    hits0, misses0 = COMPILED.hits, COMPILED.misses

    def fitted(panels, target, label):
        bar.set_postfix_str(label)
        f = model.fit(panels, target, profile, settings, compiler=COMPILED, stage1_pad=pad)
        diag = model.diagnostics(f)
        timing["compile"] += diag["compile_seconds"]
        timing["sampling"] += diag["sampling_seconds"]
        fits_log.append({"fit": label, **{k: diag[k] for k in ("r_hat_max", "ess_bulk_min", "divergences",
                                                                 "sampling_seconds", "compile_seconds")}})
        bar.update(1)
        return f

    exact_fits: dict[tuple[str, str], model.Fit] = {}

    def exact_fit(cid: str, as_of: dt.date) -> model.Fit:
        """An exact as-of fit (the case cut at as_of, as `forecast refit --as-of` makes), cached."""
        key = (cid, as_of.isoformat())
        if key not in exact_fits:
            panels, _ = dataset.assemble(theaters, evidence, cid, as_of)
            exact_fits[key] = fitted(panels, cid, f"exact:{cid}:{as_of}")
        return exact_fits[key]

    def timed(fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timing["forecast"] += time.perf_counter() - t0
        return result

    # 1. One leave-one-case-out fit per case; importance-weighted forecasts at every as-of date.
    for cid in chosen:
        f = fitted(loco_panels(cases, full, cid), cid, f"loco:{cid}")
        forecasts += timed(loco_forecasts, f, cases[cid], settings.seed)
    for f in forecasts:
        f["method"] = "loco-weighted"

    # 2. Where the weights are unreliable (Pareto k > 0.7), an exact as-of refit replaces them.
    unreliable = [f for f in forecasts if (f["pareto_k"] or 0) > K_THRESHOLD]
    checks = pick_checks(forecasts, options.check_exact)
    planned |= {(f["case"], f["as_of"]) for f in unreliable + checks}
    bar.total = len(chosen) + len(planned)
    bar.refresh()
    for f in unreliable:
        fit = exact_fit(f["case"], dt.date.fromisoformat(f["as_of"]))
        f["prob_weighted"], f["prob"] = f["prob"], timed(exact_forecast, fit, f["case"], settings.seed)
        f["method"] = "exact-refit"
    exactness = []
    for f in checks:
        fit = exact_fit(f["case"], dt.date.fromisoformat(f["as_of"]))
        exact = timed(exact_forecast, fit, f["case"], settings.seed)
        exactness.append({"case": f["case"], "as_of": f["as_of"], "pareto_k": f["pareto_k"],
                          "weighted": {h: f["prob"][h]["mean"] for h in exact},
                          "exact": {h: exact[h]["mean"] for h in exact},
                          "abs_diff": {h: round(abs(f["prob"][h]["mean"] - exact[h]["mean"]), 4) for h in exact}})

    doc = {"cases_run": chosen, "horizons": list(HORIZONS), "step_days": STEP_DAYS,
           "prior_profile": profile.name, "prior_hash": profile.hash, "code_version": runs.code_version(),
           "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "sampler": settings.recorded(),
           "method": ("leave-one-case-out: one fit per case without the case; the case's theater effect drawn "
                      "fresh (z ~ N(0,1)) and weighted by its survival to the as-of date (PSIS); exact as-of "
                      f"refit where Pareto k > {K_THRESHOLD}"),
           "censoring": "a case that ended without escalation counts as 0 at every horizon"}
    doc.update(score(forecasts, cases))
    doc["importance"]["exact_refits"] = len(unreliable)
    hs = list(map(str, HORIZONS))
    doc["exactness"] = {
        "checks": exactness,
        "mean_abs_diff": {h: round(float(np.mean([c["abs_diff"][h] for c in exactness])), 4) for h in hs}
        if exactness else None,
        "max_abs_diff": {h: max(c["abs_diff"][h] for c in exactness) for h in hs} if exactness else None}
    doc["forecasts"] = forecasts

    # 3. The public record: exact as-of fits of the flagship on the dates of the public figures.
    metaculus = []
    for q in questions:
        theater, until = q["theater"], dt.date.fromisoformat(q["resolves_by"])
        for pf in q["forecasts"]:
            as_of = dt.date.fromisoformat(pf["date"])
            fit = exact_fit(theater, as_of)
            engine = timed(engine_by, fit, theater, as_of, until, settings.seed)
            log = next(x for x in fits_log if x["fit"] == f"exact:{theater}:{as_of}")
            metaculus.append({"question": q["question"], "question_id": q["id"], "theater": theater,
                              "resolves_by": q["resolves_by"], "date": pf["date"],
                              "metaculus": pf["probability"], "metaculus_relation": pf["relation"],
                              "metaculus_as_stated": pf["as_stated"], "engine": engine["by_close"],
                              "engine_within_30": engine["within_30"], "engine_within_90": engine["within_90"],
                              "difference": round(engine["by_close"]["mean"] - pf["probability"], 4),
                              "r_hat_max": log["r_hat_max"], "divergences": log["divergences"]})
    bar.close()
    doc["metaculus"] = {"rows": metaculus,
                        "source": "; ".join(q["source"] for q in questions) or None,
                        "note": "engine: exact as-of fits of the flagship (target cut at each date, reference class "
                                "= every other closed case); hazard simulated to the question's close"}
    gate = [f for f in fits_log if runs.gate(f)]
    doc["diagnostics"] = {"fits": len(fits_log), "failing_gate": len(gate),
                          "r_hat_max": max((f["r_hat_max"] for f in fits_log), default=None),
                          "ess_bulk_min": min((f["ess_bulk_min"] for f in fits_log), default=None),
                          "divergences": sum(f["divergences"] for f in fits_log),
                          "compiles": COMPILED.misses - misses0, "compile_reuses": COMPILED.hits - hits0,
                          "per_fit": fits_log}
    doc["timing"] = {k: round(v, 1) for k, v in timing.items()}
    doc["seconds"] = round(time.perf_counter() - started, 1)
    return doc


def pick_checks(forecasts: list[dict], n: int) -> list[dict]:
    """Forecasts to compare with exact refits, the hardest first.

    One per case: its reliable (k <= 0.7) forecast with the longest survival so far (where
    the weights move the most). First the one with the largest Pareto k, then by survival.
    """
    best: dict[str, dict] = {}
    for f in forecasts:
        if (f["pareto_k"] or 0) <= K_THRESHOLD and f["at_risk_days"] > 1:
            if f["case"] not in best or f["at_risk_days"] > best[f["case"]]["at_risk_days"]:
                best[f["case"]] = f
    ranked = sorted(best.values(), key=lambda f: -f["at_risk_days"])
    if ranked:
        hardest = max(ranked, key=lambda f: f["pareto_k"] or -np.inf)
        ranked = [hardest] + [f for f in ranked if f is not hardest]
    return ranked[:n]


# --- files -------------------------------------------------------------------------------------


def _csv(header: list[str], rows: list[list]) -> bytes:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    return text.getvalue().encode("utf-8")


def write_outputs(doc: dict, out: Path) -> list[str]:
    """CSV tables, the two charts and the JSON document, each written atomically; returns the files written."""
    hs = [str(h) for h in HORIZONS]
    files = []
    out.mkdir(parents=True, exist_ok=True)

    def add(name, fn, *args):
        report.write(fn(*args), out / name)
        files.append(str(out / name))

    add("forecasts.csv", _csv, ["case", "as_of", "method", "pareto_k", "ess"]
        + [f"{k}_{h}" for h in hs for k in ("p", "lo", "hi", "p_population", "observed", "climatology")],
        [[f["case"], f["as_of"], f["method"], f["pareto_k"], f["ess"]]
         + [v for h in hs for v in (f["prob"][h]["mean"], f["prob"][h]["lo"], f["prob"][h]["hi"],
                                    f["prob_population"][h]["mean"], f["observed"][h], f["climatology"][h])]
         for f in doc["forecasts"]])
    add("cases.csv", _csv, ["case", "outcome", "start", "end_date", "forecasts"]
        + [f"{k}_{h}" for h in hs for k in ("mean_prob", "last_prob", "observed_rate", "brier", "brier_climatology")],
        [[c["id"], c["outcome"], c["start"], c["end_date"], c["forecasts"]]
         + [c[k][h] for h in hs for k in ("mean_prob", "last_prob", "observed_rate", "brier", "brier_climatology")]
         for c in doc["cases"]])
    add("scores.csv", _csv, ["horizon", "brier", "brier_climatology", "brier_skill", "brier_skill_lo",
                             "brier_skill_hi", "log_score", "log_score_climatology", "ece", "auc", "base_rate",
                             "brier_skill_population", "auc_population", "n"],
        [[h, doc["brier"][h], doc["brier_climatology"][h], doc["brier_skill"][h],
          doc["brier_skill_interval"][h]["lo"], doc["brier_skill_interval"][h]["hi"], doc["log_score"][h],
          doc["log_score_climatology"][h], doc["ece"][h], doc["auc"][h], doc["base_rate"][h],
          doc["population"]["brier_skill"][h], doc["population"]["auc"][h], doc["n_forecasts"]]
         for h in hs])
    add("reliability.csv", _csv, ["horizon", "lo", "hi", "n", "mean_forecast", "observed"],
        [[h, b["lo"], b["hi"], b["n"], b["mean_forecast"], b["observed"]] for h in hs for b in doc["reliability"][h]])
    add("metaculus.csv", _csv, ["date", "metaculus", "metaculus_relation", "engine", "engine_lo", "engine_hi",
                                "engine_within_30", "engine_within_90", "difference"],
        [[m["date"], m["metaculus"], m["metaculus_relation"], m["engine"]["mean"], m["engine"]["lo"],
          m["engine"]["hi"], m["engine_within_30"]["mean"], m["engine_within_90"]["mean"], m["difference"]]
         for m in doc["metaculus"]["rows"]])
    add("reliability.png", _plot_reliability, doc)
    if doc["metaculus"]["rows"]:
        add("metaculus.png", _plot_metaculus, doc)
    files.append(str(out / "backtest.json"))
    report.write(json.dumps({**doc, "files": files}, indent=2).encode("utf-8"), out / "backtest.json")
    return files


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _plot_reliability(doc: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HORIZONS), figsize=(4.2 * len(HORIZONS), 4.4), sharey=True)
    for ax, h in zip(np.atleast_1d(axes), map(str, HORIZONS)):
        bins = [b for b in doc["reliability"][h] if b["n"]]
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
        ax.scatter([b["mean_forecast"] for b in bins], [b["observed"] for b in bins],
                   s=[20 + 4 * b["n"] for b in bins], color="C0", alpha=0.8, label="bins (area ~ count)")
        for b in bins:
            ax.annotate(str(b["n"]), (b["mean_forecast"], b["observed"]), textcoords="offset points",
                        xytext=(6, -10), fontsize=8)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="forecast probability",
               title=f"{h} days: Brier skill {doc['brier_skill'][h]}, ECE {doc['ece'][h]}")
    np.atleast_1d(axes)[0].set_ylabel("observed frequency")
    np.atleast_1d(axes)[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Leave-one-case-out reliability ({doc['n_forecasts']} forecasts, {len(doc['cases'])} cases)")
    fig.tight_layout()
    return _png(fig)


def _plot_metaculus(doc: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = doc["metaculus"]["rows"]
    dates = [np.datetime64(r["date"]) for r in rows]
    engine = np.array([r["engine"]["mean"] for r in rows])
    err = np.array([[r["engine"]["mean"] - r["engine"]["lo"] for r in rows],
                    [r["engine"]["hi"] - r["engine"]["mean"] for r in rows]])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.errorbar(dates, engine, yerr=err, fmt="o-", color="C3", capsize=4, label="engine (80% interval)")
    ax.plot(dates, [r["metaculus"] for r in rows], "s--", color="C0", label="Metaculus community (^: above)")
    for d, r in zip(dates, rows):
        if r["metaculus_relation"] == "above":
            ax.annotate("^", (d, r["metaculus"]), textcoords="offset points", xytext=(0, 6), ha="center",
                        color="C0", fontsize=9)
    ax.axvline(np.datetime64("2022-02-24"), color="grey", ls=":", lw=1)
    ax.annotate("invasion\n2022-02-24", (np.datetime64("2022-02-24"), 0.04), fontsize=8, ha="right")
    ax.set(ylim=(0, 1), ylabel="P(invasion before 2023)", title=rows[0]["question"])
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def text_summary(doc: dict) -> str:
    """The scores for a terminal."""
    lines = [f"backtest: {len(doc['cases'])} cases, {doc['n_forecasts']} leave-one-case-out forecasts, "
             f"{doc['seconds']} s", "",
             f"  {'horizon':>8} {'Brier':>7} {'clim.':>7} {'skill':>7} {'90% (cases)':>17} {'log':>7} "
             f"{'ECE':>6} {'AUC':>6}"]
    for h in map(str, HORIZONS):
        auc_, ci = doc["auc"][h], doc["brier_skill_interval"][h]
        interval = f"[{ci['lo']:+.2f}, {ci['hi']:+.2f}]"
        auc_text = "n/a" if auc_ is None else f"{auc_:.3f}"
        lines.append(f"  {h + ' d':>8} {doc['brier'][h]:7.4f} {doc['brier_climatology'][h]:7.4f} "
                     f"{doc['brier_skill'][h]:+7.3f} {interval:>17} {doc['log_score'][h]:7.4f} "
                     f"{doc['ece'][h]:6.3f} {auc_text:>6}")
    pop = doc["population"]["brier_skill"]
    lines += ["", "  Brier skill without the survival update (fresh theater effect only): "
              + ", ".join(f"{h} d {pop[h]:+.3f}" for h in map(str, HORIZONS)),
              f"  importance weights: max Pareto k {doc['importance']['pareto_k_max']}, "
              f"{doc['importance']['exact_refits']} forecast(s) replaced by exact refits"]
    if doc["exactness"]["checks"]:
        e = doc["exactness"]
        lines.append(f"  weighted vs exact refit on {len(e['checks'])} forecasts: mean |diff| "
                     + ", ".join(f"{h} d {e['mean_abs_diff'][h]:.3f}" for h in map(str, HORIZONS))
                     + "; max " + ", ".join(f"{e['max_abs_diff'][h]:.3f}" for h in map(str, HORIZONS)))
    if doc["metaculus"]["rows"]:
        lines += ["", f"  {doc['metaculus']['rows'][0]['question']}",
                  f"  {'date':10}  {'Metaculus':>10}  {'engine':>7}  80% interval"]
        for r in doc["metaculus"]["rows"]:
            sign = ">" if r["metaculus_relation"] == "above" else "~"
            lines.append(f"  {r['date']}  {sign + format(r['metaculus'], '.0%'):>10}  {r['engine']['mean']:7.1%}  "
                         f"{r['engine']['lo']:.0%}–{r['engine']['hi']:.0%}")
    g = doc["diagnostics"]
    lines += ["", f"  fits {g['fits']} ({g['compiles']} compiled, {g['compile_reuses']} reused), max R-hat "
                  f"{g['r_hat_max']}, min bulk ESS {g['ess_bulk_min']}, divergences {g['divergences']}"]
    if doc.get("files"):
        lines += ["", "  files: " + ", ".join(doc["files"])]
    return "\n".join(lines)
