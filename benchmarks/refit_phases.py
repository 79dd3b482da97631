"""Benchmark of command start-up and of a refit's phases (issue 19), each in its own process as a user runs it.

    .venv/bin/python benchmarks/refit_phases.py                 # ~6 min: writes benchmarks/refit_phases.json
    .venv/bin/python benchmarks/refit_phases.py --refits 5 --repeats 5

On a private temporary store with the bundled cases:
1. start-up: `forecast --help`, `theaters`, `evidence`, `runs`, `show` and `import` of a case file, each
   run `--repeats` times as a fresh process; median wall clock (target: each <= 1 s);
2. `forecast refit russia-ukraine-2022 --as-of 2022-02-15`, `--refits` times, each a fresh process: the
   first with an empty PyTensor compile directory (the first-ever compile on a machine), the others with
   that directory as the first left it (what every later process finds). Wall clock, and its split into
   imports (a fresh `import forecast.refit`, measured apart), data and features, compile, sampling, model
   building and filtering, prediction, summary and history (the run manifest's `timing`), and the rest
   (writing the run, the CLI's own work) -- so the next bottleneck is visible. Target: <= 15 s from the
   second process on;
3. the same refit sent to a warm worker (`forecast.dispatch`): a `dask scheduler` and one `dask worker`
   (one thread) started here as an operator starts them, then `forecast refit --scheduler ADDRESS`,
   `--refits` times, each a fresh client process. The worker's first refit compiles (its private compile
   directory is seeded from the warm one above); later ones reuse its compiled models and imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORECAST = REPO / ".venv" / "bin" / "forecast"
PYTHON = REPO / ".venv" / "bin" / "python"
DASK = REPO / ".venv" / "bin" / "dask"
FLAGSHIP, AS_OF = "russia-ukraine-2022", "2022-02-15"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(command: list[str], env: dict, ok=(0,)) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, done


def startup(env: dict, repeats: int) -> dict:
    commands = {"--help": ["--help"], "theaters": ["theaters"], "evidence": ["evidence", FLAGSHIP],
                "runs": ["runs", FLAGSHIP], "show": ["show", FLAGSHIP],
                "import": ["import", str(REPO / "data" / "cases" / "zapad-2017.jsonl")]}
    out = {}
    for name, args in commands.items():
        walls = [timed([str(FORECAST), *args], env)[0] for _ in range(repeats)]
        out[name] = {"median_seconds": round(statistics.median(walls), 3), "runs": [round(w, 3) for w in walls],
                     "target_seconds": 1.0, "met": statistics.median(walls) <= 1.0}
        log(f"{name}: median {out[name]['median_seconds']} s")
    return out


def refit_once(env: dict, imports: float, *extra: str) -> dict:
    wall, done = timed([str(FORECAST), "refit", FLAGSHIP, "--as-of", AS_OF, "--json", *extra], env,
                       ok=(0, 3))  # 3: rejected
    doc = json.loads(done.stdout)
    manifest = json.loads((Path(env["FORECAST_RUNS_DIR"]) / FLAGSHIP / doc["run_id"] / "manifest.json").read_text())
    phases = manifest["timing"]
    rest = wall - imports - sum(phases.values())
    return {"wall_seconds": round(wall, 2), "status": manifest["status"], "p30": doc["prob"]["30"]["mean"],
            "phases": {"imports": round(imports, 2), **phases, "writing_and_rest": round(rest, 2)},
            "ess_bulk_min": manifest["diagnostics"]["ess_bulk_min"], "r_hat_max": manifest["diagnostics"]["r_hat_max"]}


@contextlib.contextmanager
def warm_worker(env: dict):
    """A `dask scheduler` and one single-threaded `dask worker` on 127.0.0.1; yields the address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    processes = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], **quiet)]
    try:
        processes.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--no-dashboard"], **quiet))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(processes):
            p.terminate()
            p.wait(timeout=30)


def on_warm_worker(env: dict, refits: int) -> dict:
    with warm_worker(env) as address:
        done = []
        for i in range(refits):
            done.append(refit_once(env, 0.0, "--scheduler", address))
            log(f"warm worker, refit {i + 1}: {done[-1]['wall_seconds']} s {done[-1]['phases']}")
    return {"first_on_the_worker": done[0], "later": done[1:], **medians(done[1:], skip=("imports",))}


def medians(later: list[dict], skip=()) -> dict:
    """Median wall clock and phases of the refits after the first, against the 15 s target."""
    wall = round(statistics.median(r["wall_seconds"] for r in later), 2)
    phases = {k: round(statistics.median(r["phases"][k] for r in later), 2) for k in later[0]["phases"]
              if k not in skip}
    return {"later_median_wall_seconds": wall, "later_median_phases": phases, "target_seconds": 15.0,
            "met": wall <= 15.0}


def arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refits", type=int, default=5, help="refit processes (the first with a cold cache)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each start-up command")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "refit_phases.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = arguments(argv)
    folder = Path(tempfile.mkdtemp(prefix="refit-bench-"))
    compiledir = folder / "pytensor"  # empty: the first refit compiles everything
    env = {**os.environ, "FORECAST_DB_URL": f"sqlite:///{folder / 'store.db'}",
           "FORECAST_RUNS_DIR": str(folder / "runs"), "PYTENSOR_FLAGS": f"base_compiledir={compiledir}"}
    timed([str(FORECAST), "init"], env)

    imports = statistics.median(timed([str(PYTHON), "-c", "import forecast.refit, forecast.cli"], env)[0]
                                for _ in range(3))
    refits = []
    for i in range(args.refits):
        refits.append(refit_once(env, imports))
        log(f"refit {i + 1}: {refits[-1]['wall_seconds']} s {refits[-1]['phases']}")
    warm = refits[1:]
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": f"{os.cpu_count()} cores",
        "load_average_at_end": list(os.getloadavg()),
        "startup": startup(env, args.repeats),
        "refit": {"first_process_cold_cache": refits[0], "later_processes": warm, **medians(warm)},
    }
    results["refit_on_a_warm_worker"] = on_warm_worker(env, args.refits)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps(results["refit"]["later_median_phases"]))
    log(json.dumps(results["refit_on_a_warm_worker"]["later_median_phases"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
