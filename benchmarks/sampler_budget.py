"""Benchmark of the sampler budget (issue 19): how many draws and tuning steps the gate needs.

    .venv/bin/python benchmarks/sampler_budget.py          # ~8 min: writes benchmarks/sampler_budget.json

Fits the flagship as of two dates (2021-12-18, 2022-02-15) under the earlier defaults (1000 draws, 700
tuning steps, stage 1 drawing 3x) and the current ones (`forecast.sampling.SamplerSettings()`), each with
three seeds, all in one process (so both budgets meet the same machine and the same compiled models).
Per fit: sampling seconds per stage, each stage's minimum bulk ESS and the parameter that sets it, max
R-hat, divergences, the gate's verdict and P(30 days). The summary gives each budget's median sampling
seconds and their ratio, and the smallest ESS any fit reached against the gate's 400.
On a private temporary store with the bundled cases.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLAGSHIP = "russia-ukraine-2022"
AS_OF = ("2021-12-18", "2022-02-15")
EARLIER = {"draws": 1000, "tune": 700, "stage1_draws_factor": 3}  # the defaults until 2026-12-02
SEEDS = (20220224, 1, 2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_fit(eng, as_of: dt.date, settings) -> dict:
    """Fit the flagship as of `as_of` and report what the budget bought."""
    from forecast import dataset, model, predict, priors, runs, sampling

    profile = priors.load("default")
    panels, _ = dataset.from_store(eng, FLAGSHIP, as_of, reading=profile.reading)
    fit = model.fit(panels, FLAGSHIP, profile, settings, compiler=sampling.COMPILED,
                    stage1_pad=model.stage1_bucket(panels))
    stages = {name: {"sampling_seconds": round(fit.seconds[f"{name}_sampling"], 2), **stage,
                     "ess_bulk_min": round(stage["ess_bulk_min"]), "r_hat_max": round(stage["r_hat_max"], 4)}
              for name, stage in model.stage_diagnostics(fit).items()}
    draws = predict.draws_for(fit.panel(FLAGSHIP), fit.stage1.posterior, fit.stage2.posterior, seed=settings.seed)
    return {"as_of": str(as_of), "seed": settings.seed, "stages": stages,
            "sampling_seconds": round(sum(s["sampling_seconds"] for s in stages.values()), 2),
            "gate": runs.gate(model.diagnostics(fit)), "p30": round(predict.summarise(draws)["prob"]["30"]["mean"], 4)}


def summarise(fits: list[dict]) -> dict:
    return {"median_sampling_seconds": round(statistics.median(f["sampling_seconds"] for f in fits), 2),
            "ess_bulk_min": {s: min(f["stages"][s]["ess_bulk_min"] for f in fits) for s in ("stage1", "stage2")},
            "gate_passed": sum(not f["gate"] for f in fits), "fits": len(fits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "sampler_budget.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sampler-budget-"))
    os.environ.update({"FORECAST_DB_URL": f"sqlite:///{folder / 'store.db'}", "FORECAST_RUNS_DIR": str(folder / "runs")})
    subprocess.run([str(REPO / ".venv" / "bin" / "forecast"), "init"], check=True, capture_output=True)
    from forecast import runs, safe_write, sampling, store

    eng = store.engine()
    current = sampling.SamplerSettings(progressbar=False)
    budgets = {"earlier": dataclasses.replace(current, **EARLIER), "current": current}
    results = {name: [] for name in budgets}
    for as_of in AS_OF:
        for seed in SEEDS:
            for name, settings in budgets.items():
                fit = one_fit(eng, dt.date.fromisoformat(as_of), dataclasses.replace(settings, seed=seed))
                results[name].append(fit)
                log(f"{name} {as_of} seed {seed}: {fit['sampling_seconds']} s, ESS "
                    f"{fit['stages']['stage1']['ess_bulk_min']}/{fit['stages']['stage2']['ess_bulk_min']}, "
                    f"p30 {fit['p30']}, gate {fit['gate'] or 'passed'}")
    summary = {name: {**summarise(fits), "settings": {k: getattr(budgets[name], k) for k in EARLIER}}
               for name, fits in results.items()}
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": f"{os.cpu_count()} cores",
           "load_average_at_end": list(os.getloadavg()), "gate_ess": runs.GATE["ess_bulk_min"], "summary": summary,
           "sampling_ratio_current_to_earlier": round(summary["current"]["median_sampling_seconds"]
                                                      / summary["earlier"]["median_sampling_seconds"], 3),
           "fits": results}
    safe_write.write_text(args.out, json.dumps(doc, indent=1))
    log(f"wrote {args.out}: sampling {summary['earlier']['median_sampling_seconds']} s -> "
        f"{summary['current']['median_sampling_seconds']} s (ratio {doc['sampling_ratio_current_to_earlier']})")


if __name__ == "__main__":
    main()
