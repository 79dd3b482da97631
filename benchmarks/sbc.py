"""Simulation-based calibration (SBC) of the escalation model (issue 4, item 6).

    .venv/bin/python benchmarks/sbc.py                     # 100 replicates
    .venv/bin/python benchmarks/sbc.py -n 100 --max-minutes 25   # what the committed results ran
    .venv/bin/python benchmarks/sbc.py --plot-only         # redraw the histograms from the results file
    .venv/bin/python benchmarks/sbc.py --candidate lead-graded   # under a reading of models/candidates.toml

Each replicate
1. draws every parameter from its prior — alpha, beta and sigma_theater from the
   default prior profile, bias, noise and drift from the stage-1 priors — by
   sampling the prior variables of the model's own PyMC graphs (`build_stage1`,
   `build_stage2`), so the script follows any change to the priors;
2. simulates a data set from the model's generative process (`forecast.simulate`:
   theaters × days, troop estimates from biased noisy sources, evidence rows, an
   escalation day from the hazard on the covariates the model itself computes);
3. fits it with `forecast.model.fit` (two stages, nutpie);
4. records the rank of each true value among L thinned posterior draws (evenly
   spaced over all chains).

If the model, the simulator and the sampler are right, every rank is uniform on
0..L. The results file holds the ranks, a chi-square test of uniformity per
parameter (ranks binned so each bin expects >= 5), per-replicate diagnostics and
timings; the figure shows the rank histograms against the 99% band of a uniform.

The stage-2 posterior is a "cut" posterior (stage 1 is not revised by the
outcomes) integrated over K imputation paths of the force level, so exact
uniformity is not guaranteed for the hazard parameters: SBC measures how far off
that approximation is.

Every replicate has the same graph (same theater count, stage-1 sizes padded), so
nutpie compiles each stage once and later replicates only swap the data in
(`forecast.sampling.CompileCache`); replicate 1 is also fitted with a fresh
compile and the largest posterior difference is recorded (0 when reuse is exact).
About 13 s per replicate on 2 cores; 100 replicates take ~25 minutes.

Writes benchmarks/sbc_results.json (after every replicate, so a stopped run keeps
what it did) and benchmarks/sbc_ranks.png; with `--candidate NAME` the data are
simulated and fitted under that evidence reading (issue 18: lead-time kernels,
credibility grades, weekly density, the time-since-start term, whose beta is then
ranked too) and the files are
sbc_results-NAME.json and sbc_ranks-NAME.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from forecast import model, priors, sampling, simulate  # noqa: E402
from forecast.features import INDICATORS, READING  # noqa: E402
from forecast.sampling import CompileCache  # noqa: E402  one nutpie compile per graph, then data swaps
from forecast.schema import SOURCE_TYPES  # noqa: E402

RESULTS = HERE / "sbc_results.json"
FIGURE = HERE / "sbc_ranks.png"
TRACKED_BETAS = ["force_level", "force_growth", "overstay", "unit_arrivals", "sign_medical", "claim_verified"]


def tracked(reading=READING) -> list[tuple[str, str, int | None]]:
    """(label, variable, index) of every parameter whose rank is recorded.

    The time-since-start term is tracked when the reading turns it on (else its covariate is 0
    and its beta is only the prior)."""
    out = [("alpha", "alpha", None), ("sigma_theater", "sigma_theater", None)]
    betas = TRACKED_BETAS + (["crisis_age"] if reading.crisis_age else [])
    out += [(f"beta[{name}]", "beta", INDICATORS.index(name)) for name in betas]
    out += [("drift", "drift", None)]
    out += [(f"bias[{s}]", "bias", i) for i, s in enumerate(SOURCE_TYPES)]
    out += [(f"noise[{s}]", "noise", i) for i, s in enumerate(SOURCE_TYPES)]
    return out


def prior_draws(n: int, seed: int, profile: priors.Profile) -> list[dict]:
    """n parameter sets from the priors of the model's own graphs (their priors do not depend on the data)."""
    import pymc as pm

    placeholder = {"alpha": -6.0, "beta": np.zeros(len(INDICATORS)), "sigma_theater": 0.5,
                   "bias": np.zeros(len(SOURCE_TYPES)), "noise": np.full(len(SOURCE_TYPES), 0.3), "drift": 0.1}
    panels = simulate.simulate(placeholder, 3, 30, np.random.default_rng(0)).panels()
    stage1 = model.build_stage1(panels)
    rows = sum(len(p.days) for p in panels)
    stage2 = model.build_stage2(panels, np.zeros((model.N_PATHS, rows, 2)), profile)
    s1 = pm.draw([stage1["bias"], stage1["noise"], stage1["drift"]], draws=n, random_seed=seed)
    s2 = pm.draw([stage2["alpha"], stage2["beta"], stage2["sigma_theater"]], draws=n, random_seed=seed + 1)
    return [{"bias": s1[0][i], "noise": s1[1][i], "drift": float(s1[2][i]), "alpha": float(s2[0][i]),
             "beta": s2[1][i], "sigma_theater": float(s2[2][i])} for i in range(n)]


def thinned(values: np.ndarray, n: int) -> np.ndarray:
    """n draws evenly spaced over the chains × draws of one posterior variable (draws first)."""
    flat = values.reshape(-1, *values.shape[2:])
    return flat[np.linspace(0, len(flat) - 1, n).round().astype(int)]


def replicate(i: int, params: dict, args, compiler=None, verify: bool = False) -> dict:
    profile = priors.load("default")
    rng = np.random.default_rng([args.seed, i])
    started = time.perf_counter()
    sim = simulate.simulate(params, args.theaters, args.days, rng, estimates=tuple(args.estimates),
                            reading=reading_of(args.candidate))
    panels = sim.panels()
    settings = sampling.SamplerSettings(draws=args.draws, tune=args.tune, chains=args.chains, cores=args.cores,
                                     seed=args.seed * 1000 + i, progressbar=False)
    # Fixed latent sizes (a start per theater, the most increments the estimates allow), so every
    # replicate has the same graph and the compiled model is reused with the new data.
    pad = (args.theaters, args.theaters * (args.estimates[1] - 1))
    fitted = model.fit(panels, panels[-1].id, profile, settings, compiler=compiler, stage1_pad=pad)
    diagnostics = model.diagnostics(fitted)
    check = None
    if verify:  # the same fit compiled afresh must give the same posterior as the reused compiled model
        fresh = model.fit(panels, panels[-1].id, profile, settings, stage1_pad=pad)
        check = max(float(np.abs(getattr(fitted, stage).posterior[name].values
                                 - getattr(fresh, stage).posterior[name].values).max())
                    for stage, names in (("stage1", model.STAGE1_VARS), ("stage2", model.STAGE2_VARS))
                    for name in names)
    ranks = {}
    for label, name, index in tracked(sim.reading):
        idata = fitted.stage1 if name in model.STAGE1_VARS else fitted.stage2
        draws = thinned(idata.posterior[name].values, args.thin)
        truth = np.asarray(params[name])
        if index is not None:
            draws, truth = draws[:, index], truth[index]
        ranks[label] = int((draws < truth).sum())
    return {"replicate": i, "ranks": ranks, "seconds": round(time.perf_counter() - started, 1),
            "events": int((sim.event_day >= 0).sum()), "theater_days": int(sum(len(p.days) for p in panels)),
            "troop_estimates": int(sum(len(p.troops) for p in panels)),
            "r_hat_max": diagnostics["r_hat_max"], "ess_bulk_min": diagnostics["ess_bulk_min"],
            "divergences": diagnostics["divergences"], "stage_seconds": diagnostics["stage_seconds"],
            **({"cache_check_max_abs_diff": check} if verify else {}),
            "truth": {label: float(np.asarray(params[name])[index] if index is not None else params[name])
                      for label, name, index in tracked(sim.reading)}}


# --- summary ------------------------------------------------------------------------------


def n_bins(n: int, levels: int) -> int:
    """The most bins (dividing the rank levels evenly) that still expect >= 5 ranks each."""
    fitting = [b for b in (2, 4, 5, 10, 20) if levels % b == 0 and n / b >= 5]
    return max(fitting) if fitting else 1


def uniformity(ranks: list[int], levels: int) -> dict:
    from scipy import stats

    n = len(ranks)
    bins = n_bins(n, levels)
    if bins < 2:
        return {"bins": bins, "chi2": None, "p_value": None}
    counts = np.bincount(np.asarray(ranks) * bins // levels, minlength=bins)
    chi2, p = stats.chisquare(counts)
    return {"bins": bins, "counts": counts.tolist(), "chi2": round(float(chi2), 3), "p_value": round(float(p), 4)}


def summarise(done: list[dict], failed: list[dict], args, started: float, compiler=None) -> dict:
    levels = args.thin + 1
    params = {}
    for label, _, _ in tracked(reading_of(args.candidate)):
        ranks = [r["ranks"][label] for r in done]
        params[label] = {"ranks": ranks, **uniformity(ranks, levels),
                         "mean_rank_over_L": round(float(np.mean(ranks)) / args.thin, 4) if ranks else None}
    p_values = [v["p_value"] for v in params.values() if v["p_value"] is not None]
    seconds = [r["seconds"] for r in done]
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "what": "simulation-based calibration of forecast.model (two stages), data from forecast.simulate",
        "n_requested": args.n, "n_replicates": len(done), "n_failed": len(failed),
        "stopped_by_time_budget": bool(args.max_minutes and len(done) + len(failed) < args.n),
        "draws_thinned_to": args.thin, "rank_levels": levels,
        "settings": {"draws": args.draws, "tune": args.tune, "chains": args.chains, "cores": args.cores,
                     "stage1_draws_factor": sampling.SamplerSettings.stage1_draws_factor,
                     "imputation_paths": model.N_PATHS, "sampler": "nutpie", "seed": args.seed,
                     "reading": args.candidate or "original",
                     "compile_cache": {"hits": compiler.hits, "misses": compiler.misses}},
        "data": {"theaters": args.theaters, "days": args.days, "troop_estimates_per_theater": args.estimates,
                 "prior_profile": "default"},
        "summary": {
            "min_p_value": min(p_values) if p_values else None,
            "bonferroni_alpha_0.05": round(0.05 / len(p_values), 5) if p_values else None,
            "parameters_below_0.05": sorted(k for k, v in params.items() if v["p_value"] is not None
                                            and v["p_value"] < 0.05),
            "replicates_with_divergences": sum(r["divergences"] > 0 for r in done),
            "replicates_r_hat_above_1.01": sum(r["r_hat_max"] > 1.01 for r in done),
            "median_min_bulk_ess": float(np.median([r["ess_bulk_min"] for r in done])) if done else None,
            "median_events_per_replicate": float(np.median([r["events"] for r in done])) if done else None,
        },
        "parameters": params,
        "seconds_total": round(time.perf_counter() - started, 1),
        "seconds_per_replicate": {"median": float(np.median(seconds)), "max": float(max(seconds))} if seconds else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "replicates": done,
        "failures": failed,
    }


def plot(results: dict, path: Path = FIGURE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    params = results["parameters"]
    levels = results["rank_levels"]
    n = results["n_replicates"]
    cols = 4
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    bins = max(n_bins(n, levels), 2)
    for ax, (label, v) in zip(axes.flat, params.items()):
        counts = np.bincount(np.asarray(v["ranks"], dtype=int) * bins // levels, minlength=bins)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / bins)
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.axhline(n / bins, color="0.5", lw=0.8)
        ax.bar(np.arange(bins), counts, width=0.9, color="#4c78a8")
        p = v.get("p_value")
        ax.set_title(f"{label}\np = {p:.3f}" if p is not None else label, fontsize=8)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.suptitle(f"SBC rank histograms: {n} replicates, ranks among {levels - 1} thinned draws "
                 f"(grey: 99% band of a uniform)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reading_of(candidate: str | None):
    """The evidence reading of a candidate in models/candidates.toml (None: the original reading)."""
    if candidate is None:
        return READING
    from forecast import selection

    return next(c for c in selection.load_candidates(priors.load("default"), [candidate])
                if c.name == candidate).profile.reading


def outputs(candidate: str | None) -> tuple[Path, Path]:
    """The results file and the figure of a run (one pair per reading)."""
    if candidate is None:
        return RESULTS, FIGURE
    return HERE / f"sbc_results-{candidate}.json", HERE / f"sbc_ranks-{candidate}.png"


def write(results: dict, path: Path = RESULTS) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="replicates (default 100)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new replicate after this many minutes (the run reports how many it did)")
    parser.add_argument("--theaters", type=int, default=30)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--estimates", type=int, nargs=2, default=[4, 10], help="troop estimates per theater")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--tune", type=int, default=400)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--thin", type=int, default=99, help="posterior draws each rank is taken among")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--no-verify", action="store_true",
                        help="skip refitting replicate 1 without the compile cache (the check that reuse is exact)")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--candidate", default=None, help="simulate and fit under this reading of "
                        "models/candidates.toml (default: the original reading)")
    args = parser.parse_args(argv)
    results_path, figure_path = outputs(args.candidate)

    if args.plot_only:
        plot(json.loads(results_path.read_text(encoding="utf-8")), figure_path)
        return 0

    started = time.perf_counter()
    compiler = CompileCache()
    draws = prior_draws(args.n, args.seed, priors.load("default"))
    done, failed = [], []
    for i, params in enumerate(draws):
        elapsed = (time.perf_counter() - started) / 60
        if args.max_minutes and done:
            per = elapsed / (len(done) + len(failed))
            if elapsed + per > args.max_minutes:
                print(f"time budget: stopping after {len(done)} replicates ({elapsed:.1f} min)", flush=True)
                break
        try:
            result = replicate(i, params, args, compiler, verify=(i == 1 and not args.no_verify))
            done.append(result)
            print(f"[{i + 1}/{args.n}] {result['seconds']:.0f} s, events {result['events']}, "
                  f"r_hat {result['r_hat_max']:.3f}, ess {result['ess_bulk_min']:.0f}, "
                  f"div {result['divergences']}", flush=True)
        except Exception as err:  # a replicate that cannot be fitted is reported, not hidden
            failed.append({"replicate": i, "error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc(limit=3)})
            print(f"[{i + 1}/{args.n}] failed: {err}", flush=True)
        results = summarise(done, failed, args, started, compiler)
        write(results, results_path)
    results = summarise(done, failed, args, started, compiler)
    write(results, results_path)
    if done:
        plot(results, figure_path)
    s = results["summary"]
    print(json.dumps({"n": results["n_replicates"], "min_p": s["min_p_value"],
                      "below_0.05": s["parameters_below_0.05"], "minutes": round(results["seconds_total"] / 60, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
