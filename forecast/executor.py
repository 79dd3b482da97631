"""Where independent fits run: in this process (the default), or on a Dask cluster.

A backtest (one fit per case), a sensitivity study (that per prior profile) and
`refit --all` (one fit per open theater) are sets of independent jobs. Each is
handed to an executor as a job function, a list of items and one shared
context (the reference class, the priors, the sampler settings):

- `Serial`: in this process, one item after another; nothing changes for a
  single user;
- `Cluster.local(n)`: a Dask `LocalCluster` of n worker processes on
  127.0.0.1 (one thread each: a fit already uses both cores' worth of chains);
- `Cluster.connect(address)`: an existing Dask scheduler (`--scheduler`, or
  FORECAST_SCHEDULER).

Every job runs under the client's store URL and folders (`_call`), so a worker
reads the same evidence and writes runs where the client reads them. Every worker
gets a private PyTensor compile directory when it joins, seeded with a copy of the
machine's cache (`WorkerSetup`, `private_compiledir`: compilation is not safe to
share between live processes). Each worker process keeps its own compile cache
(`forecast.sampling.COMPILED`), so a backtest's worker compiles each model graph
once and swaps the data for every later fit it is given.

A worker that dies mid-job loses only that job's attempt: the scheduler runs it once
more elsewhere (`allowed_failures=1` on the clusters this module starts; set
`distributed.scheduler.allowed-failures: 1` on your own scheduler for the same rule),
and a second death is reported for that item as a `WorkerLost` error. Jobs return
plain data; results come back as they finish, tagged with their item's index, so the
caller assembles them in a fixed order and the numbers equal the serial run's.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from forecast import config, store

SCHEDULER_ENV = "FORECAST_SCHEDULER"
TIMEOUT_ENV = "FORECAST_SCHEDULER_TIMEOUT"  # seconds to wait for a scheduler (default 20)
RETRIES_ON_WORKER_DEATH = 1


class ExecutorError(RuntimeError):
    """A cluster that cannot be started or reached; the message says which and why."""


class WorkerLost(RuntimeError):
    """A job's worker died on every allowed attempt."""


@dataclass
class Outcome:
    """What one job gave: its value, or the error it raised (or the worker's death)."""

    value: object = None
    error: BaseException | None = None

    def get(self):
        if self.error is not None:
            raise self.error
        return self.value


class Executor(Protocol):
    workers: int
    description: str

    def run(self, job: Callable, items: list, context) -> Iterator[tuple[int, Outcome]]: ...

    def close(self) -> None: ...


class Serial:
    """Every job in this process, in order."""

    workers = 1
    description = "serial (this process)"

    def run(self, job: Callable, items: list, context) -> Iterator[tuple[int, Outcome]]:
        for i, item in enumerate(items):
            try:
                yield i, Outcome(value=job(item, context))
            except Exception as err:  # noqa: BLE001 - handed to the caller, as a cluster would
                yield i, Outcome(error=err)

    def close(self) -> None:
        pass


def client_environment() -> dict[str, str]:
    """The settings a worker must share with the client: the store and the folders, resolved here."""
    env = {"FORECAST_DB_URL": config.db_url(), "FORECAST_RUNS_DIR": str(config.runs_dir().resolve()),
           "FORECAST_HOME": str(config.home().resolve()), "FORECAST_DATA_DIR": str(config.data_dir().resolve()),
           "FORECAST_PRIORS_DIR": str(config.priors_dir().resolve())}
    return env


WORKER_COMPILEDIR_PREFIX = "forecast-pytensor-"


def _default_compiledir() -> Path:
    """PyTensor's compile cache on this machine (C modules and, in recent releases, numba's functions)."""
    for flag in os.environ.get("PYTENSOR_FLAGS", "").split(","):
        name, _, value = flag.partition("=")
        if name.strip() == "base_compiledir" and value.strip():
            return Path(value.strip())
    return Path.home() / ".pytensor"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _compiledir_of(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"{WORKER_COMPILEDIR_PREFIX}{pid}"


def private_compiledir(pid: int | None = None) -> Path:
    """A compile directory for one worker process, seeded with a copy of this machine's cache.

    Private, because PyTensor's compilation is not safe to share between live processes; seeded,
    because a cold cache costs a worker 30-40 s more per model (measured: 65 s against 27 s).
    Directories of processes that are gone (killed workers) are removed first.
    """
    pid = pid or os.getpid()
    for old in Path(tempfile.gettempdir()).glob(f"{WORKER_COMPILEDIR_PREFIX}*"):
        suffix = old.name[len(WORKER_COMPILEDIR_PREFIX):]
        if suffix.isdigit() and int(suffix) != pid and not _alive(int(suffix)):
            shutil.rmtree(old, ignore_errors=True)
    target = _compiledir_of(pid)
    source = _default_compiledir()
    if not target.exists() and source.is_dir():
        shutil.copytree(source, target, symlinks=True, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("lock_dir", "*.lock"))
    target.mkdir(exist_ok=True)
    return target


def _worker_setup_class():
    from distributed import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        """Run on each worker when it joins: its private PyTensor compile directory, set before PyTensor loads."""

        idempotent = True

        def setup(self, worker):
            if "pytensor" not in sys.modules:  # PyTensor reads its flags once, when first imported
                flags = [f for f in os.environ.get("PYTENSOR_FLAGS", "").split(",")
                         if f and not f.startswith("base_compiledir=")]
                os.environ["PYTENSOR_FLAGS"] = ",".join([*flags, f"base_compiledir={private_compiledir()}"])

        def teardown(self, worker):
            shutil.rmtree(_compiledir_of(os.getpid()), ignore_errors=True)

    return WorkerSetup


def _call(job: Callable, item, shared: tuple[dict[str, str], object]):
    """A job on a worker, under the client's settings of this batch (the store, the folders).

    Workers run one job at a time (one thread each), so setting the process's environment is safe, and a
    long-lived cluster can serve clients with different stores.
    """
    env, context = shared
    os.environ.update(env)
    return job(item, context)


class Cluster:
    """Jobs on a Dask cluster: one we start (`local`) or one we join (`connect`)."""

    def __init__(self, client, owned=None, description: str = ""):
        self.client, self.owned, self.description = client, owned, description
        self.client.register_plugin(_worker_setup_class()(), name="forecast-worker-setup")

    @property
    def workers(self) -> int:
        """Threads across the cluster's workers (one job each at a time)."""
        return max(1, sum(self.client.nthreads().values()))

    @classmethod
    def local(cls, n_workers: int) -> "Cluster":
        import logging

        from distributed import Client, LocalCluster

        try:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=logging.ERROR,
                                   scheduler_kwargs={"allowed_failures": RETRIES_ON_WORKER_DEATH})
        except Exception as err:  # noqa: BLE001 - whatever stopped the cluster, say so in one line
            raise ExecutorError(f"could not start a local Dask cluster of {n_workers} workers: {err}") from err
        plural = "es" if n_workers != 1 else ""
        return cls(Client(cluster), cluster, f"local Dask cluster, {n_workers} worker process{plural}")

    @classmethod
    def connect(cls, address: str) -> "Cluster":
        from distributed import Client

        timeout = _seconds(os.environ.get(TIMEOUT_ENV, "20"))
        try:
            client = Client(address, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - an unreachable or malformed address
            raise ExecutorError(f"could not reach the Dask scheduler at {address!r} "
                                f"(--scheduler or {SCHEDULER_ENV}): {err}") from err
        return cls(client, None, f"Dask scheduler {address}")

    def run(self, job: Callable, items: list, context) -> Iterator[tuple[int, Outcome]]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        if not items:
            return
        # The context travels inside each task (about 1 MB for the backtest's 57 cases), not scattered once:
        # scattered data dies with the last worker holding it, and a retry after a death would then fail.
        shared = (client_environment(), context)
        batch = uuid.uuid4().hex[:8]
        index: dict[str, int] = {}

        def submit(i: int):
            future = self.client.submit(_call, job, items[i], shared, key=f"{job.__name__}-{_tag(items[i])}-{i}-{batch}",
                                        pure=False)
            index[future.key] = i
            return future

        # As many jobs in flight as the cluster has threads, the next sent when one finishes: Dask would
        # otherwise assign a small batch of long fits all at once, two to one worker and none to another.
        pending = iter(range(len(items)))
        running = as_completed([submit(i) for i in itertools.islice(pending, self.workers)])
        for future in running:
            i = index[future.key]
            following = next(pending, None)
            if following is not None:
                running.add(submit(following))
            try:
                yield i, Outcome(value=future.result())
            except KilledWorker as err:
                yield i, Outcome(error=WorkerLost(f"its worker died {RETRIES_ON_WORKER_DEATH + 1} times "
                                                  f"during the job ({err.last_worker.address})"))
            except Exception as err:  # noqa: BLE001 - the job's own error, raised again by Outcome.get
                yield i, Outcome(error=err)
            future.release()

    def close(self) -> None:
        self.client.close()
        if self.owned is not None:
            self.owned.close()


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise config.SettingsError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0")
    return value


def _tag(item) -> str:
    """A readable part of a task's key (the case or theater id), so a scheduler's dashboard shows it."""
    text = item if isinstance(item, str) else getattr(item, "label", None) or type(item).__name__
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in str(text))[:60]


def scheduler_from_env() -> str | None:
    return os.environ.get(SCHEDULER_ENV, "").strip() or None


def open_executor(workers: int | None = None, scheduler: str | None = None) -> Executor:
    """The executor the options ask for: a local cluster of `workers`, `scheduler` (or its env), or serial."""
    scheduler = None if workers else scheduler or scheduler_from_env()
    if (workers or scheduler) and store.is_memory(config.db_url()):
        raise ExecutorError(f"FORECAST_DB_URL={config.db_url()!r} is an in-memory store, which worker processes "
                            "cannot see; point it at a file or a server")
    if scheduler:
        if config.db_url().startswith("sqlite"):
            config.warn(f"the store is SQLite ({config.db_url()}): workers on other machines cannot reach it; "
                        "give every worker a shared PostgreSQL URL (FORECAST_DB_URL)")
        return Cluster.connect(scheduler)
    if workers:
        return Cluster.local(workers)
    return Serial()
