"""Scheduled refits (`forecast refit --all`), run history and retention.

`refit_all` refits every *open* theater (one with no outcome row yet) as of its
latest evidence, the job an operator runs from cron or a systemd timer:

- one job at a time: it holds a non-blocking file lock, FORECAST_RUNS_DIR/.refit-all.lock;
  a second job started meanwhile raises `Busy` at once (the CLI exits 4);
- idempotent: a theater whose data hash and prior-profile hash equal those of its
  last published run is skipped ("up to date"); so is one whose last attempt was
  rejected with the same data, priors, sampler settings and code (the sampler is
  seeded, so it would be rejected again: refit it by hand with more draws);
- safe: only runs that pass the convergence gate are published (`forecast.refit`);
  a rejected or crashed run never replaces the published one, and runs are written
  through a hidden temporary folder renamed into place (`forecast.runs.save`);
- isolated: an exception in one theater is recorded and the others still run;
- spread out on request: with `--workers N` or `--scheduler ADDRESS` the theaters' fits run in
  parallel (`forecast.executor`); a worker that dies mid-fit costs that theater's attempt, which is
  retried once and then recorded as failed, never a published run;
- one log line per theater; exit code 0 (all published or skipped), 3 (some theater's
  latest fit was rejected), 1 (some theater failed with an error, or an alert could not be recorded);
- alerts (`forecast.alerts`): each published run is checked against the theater's previous
  published run and the rules of alerts.toml; each new alert is recorded in alerts.jsonl, POSTed
  to the webhook and logged on one line; alerts earlier jobs failed to deliver are posted again
  first. A webhook that fails never changes the exit code;
- retention: afterwards every theater under FORECAST_RUNS_DIR keeps its newest
  FORECAST_KEEP_RUNS runs (default 10) plus, always, its latest published run;
  older runs are moved to a hidden folder and deleted (never half-visible), and
  hidden temporary folders left by crashed writers more than an hour ago are removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import filelock

from forecast import alerts, config, dataset, priors, runs, sampling, store
from forecast.executor import Executor, Serial
from forecast.features import data_hash

LOCK_NAME = ".refit-all.lock"
KEEP_ENV = "FORECAST_KEEP_RUNS"
DEFAULT_KEEP = 10
STALE_TMP_SECONDS = 3600  # a writer's temporary folder untouched this long belongs to a dead process
EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_BUSY = 0, 1, 3, 4


class Busy(RuntimeError):
    """Another `refit --all` holds the lock."""


class SettingError(ValueError):
    """A bad setting in the environment."""


def keep_runs() -> int:
    raw = os.environ.get(KEEP_ENV, "").strip()
    if not raw:
        return DEFAULT_KEEP
    try:
        keep = int(raw)
    except ValueError:
        keep = 0
    if keep < 1:
        raise SettingError(f"{KEEP_ENV}={raw!r}: expected a whole number of runs to keep per theater, at least 1")
    return keep


def lock_path() -> Path:
    return config.runs_dir() / LOCK_NAME


def open_theaters(eng) -> list[str]:
    """Theaters with no outcome yet: the watched ones."""
    return [t["id"] for t in store.theater_summaries(eng) if t["outcome"] == "open"]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Result:
    """What happened to one theater."""

    theater: str
    action: str  # published | rejected | skipped | failed
    message: str
    as_of: str | None = None
    run_id: str | None = None  # the run made (published or rejected), if any
    current_run_id: str | None = None  # the published run the dashboard and reports show afterwards
    previous_run_id: str | None = None  # published: the published run it replaced (alerts compare the two)
    data_hash: str | None = None
    prior_hash: str | None = None
    p30: dict | None = None
    still_rejected: bool = False  # skipped because the same fit was already rejected
    seconds: float = 0.0
    traceback: str | None = None

    def line(self) -> str:
        return f"{_now()} {self.theater}: {self.action}: {self.message} [{self.seconds:.1f} s]"


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An error as one log line: its first non-empty line (a Rust panic brings a 17-line backtrace)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else "(no message)"
    first = first if len(first) <= limit else first[:limit] + "…"
    return first + (f" (+{len(lines) - 1} more lines: see the summary's traceback)" if len(lines) > 1 else "")


def _same_fit(manifest: dict, data: str, prior: str, settings: sampling.SamplerSettings) -> bool:
    return (manifest["data_hash"] == data and manifest["prior_hash"] == prior
            and manifest.get("sampler") == settings.recorded() and manifest.get("code_version") == runs.code_version())


def refit_theater(eng, theater: str, profile: priors.Profile, settings: sampling.SamplerSettings,
                  sample=sampling.sample) -> Result:
    """Refit one theater as of its latest evidence unless its published run is up to date."""
    panels, as_of = dataset.from_store(eng, theater, None, reading=profile.reading)
    data = data_hash(panels)
    base = dict(theater=theater, as_of=str(as_of), data_hash=data, prior_hash=profile.hash)
    published = runs.latest(theater)
    current = published.id if published else None
    if published and published.manifest["data_hash"] == data and published.manifest["prior_hash"] == profile.hash:
        return Result(action="skipped", current_run_id=current, p30=published.forecast()["prob"]["30"],
                      message=f"up to date: published run {published.id} (as of {published.manifest['as_of']}) "
                              f"has the same data ({data}) and priors ({profile.name}, {profile.hash})", **base)
    last = runs.latest(theater, published_only=False)
    if last and not last.published and _same_fit(last.manifest, data, profile.hash, settings):
        return Result(action="skipped", current_run_id=current, still_rejected=True,
                      message=f"unchanged since rejected run {last.id} ({last.manifest.get('reason')}); the same "
                              f"fit would be rejected again: refit by hand with more --draws/--tune; "
                              + (f"published run {current} stays current" if current else "no published forecast"),
                      **base)
    from forecast import refit  # the model stack: only when a theater is refitted

    run = refit.refit(eng, theater, as_of, profile, settings, sample=sample)
    p30 = run.forecast()["prob"]["30"]
    if run.published:
        return Result(action="published", run_id=run.id, current_run_id=run.id, previous_run_id=current, p30=p30,
                      message=f"published run {run.id} as of {as_of}: P(30 days) {p30['mean']:.0%} "
                              f"({run.forecast()['words']})" + (f"; replaces {current}" if current else ""), **base)
    return Result(action="rejected", run_id=run.id, current_run_id=current, p30=p30,
                  message=f"run {run.id} failed the convergence gate ({run.manifest['reason']}); "
                          + (f"published run {current} stays current" if current else "no published forecast yet"),
                  **base)


@dataclass
class JobContext:
    """What every theater's job needs, sent with each job to where it runs."""

    store_url: str
    profile: priors.Profile
    settings: sampling.SamplerSettings
    sample: Callable = sampling.sample


def refit_job(theater: str, context: JobContext) -> Result:
    """One theater's attempt, where the executor runs it: an error becomes a `failed` result, never a raise."""
    clock = time.perf_counter()
    eng = store.engine(context.store_url)
    try:
        result = refit_theater(eng, theater, context.profile, context.settings, context.sample)
    except Exception as err:  # one theater's crash must not stop the others
        result = _failed(theater, f"{type(err).__name__}: {_one_line(err)}", traceback.format_exc())
    result.seconds = round(time.perf_counter() - clock, 2)
    return result


def _failed(theater: str, message: str, trace: str | None) -> Result:
    published = runs.latest(theater)
    return Result(theater, "failed", f"{message}; " + (f"published run {published.id} stays current" if published
                                                          else "no published forecast"),
                  current_run_id=published.id if published else None, traceback=trace)


def _lost(theater: str, error: BaseException) -> Result:
    """A job that never returned: its worker died on every attempt (or the cluster failed)."""
    return _failed(theater, f"{type(error).__name__}: {_one_line(error)}", None)


def _refit_each(theaters: list[str], context: JobContext, executor: Callable[[], Executor], alerter, log) -> list:
    """Every theater's job, logged and alerted as it finishes; the results in the theaters' order."""
    results = []
    if not theaters:
        return results
    with contextlib.closing(executor()) as where:
        for i, outcome in where.run(refit_job, theaters, context):
            result = outcome.value if outcome.error is None else _lost(theaters[i], outcome.error)
            log(result.line())
            results.append(result)
            if result.action == "published":
                alerter.published(result.theater, result.previous_run_id, result.run_id)
    return sorted(results, key=lambda r: theaters.index(r.theater))


def refit_all(eng, profile: priors.Profile | None = None,
              settings: sampling.SamplerSettings = sampling.SamplerSettings(progressbar=False),
              keep: int | None = None, log: Callable[[str], None] = lambda line: None,
              alert_config: alerts.Config | None = None, executor: Callable[[], Executor] = Serial,
              sample=sampling.sample) -> dict:
    """The scheduled job. Raises `Busy` if another job holds the lock (`alerts.AlertConfigError` for a bad
    alerts file, before any work); returns the summary document.

    `executor`: opens where the theaters' fits run (`forecast.executor`; default: here, one after another), once
    the lock is held. The lock, the log, the alerts and retention stay in this process; each job reads the store
    and writes its run itself.
    """
    keep = keep if keep is not None else keep_runs()
    profile = profile or priors.load("default")
    alerter = alerts.Alerter(alert_config if alert_config is not None else alerts.load(), log)
    config.runs_dir().mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path()))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise Busy(f"another `forecast refit --all` is running (it holds {lock_path()}); "
                   f"this one exits without doing anything") from None
    try:
        started = _now()
        alerter.start(store.theater_ids(eng))
        theaters = open_theaters(eng)
        if not theaters:
            log(f"{_now()} no open theaters to refit (a theater is open while it has no outcome row)")
        results = _refit_each(theaters, JobContext(eng.url.render_as_string(hide_password=False), profile,
                                                   settings, sample), executor, alerter, log)
        housekeeping = retain(keep)
        if housekeeping["pruned"] or housekeeping["removed_temporary"]:
            log(f"{_now()} retention (keep {keep} runs per theater): removed {len(housekeeping['pruned'])} old "
                f"run(s) and {len(housekeeping['removed_temporary'])} stale temporary folder(s)")
    finally:
        lock.release()
    counts = {a: sum(r.action == a for r in results) for a in ("published", "rejected", "skipped", "failed")}
    if counts["failed"] or alerter.errors:
        code = EXIT_FAILED
    elif counts["rejected"] or any(r.still_rejected for r in results):
        code = EXIT_REJECTED
    else:
        code = EXIT_OK
    return {"started_at": started, "finished_at": _now(), "prior_profile": profile.name, "prior_hash": profile.hash,
            "keep_runs": keep, "theaters": [asdict(r) for r in results], "counts": counts, **housekeeping,
            **alerter.summary(), "exit_code": code}


# --- retention ---------------------------------------------------------------------------


def _remove(folder: Path) -> None:
    """Delete a run folder without ever leaving a half-deleted visible run: hide it, then delete."""
    hidden = folder.parent / f".del-{folder.name}"
    os.rename(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def prune(theater: str, keep: int) -> list[str]:
    """Delete runs past the newest `keep` of a theater, never its latest published run; returns their ids."""
    history = runs.history(theater)
    kept = {r.id for r in history[-keep:]}
    published = runs.latest(theater)
    if published is not None:
        kept.add(published.id)
    removed = []
    for run in history:
        if run.id not in kept:
            _remove(run.path)
            removed.append(run.id)
    return removed


def _age_seconds(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for child in folder.iterdir():
        try:
            newest = max(newest, child.stat().st_mtime)
        except OSError:
            continue
    return time.time() - newest


def remove_stale_temporary(theater: str, max_age: float = STALE_TMP_SECONDS) -> list[str]:
    """Hidden folders left by crashed writers (.tmp-*, older than max_age) or deleters (.del-*)."""
    removed = []
    parent = runs.theater_dir(theater)
    if not parent.is_dir():
        return removed
    for folder in parent.iterdir():
        if not folder.is_dir():
            continue
        try:
            stale = folder.name.startswith(".del-") or (folder.name.startswith(".tmp-")
                                                        and _age_seconds(folder) > max_age)
        except OSError:
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"{theater}/{folder.name}")
    return removed


def retain(keep: int) -> dict:
    """Retention over every theater folder under FORECAST_RUNS_DIR."""
    pruned, temporary = [], []
    root = config.runs_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        temporary += remove_stale_temporary(folder.name)
        pruned += [f"{folder.name}/{run_id}" for run_id in prune(folder.name, keep)]
    return {"pruned": pruned, "removed_temporary": temporary}


# --- history -----------------------------------------------------------------------------


def history_rows(theater: str) -> list[dict]:
    """Every stored run of a theater, newest first, with its 30-day forecast (`forecast runs`)."""
    current = runs.latest(theater)
    rows = []
    for run in reversed(runs.history(theater)):
        m = run.manifest
        try:
            doc = run.forecast()
            p30, words = doc["prob"]["30"], doc.get("words")
        except (OSError, ValueError, KeyError):
            p30, words = None, None
        rows.append({"run_id": m["run_id"], "created_at": m["created_at"], "as_of": m["as_of"],
                     "status": m["status"], "reason": m.get("reason"), "current": current is not None
                     and run.id == current.id, "prior_profile": m["prior_profile"], "prior_hash": m["prior_hash"],
                     "data_hash": m["data_hash"], "code_version": m.get("code_version"), "p30": p30,
                     "words": words, "diagnostics": {k: m["diagnostics"].get(k) for k in
                                                     ("r_hat_max", "ess_bulk_min", "divergences")}})
    return rows


def history_text(theater: str, rows: list[dict]) -> str:
    if not rows:
        return f"{theater}: no runs yet; run `forecast refit {theater}`"
    lines = [f"   {'run id':24} {'created':25} {'as of':10}  {'status':9} {'P(30 d)':>8}  {'priors':12} reason"]
    for r in rows:
        p30 = f"{r['p30']['mean']:.0%}" if r["p30"] else "?"
        lines.append(f"{'*' if r['current'] else ' '}  {r['run_id']:24} {r['created_at']:25} {r['as_of']:10}  "
                     f"{r['status']:9} {p30:>8}  {r['prior_profile']:12} {r['reason'] or ''}")
    lines.append("(* = the published forecast that `show`, reports and the dashboard use)")
    return "\n".join(lines)
