"""Fits fanned out through `forecast.executor`: a real local Dask cluster, 2 worker processes on 127.0.0.1.

- a 3-case backtest and a 2-theater `refit --all` on the cluster give exactly the serial numbers;
- `refit --all` keeps its lock, skip-if-unchanged and one log line per theater with workers;
- a worker killed mid-fit costs only that theater's attempt: retried once (published), or, killed
  again, reported as failed while its published run stays current and the other theater publishes.

The fits draw from the prior (`prior_sampling`), so they take seconds and are deterministic; the same
equality with the real sampler (nutpie, in a worker's own compile cache) is
`test_backtest.test_a_worker_process_gives_the_serial_forecasts`.
Option checks that need no cluster run in the fast lane.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from test_schedule import WATCHED, new_evidence, watched_case

from prior_sampling import SlowPriorSample, prior_sample

slow = pytest.mark.slow  # starts worker processes
OTHER = "watch-ukraine-b"
THREE = ["crimea-2014", "taiwan-strait-1996", "georgia-2008"]


@pytest.fixture(scope="module")
def cluster():
    from forecast import executor

    started = executor.Cluster.local(2)
    yield started
    started.close()


class Borrowed:
    """The module's cluster lent to one job: the job's `close` leaves it running for the next test."""

    def __init__(self, cluster):
        self.cluster, self.workers, self.description = cluster, cluster.workers, cluster.description

    def run(self, job, items, context):
        return self.cluster.run(job, items, context)

    def close(self) -> None:
        pass


def _settings(draws: int = 300):
    """Prior draws: 300 per chain pass the gate (refits publish); a backtest does not apply the gate."""
    from forecast import sampling

    return sampling.SamplerSettings(draws=draws, tune=40, chains=2, progressbar=False)


# --- the backtest --------------------------------------------------------------------------


@slow
def test_backtest_on_two_workers_equals_serial(cluster, initialised_store):
    from forecast import backtest, store

    options = backtest.Options(cases=THREE, metaculus=False, check_exact=1, settings=_settings(draws=60),
                               sample=prior_sample, progress=False)
    serial = backtest.run(store.engine(initialised_store), options)
    spread = backtest.run(store.engine(initialised_store), options, Borrowed(cluster))
    assert [f["prob"] for f in spread["forecasts"]] == [f["prob"] for f in serial["forecasts"]]
    assert [f["case"] for f in spread["forecasts"]] == [f["case"] for f in serial["forecasts"]]
    for key in ("brier", "brier_skill", "log_score", "auc", "ece", "brier_skill_interval", "exactness"):
        assert spread[key] == serial[key], key
    workers = {f["worker"] for f in spread["diagnostics"]["per_fit"]}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert spread["executor"] == "local Dask cluster, 2 worker processes"
    assert [f["fit"] for f in spread["diagnostics"]["per_fit"]] == [f["fit"] for f in serial["diagnostics"]["per_fit"]]


# --- refit --all ---------------------------------------------------------------------------


@pytest.fixture
def two_watched(fitted_store, tmp_path):
    fitted_store.ok("import", watched_case(tmp_path / f"{WATCHED}.jsonl"))
    fitted_store.ok("import", watched_case(tmp_path / f"{OTHER}.jsonl", OTHER))
    return fitted_store


def _refit_all(cli, where, sample=prior_sample) -> tuple[dict, list[str]]:
    from forecast import schedule

    lines: list[str] = []
    summary = schedule.refit_all(cli.engine(), settings=_settings(), log=lines.append, alert_config=None,
                                 executor=where, sample=sample)
    return summary, lines


def _by_theater(summary) -> dict:
    return {t["theater"]: t for t in summary["theaters"]}


@slow
def test_refit_all_on_two_workers_equals_serial(cluster, two_watched, tmp_path, monkeypatch):
    from forecast import runs, schedule

    serial, _ = _refit_all(two_watched, schedule.Serial)
    serial_p30 = {t: r["p30"] for t, r in _by_theater(serial).items()}

    monkeypatch.setenv("FORECAST_RUNS_DIR", str(tmp_path / "runs-on-workers"))  # the same fits again, elsewhere
    spread, lines = _refit_all(two_watched, lambda: Borrowed(cluster))
    assert spread["exit_code"] == 0 and spread["counts"]["published"] == 2, spread["theaters"]
    assert {t: r["p30"] for t, r in _by_theater(spread).items()} == serial_p30
    assert [t["theater"] for t in spread["theaters"]] == [t["theater"] for t in serial["theaters"]]  # same order
    assert sorted(line.split()[1] for line in lines) == sorted([f"{WATCHED}:", f"{OTHER}:"])  # one line each
    for theater in (WATCHED, OTHER):  # the workers wrote where this process reads
        assert runs.latest(theater).id == _by_theater(spread)[theater]["run_id"]

    again, lines = _refit_all(two_watched, lambda: Borrowed(cluster))  # unchanged: skipped, nothing refitted
    assert again["counts"] == {"published": 0, "rejected": 0, "skipped": 2, "failed": 0} and len(lines) == 2


def test_busy_job_opens_no_cluster(two_watched):
    import filelock

    from forecast import schedule

    opened = []
    with filelock.FileLock(str(schedule.lock_path())):
        with pytest.raises(schedule.Busy):
            _refit_all(two_watched, lambda: opened.append(1))
    assert opened == []  # the lock is taken before any worker starts


# --- a worker killed mid-fit -----------------------------------------------------------------


def _running(dask_worker):
    return os.getpid(), [str(ts.key) for ts in dask_worker.state.executing]


def _executing(cluster, theater: str) -> int | None:
    """The pid of the worker now running `theater`'s refit job, if any (a restarting worker is left out)."""
    for answer in cluster.client.run(_running, on_error="ignore").values():
        pid, keys = answer
        if any(k.rsplit("-", 2)[0] == f"refit_job-{theater}" for k in keys):  # key: job-item-index-batch
            return pid
    return None


def _kill_mid_fit(cluster, theater: str, markers, times: int) -> list[int]:
    """Kill the worker fitting `theater` `times` times, each once that attempt is inside the sampler."""
    killed: list[int] = []
    seen: dict[int, int] = {}  # pid -> when it was first seen running the job (ns)
    deadline = time.monotonic() + 120
    while len(killed) < times and time.monotonic() < deadline:
        pid = _executing(cluster, theater)
        if pid and pid not in killed:
            since = seen.setdefault(pid, time.time_ns())
            if any(m.name.startswith(f"{pid}-") and int(m.name.split("-")[1]) > since for m in markers.iterdir()):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.2)
    return killed


def _run_and_kill(cluster, cli, tmp_path, times: int):
    markers = tmp_path / "markers"
    markers.mkdir()
    sample = SlowPriorSample(markers, seconds=3)
    box: dict = {}
    job = threading.Thread(target=lambda: box.update(zip(("summary", "lines"),
                                                         _refit_all(cli, lambda: Borrowed(cluster), sample))))
    job.start()
    killed = _kill_mid_fit(cluster, WATCHED, markers, times)
    job.join(timeout=300)
    assert not job.is_alive()
    return box["summary"], box["lines"], killed


@slow
def test_worker_killed_once_is_retried(cluster, two_watched, tmp_path):
    summary, lines, killed = _run_and_kill(cluster, two_watched, tmp_path, times=1)
    assert len(killed) == 1
    assert summary["counts"]["published"] == 2 and summary["exit_code"] == 0, lines


@slow
def test_worker_killed_twice_fails_that_theater_only(cluster, two_watched, tmp_path):
    from forecast import runs

    first, _ = _refit_all(two_watched, lambda: Borrowed(cluster))
    published = _by_theater(first)[WATCHED]["run_id"]
    new_evidence(two_watched, tmp_path, WATCHED)
    new_evidence(two_watched, tmp_path, OTHER)

    summary, lines, killed = _run_and_kill(cluster, two_watched, tmp_path, times=2)
    assert len(killed) == 2
    entry = _by_theater(summary)
    assert entry[WATCHED]["action"] == "failed" and "died 2 times" in entry[WATCHED]["message"]
    assert f"published run {published} stays current" in entry[WATCHED]["message"]
    assert entry[OTHER]["action"] == "published" and summary["exit_code"] == 1
    assert runs.latest(WATCHED).id == published  # never a half-written or lost published run
    visible = [p.name for p in runs.theater_dir(WATCHED).iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == sorted(r.id for r in runs.history(WATCHED))
    assert any(f"{WATCHED}: failed" in line for line in lines)


# --- the command line ------------------------------------------------------------------------


def test_executor_options_are_checked_before_any_work(initialised_cli):
    for args, message in ((["--workers", "0"], "at least 1"),
                          (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both")):
        res = initialised_cli("backtest", "--case", "crimea-2014", *args)
        assert res.exit_code == 2 and message in res.stderr, res.stderr
    res = initialised_cli("refit", "crimea-2014", "--workers", "2")
    assert res.exit_code == 2 and "refit --all" in res.stderr


def test_in_memory_store_cannot_go_to_workers(monkeypatch):
    from forecast import executor

    monkeypatch.setenv("FORECAST_DB_URL", "sqlite://")
    with pytest.raises(executor.ExecutorError, match="in-memory store"):
        executor.open_executor(workers=2)
    assert isinstance(executor.open_executor(), executor.Serial)  # in this process it is fine


@slow
def test_unreachable_scheduler_is_one_line(initialised_cli):
    res = initialised_cli("backtest", "--case", "crimea-2014", "--scheduler", "tcp://127.0.0.1:9",
                          env={"FORECAST_SCHEDULER_TIMEOUT": "2"})
    assert res.exit_code == 1 and "could not reach the Dask scheduler at 'tcp://127.0.0.1:9'" in res.stderr


# --- one refit on a long-lived worker (issue 19) -----------------------------------------------


@slow
def test_a_warm_worker_refits_without_compiling_again(initialised_cli):
    """`forecast refit --scheduler`: the refit runs in a worker process, which keeps its compiled models.

    Real sampling (few draws): the second refit of the flagship, a week later with more evidence,
    reuses the worker's compiled stages instead of compiling again, and the runs land in the
    client's runs folder. One worker, as a warm-worker deployment has (each worker warms up once)."""
    import contextlib

    from forecast import executor

    with contextlib.closing(executor.Cluster.local(1)) as warm:
        address = warm.client.scheduler.address
        common = ["--draws", "60", "--tune", "60", "--chains", "2", "--scheduler", address, "--json"]
        first = initialised_cli("refit", "russia-ukraine-2022", "--as-of", "2022-02-15", *common)
        after_first = warm.client.run(_compile_counts)
        second = initialised_cli("refit", "russia-ukraine-2022", "--as-of", "2022-02-22", *common)
        after_second = warm.client.run(_compile_counts)
        assert first.exit_code in (0, 3) and second.exit_code in (0, 3), first.stderr + second.stderr
        # Counted in the worker, not timed: the second refit's two stages are both cache hits.
        (hits1, misses1), = after_first.values()
        (hits2, misses2), = after_second.values()
        assert misses1 >= 2 and misses2 == misses1 and hits2 == hits1 + 2, (after_first, after_second)
        from forecast import runs

        made = {r.manifest["as_of"]: r for r in runs.history("russia-ukraine-2022")}
        assert set(made) == {"2022-02-15", "2022-02-22"}
        assert json.loads(second.stdout)["run_id"] == made["2022-02-22"].id


def _compile_counts():
    """In a worker: how many compiled models its cache served, and how many it had to compile."""
    from forecast import sampling

    return sampling.COMPILED.hits, sampling.COMPILED.misses


def test_a_refit_sent_to_an_unreachable_scheduler_is_one_line(initialised_cli):
    res = initialised_cli("refit", "crimea-2014", "--scheduler", "tcp://127.0.0.1:9",
                          env={"FORECAST_SCHEDULER_TIMEOUT": "2"})
    assert res.exit_code == 1 and "could not reach the Dask scheduler at 'tcp://127.0.0.1:9'" in res.stderr, res.stderr
