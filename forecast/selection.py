r"""Nested leave-one-case-out selection of the evidence reading (issue 18): `forecast backtest --select`.

The candidates are readings of the evidence (`models/candidates.toml`,
`forecast.features.Reading`): how a sign's weight runs over the weeks after it
is seen, whether a report counts by its credibility grade, one report per
category and week or every report. A choice among them made on the same
backtest it is scored on is optimistic, so the choice is made inside each fold:

for every closed case c (the outer fold)
    1. fit every candidate on the reference class without c (stage 1 once:
       it reads only troop estimates, which no reading changes);
    2. score each candidate on the *inner* cases only, by the Pareto-smoothed
       leave-one-theater-out expected log predictive density of that fit,

           elpd_c(m) = sum_{i != c} log p(y_i | y_{-i, -c}, m)      (az.loo, per theater)

       -- the log score of each inner crisis's day-by-day onset record, a proper
       score of the same hazard the forecasts come from;
    3. choose m*(c) = argmax_m elpd_c(m); c never enters it;
    4. c's forecasts (importance-weighted by its survival, as in
       `forecast.backtest`) from every candidate's fit; the *selected* stream
       takes m*(c)'s.

The outer scores of the selected stream are the honest estimate of the whole
procedure; each candidate's own outer scores are reported beside it for the
table, never used to choose. Baselines come from the same folds: climatology
(the leave-one-case-out base rate), the survival-only candidate (no
indicators: base rate, theater effect and how long the crisis has gone
quiet), and the selected model's indicators without the survival update
(`prob_population`).

The reading an analyst should use on an open crisis is the procedure run on
every case: the candidate with the largest inner elpd summed over the folds
(every fold's fit holds all but one case). Forecasts here are all
importance-weighted (no exact refits): `n_pareto_k_over` counts those whose
weights are unreliable.
"""

from __future__ import annotations

import datetime as dt
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forecast import backtest, config, hazard, model, priors, reweight, runs, scoring, store
from forecast.backtest import HORIZON_KEYS, BacktestError, Context, loco_forecasts, loco_panels, stage1_pad
from forecast.executor import Executor, Serial, WorkerLost
from forecast.reference_class import load_cases
from forecast.sampling import COMPILED, stacked

SCORES = ("brier", "brier_skill", "log_score", "ece", "auc", "false_alarm_share")


@dataclass(frozen=True)
class Candidate:
    name: str
    profile: priors.Profile  # the analyst's profile with this candidate's reading
    baseline: bool = False


def candidates_path() -> Path:
    return config.home() / "models" / "candidates.toml"


def load_candidates(base: priors.Profile, names: list[str] | None = None,
                    path: Path | None = None) -> list[Candidate]:
    """The candidates (all, or `names` plus every baseline), each a copy of `base` with its reading."""
    path = path or candidates_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise BacktestError(f"{path}: cannot be read ({err})") from None
    unknown = [n for n in names or [] if n not in doc]
    if unknown:
        raise BacktestError(f"--candidate {unknown[0]}: not in {path} (known: {', '.join(doc)})")
    chosen = [n for n in doc if (names is None or n in names or doc[n].get("baseline"))]
    return [_candidate(n, _resolved(doc, n, path), base, path) for n in chosen]


def _resolved(doc: dict, name: str, path: Path, seen: tuple = ()) -> dict:
    """A candidate's table with `extends` followed (its own keys win)."""
    table = dict(doc[name])
    parent = table.pop("extends", None)
    if parent is None:
        return table
    if parent not in doc or parent in seen:
        raise BacktestError(f"{path}: [{name}] extends {parent!r}, which is unknown or circular")
    return {**_resolved(doc, parent, path, seen + (name,)), **table}


def _candidate(name: str, table: dict, base: priors.Profile, path: Path) -> Candidate:
    baseline = table.pop("baseline", False)
    try:
        reading = priors.reading_of(table, f"{path}: [{name}]")
    except priors.ProfileError as err:
        raise BacktestError(str(err)) from None
    return Candidate(name, base.with_reading(reading, f"{base.name}+{name}"), bool(baseline))


# --- one outer fold -------------------------------------------------------------------------------


@dataclass
class Study:
    """What every fold needs (sent with each job): one backtest context per candidate."""

    names: list[str]
    contexts: list[Context]


def study_of(theaters, evidence, cases: dict, candidates: list[Candidate], options: backtest.Options) -> Study:
    """Each candidate's reference class read its way; one stage-1 padding for all (troops are read alike)."""
    contexts, pad = [], None
    for c in candidates:
        full = {cid: case.full_panel(c.profile.reading) for cid, case in cases.items()}
        pad = pad or stage1_pad(list(full.values()))
        contexts.append(Context(theaters, evidence, cases, full, pad, c.profile, options.settings, options.sample))
    return Study([c.name for c in candidates], contexts)


GAUSS_HERMITE_NODES = 9  # quadrature over a new theater's effect z ~ N(0, 1)


def new_theater_log_lik(fit: model.Fit) -> np.ndarray:
    """log p(y_i | alpha, beta, sigma) per draw and theater i (draws, theaters): each theater's whole
    record with its effect integrated out,

        log sum_q w_q mean_k prod_g p(y_g | alpha + sigma z_q + beta . x_k,g),

    as if the theater were new (z by Gauss-Hermite quadrature, force covariates over the fit's
    imputation paths k, groups g of identical days as in the fit). This is the predictive the
    outer fold faces, and without the theater's own z in it PSIS-LOO stays stable.
    """
    g = model.collapse(fit.panels, fit.x_force)
    post = stacked(fit.stage2.posterior)
    alpha, beta, sigma = post["alpha"].values, post["beta"].values, post["sigma_theater"].values
    nodes, weights = np.polynomial.hermite_e.hermegauss(GAUSS_HERMITE_NODES)
    log_w = np.log(weights / weights.sum())
    n_force = fit.x_force.shape[-1]
    out = np.zeros((len(alpha), len(fit.panels)))
    for theater in range(len(fit.panels)):  # one theater at a time: (nodes, draws, its groups) fits in memory
        own = g["theater"] == theater
        quiet = hazard.log_odds(alpha[None, :, None], sigma[None, :, None], nodes[:, None, None],
                                g["static"][own], beta[:, n_force:])  # (nodes, draws, groups)
        total = None
        for path in g["force"][:, own]:  # (groups, force indicators) per imputation path
            eta = quiet + hazard.covariate_term(path, beta[:, :n_force])[None]
            ll = hazard.grouped_log_lik(eta, g["days"][own], g["events"][own]).sum(axis=-1) + log_w[:, None]
            total = ll if total is None else np.logaddexp(total, ll)
        out[:, theater] = np.logaddexp.reduce(total, axis=0) - np.log(len(g["force"]))
    return out


def inner_elpd(fit: model.Fit, held_out: str) -> dict:
    """PSIS-LOO over the fit's theaters except the held-out one (an empty panel in this fit), each theater
    scored as a new one (`new_theater_log_lik`): elpd_i = log sum_s w_is p(y_i | theta_s), w_is from
    PSIS of 1 / p(y_i | theta_s) (`forecast.reweight.psis`)."""
    elpd, ks = [], []
    log_lik = new_theater_log_lik(fit)  # the empty held-out panel gives a column of zeros, skipped
    for i, panel in enumerate(fit.panels):
        if panel.id == held_out:
            continue
        ll = log_lik[:, i]
        w = reweight.psis(-ll)
        elpd.append(float(np.log(np.sum(w.w * np.exp(ll - ll.max()))) + ll.max()))
        ks.append(w.pareto_k or 0.0)
    ks = np.array(ks)
    return {"elpd": round(float(np.sum(elpd)), 3), "se": round(float(np.sqrt(len(elpd)) * np.std(elpd)), 3),
            "pareto_k_max": round(float(ks.max()), 3),
            f"pareto_k_over_{reweight.PARETO_K_MAX}": int((ks > reweight.PARETO_K_MAX).sum())}


def fold_job(cid: str, study: Study) -> dict:
    """Every candidate fitted without `cid` (one stage 1), scored on the inner cases, and its forecasts of cid."""
    started = time.perf_counter()
    first = study.contexts[0]
    seconds: dict[str, float] = {}
    hits, misses = COMPILED.hits, COMPILED.misses
    stage1 = model.fit_stage1(loco_panels(first.cases, first.full, cid), first.settings, seconds, COMPILED,
                              first.pad, first.sample)
    out = {"case": cid, "candidates": {}}
    for i, (name, ctx) in enumerate(zip(study.names, study.contexts)):
        # The first candidate's log carries the shared stage 1's seconds, the others their stage 2's only.
        fit = model.fit_stage2(loco_panels(ctx.cases, ctx.full, cid), cid, ctx.profile, ctx.settings, stage1,
                               dict(seconds) if i == 0 else {}, COMPILED, ctx.sample)
        log = backtest.fit_log(fit, f"select:{cid}:{name}", COMPILED.hits - hits, COMPILED.misses - misses)
        hits, misses = COMPILED.hits, COMPILED.misses
        forecasts = loco_forecasts(fit, ctx.cases[cid], ctx.settings.seed)
        out["candidates"][name] = {"inner": inner_elpd(fit, cid), "forecasts": forecasts, "fit": log}
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


# --- the study ------------------------------------------------------------------------------------


def run(eng, options: backtest.Options, candidates: list[Candidate], executor: Executor | None = None) -> dict:
    """Every fold on the executor, then the document `forecast backtest --select --json` prints."""
    from tqdm import tqdm

    started = time.perf_counter()
    executor = executor or Serial()
    theaters, evidence = store.load_theaters(eng), store.load_evidence(eng)
    cases = load_cases(theaters, evidence)
    chosen = backtest.chosen_cases(options.cases, theaters, cases)
    study = study_of(theaters, evidence, cases, candidates, options)
    bar = tqdm(total=len(chosen), desc="select", unit="fold", disable=not options.progress)
    bar.set_postfix_str(executor.description)
    folds: list[dict | None] = [None] * len(chosen)
    for i, outcome in executor.run(fold_job, chosen, study):
        try:
            folds[i] = outcome.get()
        except WorkerLost as err:
            raise BacktestError(f"fold {chosen[i]}: {err}") from None
        bar.set_postfix_str(chosen[i])
        bar.update(1)
    bar.close()
    doc = document(folds, candidates, cases, options)
    doc["executor"] = executor.description
    doc["seconds"] = round(time.perf_counter() - started, 1)
    return doc


def choose(fold: dict, candidates: list[Candidate]) -> str:
    """The candidate with the largest inner elpd in this fold (baselines are never chosen)."""
    eligible = [c.name for c in candidates if not c.baseline]
    return max(eligible, key=lambda n: fold["candidates"][n]["inner"]["elpd"])


def document(folds: list[dict], candidates: list[Candidate], cases: dict, options: backtest.Options) -> dict:
    """Outer scores of the selected stream, of every candidate, and of the baselines; the per-fold choices."""
    picks = {f["case"]: choose(f, candidates) for f in folds}
    streams = {c.name: [fc for f in folds for fc in f["candidates"][c.name]["forecasts"]] for c in candidates}
    selected = [dict(fc, candidate=picks[f["case"]]) for f in folds
                for fc in f["candidates"][picks[f["case"]]]["forecasts"]]
    for forecasts in [*streams.values(), selected]:
        backtest.observe(forecasts, cases)
    inner_total = {c.name: round(sum(f["candidates"][c.name]["inner"]["elpd"] for f in folds), 1)
                   for c in candidates}
    eligible = [c.name for c in candidates if not c.baseline]
    fits = [f["candidates"][n]["fit"] for f in folds for n in f["candidates"]]
    return {
        "method": "nested leave-one-case-out: in each outer fold every candidate is fitted without the case and "
                  "chosen by PSIS-LOO elpd over the inner cases; the outer case is forecast by the chosen one",
        "cases_run": [f["case"] for f in folds], "horizons": list(backtest.HORIZONS),
        "prior_profile": candidates[0].profile.name.split("+")[0], "sampler": options.settings.recorded(),
        "code_version": runs.code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "selected": {**stream_scores(selected, "prob"), "choices": picks,
                     "times_chosen": {n: sum(p == n for p in picks.values()) for n in eligible}},
        "candidates": [{"name": c.name, "baseline": c.baseline, "reading": reading_doc(c.profile.reading),
                        "prior_hash": c.profile.hash, "inner_elpd_total": inner_total[c.name],
                        **stream_scores(streams[c.name], "prob")} for c in candidates],
        "baselines": {"climatology": stream_scores(selected, "climatology"),
                      "indicators_without_survival": stream_scores(selected, "prob_population"),
                      **{c.name: stream_scores(streams[c.name], "prob") for c in candidates if c.baseline}},
        "chosen_on_all_cases": max(eligible, key=inner_total.get),
        "inner": {f["case"]: {n: f["candidates"][n]["inner"] for n in f["candidates"]} for f in folds},
        "diagnostics": backtest.fit_summary(fits),
        "forecasts": selected,
    }


def stream_scores(forecasts: list[dict], key: str) -> dict:
    """The named scores of one stream of forecasts at every horizon, with the skill's case-bootstrap interval."""
    if key == "climatology":  # climatology as a forecast: its own numbers in the forecasts' shape
        forecasts = [dict(f, climatology_forecast={h: {"mean": f["climatology"][h]} for h in HORIZON_KEYS})
                     for f in forecasts]
        key = "climatology_forecast"
    m = scoring.metrics(forecasts, key, HORIZON_KEYS)
    ks = np.array([f["pareto_k"] or 0 for f in forecasts])
    return {**{name: m[name] for name in SCORES}, "brier_skill_interval": scoring.skill_interval(
        forecasts, key, HORIZON_KEYS), "n_forecasts": len(forecasts),
        f"n_pareto_k_over_{reweight.PARETO_K_MAX}": int((ks > reweight.PARETO_K_MAX).sum())}


def reading_doc(reading) -> dict:
    d = {k: v for k, v in vars(reading).items() if k != "rationale"}
    return {**d, "lead_weeks": dict(reading.lead_weeks), "credibility": dict(reading.credibility)}

# --- the table ------------------------------------------------------------------------------------


def table_rows(doc: dict) -> list[dict]:
    """One row per stream: the selected one, every candidate (outer scores), the two scoring baselines."""
    chosen = doc["selected"]["times_chosen"]
    rows = [{"stream": "selected (nested)", "chosen": f"{len(doc['cases_run'])} folds", **doc["selected"]}]
    rows += [{"stream": c["name"] + (" (baseline)" if c["baseline"] else ""),
              "chosen": "-" if c["baseline"] else f"{chosen[c['name']]} folds", **c} for c in doc["candidates"]]
    rows += [{"stream": name.replace("_", " "), "chosen": "-", **doc["baselines"][name]}
             for name in ("climatology", "indicators_without_survival")]
    return rows


def text(doc: dict) -> str:
    """The study for a terminal: every stream's outer scores and what the folds chose."""
    from forecast import backtest_report

    g = doc["diagnostics"]
    return "\n".join([
        f"nested selection: {len(doc['candidates'])} candidates x {len(doc['cases_run'])} cases "
        f"({doc['executor']}, {doc['seconds']} s)", "",
        *backtest_report.score_table(table_rows(doc), doc["horizons"], "stream", "chosen"), "",
        f"  chosen on all cases (largest inner elpd summed over the folds): {doc['chosen_on_all_cases']}",
        f"  fits {g['fits']} ({g['compiles']} compiled, {g['compile_reuses']} reused), {g['failing_gate']} failing "
        f"the gate, max R-hat {g['r_hat_max']}, min bulk ESS {g['ess_bulk_min']}, divergences {g['divergences']}"])


def write_outputs(doc: dict, out: Path) -> list[str]:
    """selection.csv (the table), choices.csv (each fold's inner elpd per candidate), selection.json."""
    import csv
    import io
    import json

    from forecast import backtest_report, safe_write

    out.mkdir(parents=True, exist_ok=True)
    files = [str(safe_write.write_text(out / "selection.csv", backtest_report.score_csv(
        table_rows(doc), doc["horizons"], "stream", "chosen")))]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = [c["name"] for c in doc["candidates"]]
    writer.writerow(["case", "chosen", *(f"elpd_{n}" for n in names)])
    for case, inner in doc["inner"].items():
        writer.writerow([case, doc["selected"]["choices"][case], *(inner[n]["elpd"] for n in names)])
    files.append(str(safe_write.write_text(out / "choices.csv", buffer.getvalue())))
    files.append(str(out / "selection.json"))
    safe_write.write_text(out / "selection.json", json.dumps({**doc, "files": files}, indent=2, default=str))
    return files
