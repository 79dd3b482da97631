"""Benchmark of the live loop (issue 16): the instant update's latency and how close it lands to a refit.

    .venv/bin/python benchmarks/live_loop.py            # ~8 min: writes benchmarks/live_results.json
    .venv/bin/python benchmarks/live_loop.py --pairs 5 --additions 20

On a private temporary store with the bundled cases:
1. `forecast replay russia-ukraine-2022 --until 2022-01-15 --id rehearsal`, then a real refit as of 2022-01-15
   (default settings, published through the gate);
2. latency: N hypothetical sign reports added one at a time to the rehearsal's evidence, each answered by
   `forecast.live.LiveRun.forecast` (what the page's instant update calls), timed; median and p95;
3. agreement: the flagship's real rows of the following weeks added one by one (as an analyst would record
   them), and after each the instant number (the rehearsal's run reweighted) beside a real refit as of the
   day that row became known: P(30 days) both ways, their difference and the weights' Pareto k.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FLAGSHIP, REHEARSAL, CUT = "russia-ukraine-2022", "rehearsal", dt.date(2022, 1, 15)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--additions", type=int, default=20, help="hypothetical rows timed (>= 20)")
    parser.add_argument("--pairs", type=int, default=5, help="real rows added, each refitted (>= 5)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "live_results.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="live-bench-"))
    os.environ.update(FORECAST_DB_URL=f"sqlite:///{folder / 'store.db'}", FORECAST_RUNS_DIR=str(folder / "runs"))

    from typer.testing import CliRunner

    from forecast import live, refit, runs, store
    from forecast.cli import app
    from forecast.schema import MODEL_BY_KIND

    cli = CliRunner()
    for command in (["init"], ["replay", FLAGSHIP, "--until", str(CUT), "--id", REHEARSAL]):
        result = cli.invoke(app, command)
        assert result.exit_code == 0, result.output
    eng = store.engine()
    log(f"refit {REHEARSAL} as of {CUT}")
    base = refit.refit(eng, REHEARSAL, CUT)
    assert base.published, base.manifest["reason"]
    theater = next(t for t in store.load_theaters(eng) if t.id == REHEARSAL)
    rows = store.load_evidence(eng, REHEARSAL)
    started = time.perf_counter()
    engine_live = live.LiveRun(base, theater, rows)
    load_ms = (time.perf_counter() - started) * 1000

    timings, ks = [], []
    for i in range(args.additions):
        sign = MODEL_BY_KIND["sign"](kind="sign", theater=REHEARSAL, date=CUT, category="medical",
                                     description=f"benchmark: field hospital report {i}", source="benchmark")
        t0 = time.perf_counter()
        update = engine_live.forecast(rows + [sign], CUT)
        timings.append((time.perf_counter() - t0) * 1000)
        ks.append(update.weights.pareto_k)
    latency = {"additions": args.additions, "load_once_ms": round(load_ms, 1),
               "median_ms": round(statistics.median(timings), 1), "p95_ms": round(_p95(timings), 1),
               "max_ms": round(max(timings), 1), "pareto_k_max": round(max(k for k in ks if k is not None), 3)}
    log(f"instant update: median {latency['median_ms']} ms, p95 {latency['p95_ms']} ms")

    later = sorted((r for r in store.load_evidence(eng, FLAGSHIP) if r.kind != "outcome" and r.known_on > CUT),
                   key=lambda r: (r.known_on, r.kind))[: args.pairs]
    pairs, added = [], []
    for row in later:
        added.append(row.model_copy(update={"theater": REHEARSAL}))
        as_of = row.known_on
        update = engine_live.forecast(rows + added, as_of)
        result = cli.invoke(app, ["add", REHEARSAL, "--kind", row.kind, "--date", str(row.date), "--source",
                                  row.source] + _options(row) + ["--reason", "benchmark: the real record"])
        assert result.exit_code == 0, result.output
        log(f"refit {REHEARSAL} as of {as_of} after {row.kind} {row.date}")
        exact = refit.refit(eng, REHEARSAL, as_of)
        instant_p30, exact_p30 = update.document["prob"]["30"]["mean"], exact.forecast()["prob"]["30"]["mean"]
        pairs.append({"row": f"{row.kind} {row.date}: {row.describe()[:90]}", "as_of": str(as_of),
                      "instant_p30": instant_p30, "refit_p30": exact_p30,
                      "difference": round(instant_p30 - exact_p30, 4), "pareto_k": update.weights.pareto_k,
                      "stage1_changed": update.stage1_changed, "refit_status": exact.manifest["status"]})
        log(f"  instant {instant_p30:.3f} vs refit {exact_p30:.3f} (k {update.weights.pareto_k})")
    reliable = [p for p in pairs if p["pareto_k"] is None or p["pareto_k"] <= 0.7]
    doc = {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "code_version": runs.code_version(), "load_average": os.getloadavg(), "base_run": base.id,
           "base_p30": base.forecast()["prob"]["30"]["mean"], "latency": latency, "pairs": pairs,
           "max_abs_difference_where_reliable": max((abs(p["difference"]) for p in reliable), default=None)}
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


def _options(row) -> list[str]:
    """The `forecast add` options that give back `row`'s own fields."""
    from forecast.schema import kind_fields

    out = []
    for name in kind_fields(row.kind):
        value = getattr(row, name)
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            out.append(flag if value else {"verified": "--unverified", "escalated": "--not-escalated"}[name])
        else:
            out += [flag, str(value)]
    for name in ("reported", "url", "notes"):
        if getattr(row, name):
            out += [f"--{name}", str(getattr(row, name))]
    return out


if __name__ == "__main__":
    sys.exit(main())
