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
  (PSIS, `forecast.reweight`); the days ahead use fresh paths, as after a fit. This is the
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

Scores per horizon (7, 30, 90 days), over every (case, as-of) forecast, are
`forecast.scoring`'s: Brier score and log score, Brier skill against
climatology (the base rate of the outcome at that horizon over the as-of points
of the *other* closed cases, so the baseline is leave-one-case-out too),
reliability bins with the expected calibration error, AUC and the false-alarm
share. The comparison with the public record is `forecast.public_record`; the
files and terminal text are `forecast.backtest_report`.

Speed. Every fit has the same parameter shapes (the held-out case stays in
the model as an empty panel; stage 1's latent vectors are padded), so each
stage is compiled once and later fits swap only the data
(`nutpie.CompiledModel.with_data`).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from forecast import dataset, hazard, model, predict, priors, public_record, reweight, runs, sampling, scoring, store
from forecast.executor import Executor, Serial, WorkerLost
from forecast.features import STATIC, TheaterPanel, build_panel, troop_obs
from forecast.reference_class import STEP_DAYS, Case, climatology, load_cases
from forecast.sampling import COMPILED, SamplerSettings, stacked
from forecast.schema import Theater

HORIZONS = predict.HORIZONS
HORIZON_KEYS = [str(h) for h in HORIZONS]
Z_PER_DRAW = 8  # fresh theater effects per posterior draw for a held-out case


class BacktestError(ValueError):
    """Bad input: unknown or open case, missing public-forecast file..."""


# --- the reference class of each fit --------------------------------------------------------


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


# --- forecasts ------------------------------------------------------------------------------


def seed_of(*parts) -> list[int]:
    """A stable seed from a case id and a date (never from anything the outcome decides)."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def loco_forecasts(fit: model.Fit, case: Case, seed: int) -> list[dict]:
    """Forecasts of a held-out case at each of its as-of dates, from a fit that never saw it.

    Each posterior draw gets Z_PER_DRAW fresh theater effects z ~ N(0, 1). `prob_population` is
    the plain average: a theater the model knows nothing about. `prob` also conditions on what
    an analyst knows on the as-of date and the exact as-of fit uses: the case's own at-risk days
    so far passed without escalation. Each (draw, z) is weighted by the likelihood the as-of fit
    would give those days (`hazard.survival_by_day`: the form of `model.build_stage2`, averaged
    over model.N_PATHS imputation paths of the force covariates, fixed across draws), with
    Pareto-smoothed importance weights (`reweight.psis`; k and the effective sample size are
    reported). The days ahead use fresh force paths per draw, as `forecast.predict` does.
    """
    stage1 = fit.stage1_draws
    post = stacked(fit.stage2.posterior)
    alpha, beta, sigma = post["alpha"].values, post["beta"].values, post["sigma_theater"].values
    n, at = len(alpha), [h - 1 for h in HORIZONS]
    out = []
    for as_of in case.as_of_dates():
        rng = np.random.default_rng(seed_of(seed, case.id, as_of))
        panel = build_panel(case.theater, case.rows, cut=as_of, reading=fit.profile.reading)  # rows carry no outcome
        z = rng.standard_normal((n, Z_PER_DRAW))

        # The days so far: no escalation. Likelihood as in the fit, over fixed imputation paths.
        picks = rng.choice(stage1.sizes["sample"], size=model.N_PATHS, replace=False)
        paths = model.force_paths(panel, stage1, panel.days, picks, rng.standard_normal(model.N_PATHS))
        survival = hazard.survival_by_day(alpha, sigma, z, beta, panel.static, paths)
        weights = reweight.psis(survival[..., -1].ravel())  # through the as-of day

        # The days ahead, from fresh paths per draw.
        ahead = panel.cut + np.arange(1, max(HORIZONS) + 1)
        x = predict.future_covariates(panel, stage1, rng.integers(0, stage1.sizes["sample"], n),
                                      rng.standard_normal(n), ahead)
        eta = hazard.log_odds(alpha[:, None, None], sigma[:, None, None], z[:, :, None], x[:, None],
                              beta[:, None, :])  # (draws, z, days)
        cum = hazard.cumulative(hazard.daily(eta))[..., at].reshape(n * Z_PER_DRAW, -1)
        out.append({"case": case.id, "as_of": as_of.isoformat(),
                    "prob": {str(h): predict.prob_band(cum[:, i], weights.w) for i, h in enumerate(HORIZONS)},
                    "prob_population": {str(h): predict.prob_band(cum[:, i]) for i, h in enumerate(HORIZONS)},
                    "pareto_k": None if weights.pareto_k is None else round(weights.pareto_k, 3),
                    "ess": round(weights.ess, 1), "at_risk_days": len(panel.days)})
    return out


def exact_forecast(fit: model.Fit, case: str, seed: int) -> dict:
    """P(escalation within each horizon) from an exact as-of fit of `case` (its own theater effect)."""
    panel = fit.panel(case)
    rng = np.random.default_rng(seed_of(seed, case, panel.cut, "exact"))
    cum = predict.cumulative_ahead(fit.stage1_draws, panel, predict.hazard_params(fit.stage2.posterior, case),
                                   max(HORIZONS), rng)
    return {str(h): predict.prob_band(cum[:, h - 1]) for h in HORIZONS}


def pick_checks(forecasts: list[dict], n: int) -> list[dict]:
    """Forecasts to compare with exact refits, the hardest first.

    One per case: its reliable (k <= PARETO_K_MAX) forecast with the longest survival so far
    (where the weights move the most). First the one with the largest Pareto k, then by survival.
    """
    best: dict[str, dict] = {}
    for f in forecasts:
        if (f["pareto_k"] or 0) <= reweight.PARETO_K_MAX and f["at_risk_days"] > 1:
            if f["case"] not in best or f["at_risk_days"] > best[f["case"]]["at_risk_days"]:
                best[f["case"]] = f
    ranked = sorted(best.values(), key=lambda f: -f["at_risk_days"])
    if ranked:
        hardest = max(ranked, key=lambda f: f["pareto_k"] or -np.inf)
        ranked = [hardest] + [f for f in ranked if f is not hardest]
    return ranked[:n]


# --- scores -------------------------------------------------------------------------------------


def observe(forecasts: list[dict], cases: dict[str, Case]) -> None:
    """Each forecast's outcome at every horizon and its leave-one-case-out climatology, in place."""
    clim = {(cid, h): climatology(cases, cid, h) for cid in {f["case"] for f in forecasts} for h in HORIZONS}
    for f in forecasts:
        case = cases[f["case"]]
        as_of = dt.date.fromisoformat(f["as_of"])
        f["observed"] = {str(h): case.observed(as_of, h) for h in HORIZONS}
        f["climatology"] = {str(h): round(clim[case.id, h], 4) for h in HORIZONS}


def score(forecasts: list[dict], cases: dict[str, Case]) -> dict:
    """Every score per horizon (`forecast.scoring`), plus the per-case table."""
    observe(forecasts, cases)
    doc = scoring.metrics(forecasts, "prob", HORIZON_KEYS)
    doc["brier_skill_interval"] = scoring.skill_interval(forecasts, "prob", HORIZON_KEYS)
    doc["population"] = {k: v for k, v in scoring.metrics(forecasts, "prob_population", HORIZON_KEYS).items()
                         if k != "reliability"}
    ks = np.array([f["pareto_k"] or 0 for f in forecasts])
    doc["importance"] = {"pareto_k_max": round(float(ks.max()), 3),
                         f"pareto_k_over_{reweight.PARETO_K_MAX}": int((ks > reweight.PARETO_K_MAX).sum()),
                         "ess_min": min(f["ess"] for f in forecasts)}
    doc["n_forecasts"] = len(forecasts)
    doc["cases"] = [case_row(cases[cid], [f for f in forecasts if f["case"] == cid])
                    for cid in dict.fromkeys(f["case"] for f in forecasts)]
    return doc


def case_row(case: Case, forecasts: list[dict]) -> dict:
    return {"id": case.id, "outcome": "escalated" if case.escalated else "none", "end_date": case.end.isoformat(),
            "start": case.theater.start.isoformat(), "forecasts": len(forecasts),
            "first_as_of": forecasts[0]["as_of"], "last_as_of": forecasts[-1]["as_of"],
            **scoring.case_scores(forecasts, HORIZON_KEYS)}


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Options:
    cases: list[str] | None = None  # None: every closed case
    profile: priors.Profile | None = None
    settings: SamplerSettings = field(default_factory=lambda: SamplerSettings(progressbar=False))
    metaculus: bool | None = None  # None: when the flagship's question is in scope
    check_exact: int = 3  # compare this many importance-weighted forecasts with exact as-of refits
    progress: bool = True
    sample: Callable = sampling.sample  # the sampler call (fast tests pass a prior-draw stand-in)


@dataclass
class Result:
    """What a backtest produced, before it is scored into the document."""

    chosen: list[str]
    cases: dict[str, Case]
    profile: priors.Profile
    settings: SamplerSettings
    forecasts: list[dict] = field(default_factory=list)
    exact_refits: int = 0
    exactness: list[dict] = field(default_factory=list)
    metaculus: list[dict] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)
    fits: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=lambda: {"compile": 0.0, "sampling": 0.0, "forecast": 0.0})
    executor: str = "serial (this process)"
    seconds: float = 0.0

    def document(self) -> dict:
        """The document `forecast backtest --json` prints."""
        doc = {"cases_run": self.chosen, "horizons": list(HORIZONS), "step_days": STEP_DAYS,
               "prior_profile": self.profile.name, "prior_hash": self.profile.hash,
               "code_version": runs.code_version(),
               "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "sampler": self.settings.recorded(),
               "method": ("leave-one-case-out: one fit per case without the case; the case's theater effect "
                          "drawn fresh (z ~ N(0,1)) and weighted by its survival to the as-of date (PSIS); exact "
                          f"as-of refit where Pareto k > {reweight.PARETO_K_MAX}"),
               "censoring": "a case that ended without escalation counts as 0 at every horizon"}
        doc.update(score(self.forecasts, self.cases))
        doc["importance"]["exact_refits"] = self.exact_refits
        doc["exactness"] = _exactness(self.exactness)
        doc["forecasts"] = self.forecasts
        doc["metaculus"] = public_record.section(self.metaculus, self.questions)
        doc["diagnostics"] = fit_summary(self.fits)
        doc["timing"] = {k: round(v, 1) for k, v in self.timing.items()}
        doc["executor"] = self.executor
        doc["seconds"] = round(self.seconds, 1)
        return doc


def fit_summary(fits: list[dict]) -> dict:
    """Convergence over every fit of a study: how many fail the gate, worst R-hat and ESS, compiles."""
    return {"fits": len(fits), "failing_gate": sum(bool(runs.gate(f)) for f in fits),
            "r_hat_max": max((f["r_hat_max"] for f in fits), default=None),
            "ess_bulk_min": min((f["ess_bulk_min"] for f in fits), default=None),
            "divergences": sum(f["divergences"] for f in fits),
            "compiles": sum(f["compiles"] for f in fits),
            "compile_reuses": sum(f["compile_reuses"] for f in fits),
            "per_fit": fits}


def _exactness(checks: list[dict]) -> dict:
    summary = {"checks": checks, "mean_abs_diff": None, "max_abs_diff": None}
    if checks:
        summary["mean_abs_diff"] = {h: round(float(np.mean([c["abs_diff"][h] for c in checks])), 4)
                                    for h in HORIZON_KEYS}
        summary["max_abs_diff"] = {h: max(c["abs_diff"][h] for c in checks) for h in HORIZON_KEYS}
    return summary


@dataclass
class Context:
    """What every fit of one backtest needs: sent with each job to where it runs (`forecast.executor`)."""

    theaters: list
    evidence: list
    cases: dict[str, Case]
    full: dict[str, TheaterPanel]
    pad: tuple[int, int]
    profile: priors.Profile
    settings: SamplerSettings
    sample: Callable = sampling.sample


@dataclass(frozen=True)
class ExactJob:
    """One exact as-of fit (the case cut at as_of, as `forecast refit --as-of` makes) and what it serves:
    the replacement or check of a weighted forecast (`exact`) and the public record's dates (`until`)."""

    case: str
    as_of: str
    exact: bool = False
    until: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"exact:{self.case}:{self.as_of}"


def _fit(ctx: Context, panels, target: str, label: str) -> tuple[model.Fit, dict]:
    """One fit through this process's compile cache, and its log line for the document."""
    hits, misses = COMPILED.hits, COMPILED.misses
    f = model.fit(panels, target, ctx.profile, ctx.settings, compiler=COMPILED, stage1_pad=ctx.pad,
                  sample=ctx.sample)
    return f, fit_log(f, label, COMPILED.hits - hits, COMPILED.misses - misses)


def fit_log(f: model.Fit, label: str, reuses: int, compiles: int) -> dict:
    """A fit's line in a study's document: convergence, seconds, compiles, where it ran."""
    diag = model.diagnostics(f)
    return {"fit": label, **{k: diag[k] for k in ("r_hat_max", "ess_bulk_min", "divergences",
                                                  "sampling_seconds", "compile_seconds")},
            "compiles": compiles, "compile_reuses": reuses, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def loco_job(cid: str, ctx: Context) -> dict:
    """1. The leave-one-case-out fit of `cid` and its importance-weighted forecasts at every as-of date."""
    job_started = time.perf_counter()
    fit, log = _fit(ctx, loco_panels(ctx.cases, ctx.full, cid), cid, f"loco:{cid}")
    started = time.perf_counter()
    forecasts = loco_forecasts(fit, ctx.cases[cid], ctx.settings.seed)
    for f in forecasts:
        f["method"] = "loco-weighted"
    log["job_seconds"] = round(time.perf_counter() - job_started, 2)  # all of it, where it ran
    return {"forecasts": forecasts, "fit": log, "forecast_seconds": time.perf_counter() - started}


def exact_job(job: ExactJob, ctx: Context) -> dict:
    """2. An exact as-of fit: its forecast (replacing or checking a weighted one) and the public record's dates."""
    job_started = time.perf_counter()
    as_of = dt.date.fromisoformat(job.as_of)
    panels, _ = dataset.assemble(ctx.theaters, ctx.evidence, job.case, as_of, reading=ctx.profile.reading)
    fit, log = _fit(ctx, panels, job.case, job.label)
    started = time.perf_counter()
    exact = exact_forecast(fit, job.case, ctx.settings.seed) if job.exact else None
    engine = {}
    for until in job.until:
        until_day = dt.date.fromisoformat(until)
        rng = np.random.default_rng(seed_of(ctx.settings.seed, job.case, as_of, until_day))
        engine[until] = public_record.engine_by(fit, job.case, as_of, until_day, rng)
    log["job_seconds"] = round(time.perf_counter() - job_started, 2)
    return {"fit": log, "exact": exact, "engine": engine, "forecast_seconds": time.perf_counter() - started}


def plan_exact(unreliable: list[dict], checks: list[dict], questions: list[dict]) -> list[ExactJob]:
    """The exact as-of fits the run needs, each once: replacements, then checks, then the public record's."""
    exact = dict.fromkeys((f["case"], f["as_of"]) for f in unreliable + checks)
    until: dict[tuple[str, str], list[str]] = {}
    for q in questions:
        for pf in q["forecasts"]:
            until.setdefault((q["theater"], pf["date"]), []).append(q["resolves_by"])
    keys = list(dict.fromkeys([*exact, *until]))
    return [ExactJob(c, d, (c, d) in exact, tuple(dict.fromkeys(until.get((c, d), [])))) for c, d in keys]


def _run_jobs(executor: Executor, job, items: list, ctx: Context, result: Result, bar) -> list[dict]:
    """Every item's output in the items' order (so the document equals the serial run's), logged and counted."""
    outputs: list[dict | None] = [None] * len(items)
    for i, outcome in executor.run(job, items, ctx):
        label = items[i] if isinstance(items[i], str) else items[i].label
        try:
            outputs[i] = outcome.get()
        except WorkerLost as err:
            raise BacktestError(f"fit {label}: {err}") from None
        bar.set_postfix_str(label)
        bar.update(1)
    for out in outputs:
        result.fits.append(out["fit"])
        result.timing["compile"] += out["fit"]["compile_seconds"]
        result.timing["sampling"] += out["fit"]["sampling_seconds"]
        result.timing["forecast"] += out["forecast_seconds"]
    return outputs


def _apply_exact(result: Result, jobs: list[ExactJob], outputs: list[dict], unreliable, checks) -> None:
    """Replace the unreliable weighted forecasts, record the checks and the public record's rows."""
    by_key = {(j.case, j.as_of): out for j, out in zip(jobs, outputs)}
    for f in unreliable:
        f["prob_weighted"], f["prob"] = f["prob"], by_key[f["case"], f["as_of"]]["exact"]
        f["method"] = "exact-refit"
    result.exact_refits = len(unreliable)
    for f in checks:
        exact = by_key[f["case"], f["as_of"]]["exact"]
        result.exactness.append({
            "case": f["case"], "as_of": f["as_of"], "pareto_k": f["pareto_k"],
            "weighted": {h: f["prob"][h]["mean"] for h in exact}, "exact": {h: exact[h]["mean"] for h in exact},
            "abs_diff": {h: round(abs(f["prob"][h]["mean"] - exact[h]["mean"]), 4) for h in exact}})
    for q in result.questions:
        for pf in q["forecasts"]:
            out = by_key[q["theater"], pf["date"]]
            result.metaculus.append(public_record.row(q, pf, out["engine"][q["resolves_by"]], out["fit"]))


def chosen_cases(asked: list[str] | None, theaters, cases: dict[str, Case]) -> list[str]:
    """The cases a study runs (`--case`, default every closed case), each checked."""
    known = {t.id for t in theaters}
    chosen = asked or list(cases)
    for cid in chosen:
        if cid not in known:
            raise BacktestError(f"--case {cid}: unknown theater; see `forecast theaters`")
        if cid not in cases:
            raise BacktestError(f"--case {cid}: the case is still open (no outcome), so it cannot be scored")
    return list(dict.fromkeys(chosen))


def run(eng, options: Options | None = None, executor: Executor | None = None) -> dict:
    """Fit, forecast and score; returns the document `forecast backtest --json` prints.

    `executor`: where the fits run (`forecast.executor`; default: this process, one after another).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    options, executor = options or Options(), executor or Serial()
    theaters, evidence = store.load_theaters(eng), store.load_evidence(eng)
    cases = load_cases(theaters, evidence)
    result = Result(chosen_cases(options.cases, theaters, cases), cases, options.profile or priors.load("default"),
                    options.settings)
    try:
        public = public_record.load()
    except public_record.PublicRecordError as err:
        raise BacktestError(str(err)) from None
    result.questions = [q for q in public["questions"] if q["theater"] in cases
                        and (options.metaculus or (options.metaculus is None and q["theater"] in result.chosen))]
    full = {cid: c.full_panel(result.profile.reading) for cid, c in cases.items()}
    ctx = Context(theaters, evidence, cases, full, stage1_pad(list(full.values())), result.profile,
                  result.settings, options.sample)
    bar = tqdm(total=len(result.chosen) + len(plan_exact([], [], result.questions)), desc="backtest", unit="fit",
               file=sys.stderr, disable=not options.progress)
    bar.set_postfix_str(executor.description)

    for out in _run_jobs(executor, loco_job, result.chosen, ctx, result, bar):
        result.forecasts += out["forecasts"]
    unreliable = [f for f in result.forecasts if (f["pareto_k"] or 0) > reweight.PARETO_K_MAX]
    checks = pick_checks(result.forecasts, options.check_exact)
    jobs = plan_exact(unreliable, checks, result.questions)
    bar.total = len(result.chosen) + len(jobs)
    bar.refresh()
    _apply_exact(result, jobs, _run_jobs(executor, exact_job, jobs, ctx, result, bar), unreliable, checks)
    bar.close()

    result.executor = executor.description
    result.seconds = time.perf_counter() - started
    return result.document()
