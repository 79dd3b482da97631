"""Benchmark of fan-out on Dask (issue 20): serial against local workers, the executor's overhead, a scaling model.

    .venv/bin/python benchmarks/scaling.py                  # ~8 min: writes benchmarks/scaling_results.json
    .venv/bin/python benchmarks/scaling.py --cases 4 --workers 2

On a private temporary store with the bundled cases, the same leave-one-case-out backtest (the first
`--cases` closed cases, no public record, no exact checks, `--draws`/`--tune` per chain) is run:
1. serially, in this process (`forecast.executor.Serial`);
2. on a local Dask cluster of `--workers` worker processes (`forecast.executor.Cluster.local`);
and the two documents' forecasts are compared number for number. Then:
3. the executor's own cost: a job that does nothing, sent with the backtest's shared context, timed
   through the cluster (median of 20) -- what the executor adds to every fit;
4. the scaling model, T(F fits, N workers) = startup + compile + ceil(F / N) x t_fit(N) + F x overhead:
   startup is the cluster's (0 serially), compile one model's first compilation (each worker pays it
   once, in parallel), t_fit(N) one fit's sampling and forecasting when N fits run at once on this
   machine (N workers share its 2 cores, and each fit's chains already use 2 threads, so t_fit(2) is
   about twice t_fit(1) here), checked against the two measured points; and its projection for a
   60-case x 4-profile sensitivity study on 8 and 32 workers that each have their own 2 cores (so
   t_fit stays the serial figure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def nothing(item, context) -> int:
    """A job with no work: what is left of its time is the executor's."""
    return item


def import_model_stack() -> int:
    """What a fresh worker pays before its first fit: PyMC, PyTensor, nutpie and the package."""
    import forecast.backtest  # noqa: F401

    return os.getpid()


def per_fit(doc: dict, part: str = "sampling_seconds") -> list[float]:
    """Seconds of each fit inside its worker, in the document's order."""
    return [f[part] for f in doc["diagnostics"]["per_fit"]]


def fit_seconds(doc: dict) -> float:
    """One job's time where it ran (model building, sampling, filtering, forecasts), its compile counted apart."""
    return statistics.mean(per_fit(doc, "job_seconds")) - statistics.mean(per_fit(doc, "compile_seconds"))


def predict(fits: int, workers: int, t_fit: float, compile_s: float, startup: float, overhead: float,
            batches: int = 1) -> float:
    """startup (cluster start and each worker's imports, in parallel) + one compile + waves of fits + overhead.

    `batches`: backtests run one after another (a sensitivity study's profiles), `fits` each.
    """
    return startup + compile_s + batches * (math.ceil(fits / workers) * t_fit + fits * overhead)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="closed cases in the backtest (its fits)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "scaling_results.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    os.environ.update(FORECAST_DB_URL=f"sqlite:///{folder / 'store.db'}", FORECAST_RUNS_DIR=str(folder / "runs"))

    from typer.testing import CliRunner

    from forecast import backtest, executor, reference_class, sampling, store
    from forecast.cli import app

    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    eng = store.engine()
    closed = sorted(reference_class.load_cases(store.load_theaters(eng), store.load_evidence(eng)))
    cases = closed[:args.cases]
    settings = sampling.SamplerSettings(draws=args.draws, tune=args.tune, progressbar=False)
    options = backtest.Options(cases=cases, metaculus=False, check_exact=0, settings=settings, progress=False)

    log(f"serial backtest of {cases}")
    started = time.perf_counter()
    serial = backtest.run(eng, options)
    serial_wall = time.perf_counter() - started

    log(f"local cluster of {args.workers} workers")
    started = time.perf_counter()
    cluster = executor.Cluster.local(args.workers)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    cluster.client.run(import_model_stack)
    warmup = time.perf_counter() - started
    try:
        started = time.perf_counter()
        spread = backtest.run(eng, options, cluster)
        spread_wall = time.perf_counter() - started
        context = backtest.Context(store.load_theaters(eng), store.load_evidence(eng), {}, {}, (0, 0), None, settings)
        trips = []
        for i in range(20):
            started = time.perf_counter()
            list(cluster.run(nothing, [i], context))
            trips.append(time.perf_counter() - started)
    finally:
        cluster.close()

    identical = [f["prob"] for f in serial["forecasts"]] == [f["prob"] for f in spread["forecasts"]]
    fits = len(serial["diagnostics"]["per_fit"])
    overhead = statistics.median(trips)
    t_serial, t_spread = fit_seconds(serial), fit_seconds(spread)
    busiest = max(sum(f["job_seconds"] for f in spread["diagnostics"]["per_fit"] if f["worker"] == w)
                  for w in {f["worker"] for f in spread["diagnostics"]["per_fit"]})
    outside = spread_wall - busiest  # the run's time not spent in the busiest worker's jobs
    compile_s = max(per_fit(serial, "compile_seconds"))
    model = {"serial": predict(fits, 1, t_serial, compile_s, 0.0, 0.0),
             f"{args.workers}_workers": predict(fits, args.workers, t_spread, compile_s, startup + warmup, overhead)}
    # a 60-case x 4-profile sensitivity study: 4 backtests of 60 leave-one-case-out fits each
    projection = {f"{n}_workers_minutes": round(predict(60, n, t_serial, compile_s, startup + warmup if n > 1 else 0,
                                                        overhead if n > 1 else 0, batches=4) / 60, 1)
                  for n in (1, 8, 32)}
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": f"{os.cpu_count()} cores",
        "cases": cases, "fits": fits, "settings": settings.recorded(),
        "identical_forecasts": identical,
        "serial": {"wall_seconds": round(serial_wall, 1), "compiles": serial["diagnostics"]["compiles"],
                   "job_seconds": per_fit(serial, "job_seconds"),
                   "sampling_seconds": [round(x, 1) for x in per_fit(serial)],
                   "compile_seconds": [round(x, 1) for x in per_fit(serial, "compile_seconds")]},
        "workers": {"n": args.workers, "startup_seconds": round(startup, 1), "import_seconds": round(warmup, 1),
                    "wall_seconds": round(spread_wall, 1),
                    "job_seconds": per_fit(spread, "job_seconds"),
                    "sampling_seconds": [round(x, 1) for x in per_fit(spread)],
                    "compile_seconds": [round(x, 1) for x in per_fit(spread, "compile_seconds")],
                    "compiles": spread["diagnostics"]["compiles"],
                    "processes": sorted({f["worker"] for f in spread["diagnostics"]["per_fit"]})},
        "speedup": round(serial_wall / (spread_wall + startup + warmup), 2),
        "executor_overhead_seconds_per_job": round(overhead, 3),
        "outside_jobs_seconds": {"workers": round(outside, 1),
                                 "serial": round(serial_wall - sum(per_fit(serial, "job_seconds")), 1),
                                 "note": "wall clock not inside the busiest worker's jobs: the run's own serial "
                                         "steps (loading, scoring, bootstrap), shipping the context, waiting"},
        "model": {"formula": "startup (cluster + imports) + compile + ceil(fits / workers) x t_fit(workers) + fits x overhead",
                  "t_fit_serial_seconds": round(t_serial, 1), "t_fit_on_workers_seconds": round(t_spread, 1),
                  "compile_seconds": round(compile_s, 1),
                  "predicted_seconds": {k: round(v, 1) for k, v in model.items()},
                  "measured_seconds": {"serial": round(serial_wall, 1),
                                       f"{args.workers}_workers": round(spread_wall + startup + warmup, 1)}},
        "projection_60_cases_x_4_profiles": {**projection, "assumes": "each worker has its own 2 cores, so a fit "
                                             "takes the serial t_fit; profiles run one after another, each with the "
                                             "cases' fits in waves; the exact-refit phase (a few fits per profile) "
                                             "is not included"},
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps(results, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
