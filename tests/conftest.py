"""Shared fixtures: real stores (SQLite file, PostgreSQL when one is given) and the real CLI.

Fixtures most test files want:

- ``db_url``            a fresh, empty store URL; parametrised over ``sqlite`` (a file in
                        tmp_path) and ``postgres`` (a new database on the server named by
                        env FORECAST_TEST_PG_URL, dropped afterwards). The postgres param
                        carries the ``postgres`` marker and is skipped with a reason when
                        FORECAST_TEST_PG_URL is unset — except under CI (env CI set), where
                        a missing server is a failure, not a skip. The role in that URL
                        needs CREATEDB (and, ideally, pg_signal_backend).
- ``sqlite_url``        a fresh, empty SQLite store URL (no parametrisation).
- ``cli``               a :class:`Cli` bound to ``sqlite_url``: runs the real Typer app
                        in-process with FORECAST_DB_URL / FORECAST_RUNS_DIR in tmp_path.
- ``cli_any``           the same, bound to ``db_url`` (so the test runs on every backend).
- ``initialised_store`` URL of a private copy of a SQLite store on which ``forecast init``
                        has loaded every bundled case (the template is built once per
                        session); FORECAST_DB_URL points at it for the test.
- ``initialised_cli``   a :class:`Cli` bound to ``initialised_store``.
- ``initialised_template`` the session's read-only template file (copy it; never write it).
- ``run_console``       helper running the *installed* ``forecast`` console script in a
                        subprocess (for end-to-end tests).
- ``runs_dir``          tmp folder that FORECAST_RUNS_DIR points at.

Every test runs with FORECAST_DB_URL and FORECAST_RUNS_DIR pointed into its own
tmp_path (autouse), so no test ever writes the checkout's forecast.db or models/runs.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "data"
CASES_DIR = DATA_DIR / "cases"
PG_ENV = "FORECAST_TEST_PG_URL"


def sqlite_url_for(path: Path) -> str:
    return f"sqlite:///{path}"


# --- environment isolation ------------------------------------------------------------


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path, runs_dir):
    """No test touches the checkout's store or runs, whatever the caller's env says."""
    monkeypatch.setenv("FORECAST_DB_URL", sqlite_url_for(tmp_path / "default-forecast.db"))
    monkeypatch.setenv("FORECAST_RUNS_DIR", str(runs_dir))
    for name in ("FORECAST_HOME", "FORECAST_DATA_DIR", "FORECAST_PRIORS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _main_module_kept():
    """Every test leaves the interpreter's __main__ as it found it.

    Streamlit's AppTest runs the app as __main__ and leaves it there; worker processes that a later
    test starts (Dask spawns them) import __main__ first, so they would run the dashboard and die.
    """
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


# --- stores ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return sqlite_url_for(tmp_path / "forecast.db")


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV, "").strip()
    return url or None


def _require_pg() -> str:
    url = _pg_admin_url()
    if url is None:
        reason = f"PostgreSQL tests need {PG_ENV} (a SQLAlchemy URL of a role allowed to CREATE DATABASE)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI .ci/run must start a server and set it")
        pytest.skip(reason)
    return url


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    import sqlalchemy as sa

    admin_url = sa.make_url(_require_pg())
    name = f"forecast_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
        gc.collect()  # closes pooled connections of engines the code under test dropped
        _drop_database(admin, name)
    finally:
        admin.dispose()


def _drop_database(admin, name: str) -> None:
    """Drop a test database; FORCE ends connections still held by the code under test's engines.

    FORCE can fail for a moment when an autovacuum worker is in the database and the test
    role may not signal it (roles without pg_signal_backend): retry, then leave a warning.
    """
    import sqlalchemy as sa

    last: Exception | None = None
    for attempt in range(10):
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except sa.exc.DBAPIError as err:
            last = err
            time.sleep(0.2 * (attempt + 1))
    warnings.warn(f"could not drop test database {name}: {last}", stacklevel=1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path, monkeypatch) -> str:
    """A fresh empty store on each backend; FORECAST_DB_URL points at it."""
    if request.param == "sqlite":
        url = sqlite_url_for(tmp_path / "forecast.db")
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("FORECAST_DB_URL", url)
    return url


def backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


# --- the CLI --------------------------------------------------------------------------


@dataclass
class Cli:
    """Runs the real `forecast` Typer app in-process against one store."""

    db_url: str
    runs_dir: Path
    env: dict = field(default_factory=dict)

    def _env(self, extra: dict | None) -> dict:
        return {"FORECAST_DB_URL": self.db_url, "FORECAST_RUNS_DIR": str(self.runs_dir), **self.env, **(extra or {})}

    def __call__(self, *args, input: str | None = None, env: dict | None = None):
        from forecast.cli import app

        runner = CliRunner()
        return runner.invoke(app, [str(a) for a in args], input=input, env=self._env(env), catch_exceptions=False)

    def ok(self, *args, **kwargs):
        """Run and insist on exit 0 (the failure message shows both streams)."""
        result = self(*args, **kwargs)
        assert result.exit_code == 0, f"forecast {' '.join(map(str, args))} exited {result.exit_code}\n" \
                                      f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        return result

    def json(self, *args, **kwargs):
        """Run with --json, insist on exit 0, and parse the one JSON document on stdout."""
        return json.loads(self.ok(*args, "--json", **kwargs).stdout)

    def engine(self):
        from forecast import store

        return store.engine(self.db_url)


@pytest.fixture
def cli(sqlite_url, runs_dir, monkeypatch) -> Cli:
    monkeypatch.setenv("FORECAST_DB_URL", sqlite_url)
    return Cli(sqlite_url, runs_dir)


@pytest.fixture
def cli_any(db_url, runs_dir) -> Cli:
    return Cli(db_url, runs_dir)


def console_script() -> Path:
    """The installed `forecast` entry point beside the running interpreter (the venv's)."""
    candidate = Path(sys.executable).parent / "forecast"
    if candidate.exists():
        return candidate
    found = shutil.which("forecast")
    if found is None:
        pytest.fail("the `forecast` console script is not installed (pip install -e .)")
    return Path(found)


@dataclass
class Console:
    """Runs the installed `forecast` script in a subprocess with the test's env."""

    db_url: str
    runs_dir: Path

    def __call__(self, *args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "FORECAST_DB_URL": self.db_url, "FORECAST_RUNS_DIR": str(self.runs_dir),
                    **(env or {})}
        return subprocess.run([str(console_script()), *map(str, args)], capture_output=True, text=True,
                              env=full_env, timeout=timeout, cwd=self.runs_dir)


@pytest.fixture
def run_console(sqlite_url, runs_dir) -> Console:
    return Console(sqlite_url, runs_dir)


# --- an initialised store (all bundled data) ------------------------------------------


@pytest.fixture(scope="session")
def initialised_template(tmp_path_factory) -> Path:
    """A SQLite file on which `forecast init` ran once this session. Read-only: copy it."""
    path = tmp_path_factory.mktemp("template") / "forecast.db"
    runs = tmp_path_factory.mktemp("template-runs")
    result = Cli(sqlite_url_for(path), runs)("init", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["inserted"] > 0, summary
    path.chmod(0o444)
    return path


@pytest.fixture
def initialised_store(initialised_template, tmp_path, monkeypatch) -> str:
    """URL of this test's own copy of the initialised store; FORECAST_DB_URL points at it."""
    path = tmp_path / "initialised.db"
    shutil.copyfile(initialised_template, path)
    path.chmod(0o644)
    url = sqlite_url_for(path)
    monkeypatch.setenv("FORECAST_DB_URL", url)
    return url


@pytest.fixture
def initialised_cli(initialised_store, runs_dir) -> Cli:
    return Cli(initialised_store, runs_dir)


# --- fits of the flagship, shared by the session --------------------------------------------

FLAGSHIP, FLAGSHIP_AS_OF = "russia-ukraine-2022", "2022-02-15"


def _flagship_runs(initialised_template, tmp_path_factory, name: str, **refit_kwargs) -> Path:
    """A runs folder holding one published run of the flagship as of FLAGSHIP_AS_OF."""
    import datetime as dt

    from forecast import refit, store

    runs = tmp_path_factory.mktemp(f"{name}-runs")
    db = tmp_path_factory.mktemp(f"{name}-db") / "forecast.db"
    shutil.copyfile(initialised_template, db)
    db.chmod(0o644)
    mp = pytest.MonkeyPatch()
    mp.setenv("FORECAST_RUNS_DIR", str(runs))
    try:
        run = refit.refit(store.engine(sqlite_url_for(db)), FLAGSHIP, dt.date.fromisoformat(FLAGSHIP_AS_OF),
                          **refit_kwargs)
    finally:
        mp.undo()
    assert run.published, run.manifest["reason"]
    return runs


@pytest.fixture(scope="session")
def flagship_template(initialised_template, tmp_path_factory) -> Path:
    """A runs folder with a published flagship run whose draws come from the prior (`prior_sampling`).

    Everything after sampling is real (filtering, prediction, gate, run store), in seconds: for
    tests of what the page, the reports and the scheduler do with a run. Read-only: use `fitted_store`.
    """
    from prior_sampling import prior_sample

    return _flagship_runs(initialised_template, tmp_path_factory, "prior-flagship", sample=prior_sample)


@pytest.fixture(scope="session")
def sampled_flagship_template(initialised_template, tmp_path_factory) -> Path:
    """A runs folder with one real, published fit of the flagship (default settings, about a minute).

    For the tests that prove the model right (leakage, drivers, the browser test). Read-only:
    use `sampled_store`.
    """
    return _flagship_runs(initialised_template, tmp_path_factory, "sampled-flagship")


@pytest.fixture
def fitted_store(flagship_template, initialised_store, runs_dir) -> Cli:
    """This test's own store and runs folder, with the prior-draw flagship run (FORECAST_* point at them)."""
    shutil.copytree(flagship_template, runs_dir, dirs_exist_ok=True)
    return Cli(initialised_store, runs_dir)


@pytest.fixture
def sampled_store(sampled_flagship_template, initialised_store, runs_dir) -> Cli:
    """This test's own store and runs folder, with the real flagship fit (FORECAST_* point at them)."""
    shutil.copytree(sampled_flagship_template, runs_dir, dirs_exist_ok=True)
    return Cli(initialised_store, runs_dir)


# --- example rows ------------------------------------------------------------------------


def example_rows(year: int, source: str) -> dict[str, dict]:
    """One valid row of each kind for a theater starting on 1 January of `year` (import and fuzz tests)."""
    rows = {
        "troops": {"kind": "troops", "date": "01-10", "estimate": 5000, "low": 4000, "high": 6000,
                   "source_type": "media"},
        "unit_move": {"kind": "unit_move", "date": "01-11", "unit": "1st Brigade", "direction": "arrive",
                      "home_district": "North", "distance_km": 800},
        "exercise": {"kind": "exercise", "date": "01-02", "name": "Shield", "start": "01-20", "end": "01-30",
                     "announced_by": "MoD"},
        "sign": {"kind": "sign", "date": "01-12", "category": "bridging", "description": "pontoons"},
        "claim": {"kind": "claim", "date": "01-13", "claim_type": "withdrawal", "verified": False},
        "outcome": {"kind": "outcome", "date": "03-01", "escalated": False},
    }
    dated = ("date", "start", "end")
    return {kind: {**{k: f"{year}-{v}" if k in dated else v for k, v in row.items()}, "source": source}
            for kind, row in rows.items()}


# --- helpers for tests ----------------------------------------------------------------


def case_file(theater: str) -> Path:
    return CASES_DIR / f"{theater}.jsonl"


def all_counts(url: str) -> dict:
    """Every count a user can see: per-theater evidence counts, theaters, change log."""
    from forecast import store

    eng = store.engine(url)
    try:
        return {
            "theaters": {t["id"]: t["evidence"] for t in store.theater_summaries(eng)},
            "changes": store.change_count(eng),
        }
    finally:
        eng.dispose()
