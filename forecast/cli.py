"""The `forecast` command: the operator's and the tests' interface (DESIGN §6).

Commands that report take --json and print one JSON document on stdout.
Errors go to stderr as one line: bad input exits 2, an unusable environment
(store, settings, folders) exits 1.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Optional

import sqlalchemy as sa
import typer

from forecast import (
    alerts,
    cli_executor,
    config,
    dataset,
    freshness,
    ingest,
    priors,
    runs,
    safe_write,
    sampling,
    schedule,
    store,
    store_schema,
    wording,
)
from forecast.cli_errors import ErrorHandlingGroup
from forecast.features import label
from forecast.schema import KINDS

app = typer.Typer(cls=ErrorHandlingGroup, add_completion=False, no_args_is_help=True, help=__doc__)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def emit(document, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(document, indent=2, default=str))
    else:
        typer.echo(text)


def _engine():
    eng = store.engine()
    try:
        store_schema.require_current(eng)
    except RuntimeError as err:
        fail(str(err), 1)
    return eng


def _warn(problem) -> None:
    typer.echo(f"warning: {problem}", err=True)


def _import(eng, paths: list[Path], origin: str, case_files: bool = False) -> store.ImportResult:
    try:
        return ingest.import_files(eng, paths, origin, case_files=case_files, warn=_warn)
    except store.StoreError:
        raise
    except sa.exc.SQLAlchemyError as err:
        fail(f"the evidence store refused the import ({type(err).__name__}): {str(err).splitlines()[0]}", 1)
    except ingest.InvalidInput as err:
        typer.echo(f"error: {len(err.problems)} bad row(s); nothing was written:", err=True)
        for problem in err.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(2) from None


@app.command()
def init(as_json: bool = typer.Option(False, "--json")):
    """Create or upgrade the evidence store and load every case file under data/ (idempotent)."""
    store.require_persistent()
    files = ingest.case_files(config.data_dir())
    if not (config.data_dir() / "cases").is_dir():
        fail(f"{config.data_dir() / 'cases'}: no such folder (FORECAST_DATA_DIR names the data folder)", 1)
    eng = store.engine()
    before, after = store_schema.upgrade(eng)
    result = _import(eng, files, origin="init", case_files=True)
    doc = {"store": config.db_url().split("@")[-1], "schema_from": before, "schema_to": after,
           "files": len(files), **result.as_dict()}
    emit(doc, as_json, f"store schema v{before} -> v{after}; {len(files)} case files: "
         f"{result.inserted} inserted, {result.updated} updated, {result.unchanged} unchanged")


@app.command("import")
def import_(path: Path = typer.Argument(..., help="a .jsonl case file, a .csv file, or a folder of them"),
            as_json: bool = typer.Option(False, "--json")):
    """Import evidence: every row is validated; any bad row rejects the whole file."""
    if not path.exists():
        fail(f"{path}: no such file or folder")
    store.require_persistent()
    paths = _folder_files(path) if path.is_dir() else [path]
    eng = _engine()
    result = _import(eng, paths, origin=str(path))
    emit(result.as_dict(), as_json, f"{path}: {result.inserted} inserted, {result.updated} updated, "
         f"{result.unchanged} unchanged")


def _folder_files(folder: Path) -> list[Path]:
    """The .jsonl and .csv files of a folder; everything else is named in a warning, never silently skipped."""
    paths = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            _warn(f"{entry}: skipped: a sub-folder (folders are not imported recursively)")
        elif entry.suffix not in (".jsonl", ".csv"):
            _warn(f"{entry}: skipped: not a .jsonl or .csv file")
        elif not entry.is_file():
            _warn(f"{entry}: skipped: not a regular file")
        else:
            paths.append(entry)
    if not paths:
        fail(f"{folder}: no .jsonl or .csv file to import")
    return paths


@app.command()
def retract(theater: str = typer.Argument(..., help="theater id"),
            row_id: str = typer.Argument(..., help="the row's id, as `forecast evidence THEATER` shows it"),
            reason: str = typer.Option(..., "--reason", help="why the row is withdrawn (kept in the change log)"),
            by: Optional[str] = typer.Option(None, "--by", help="who withdraws it (default: this user)"),
            as_json: bool = typer.Option(False, "--json")):
    """Withdraw a wrong evidence row: it stays in the store and the change log, but no fit or listing uses it."""
    store.require_persistent()
    eng = _engine()
    doc = store.retract(eng, theater, row_id, reason, by or _user())
    emit(doc, as_json, f"retracted {doc['kind']} row {doc['row_id']} of {theater} (dated {doc['date']}) by "
         f"{doc['retracted']['by']}: {doc['retracted']['reason']}. The change log keeps it; fits leave it out "
         f"from now on (`forecast refit {theater}` or `refit --all` to update a forecast).")


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in this environment
        return None


@app.command("theaters")
def theaters_(as_json: bool = typer.Option(False, "--json")):
    """Each theater, its outcome and its evidence counts."""
    rows = store.theater_summaries(_engine())
    lines = [f"{'id':32} {'outcome':10} {'date':10}  " + " ".join(f"{k:>9}" for k in KINDS)]
    for r in rows:
        date = r["escalation_date"] or r["end_date"] or ""
        lines.append(f"{r['id']:32} {r['outcome']:10} {date:10}  "
                     + " ".join(f"{r['evidence'][k]:>9}" for k in KINDS))
    emit(rows, as_json, "\n".join(lines))


@app.command()
def evidence(theater: str, kind: Optional[str] = typer.Option(None, "--kind", help="one of " + ", ".join(KINDS)),
             ids: bool = typer.Option(False, "--ids", help="start each line with the row's id (for `forecast retract`)"),
             retracted: bool = typer.Option(False, "--retracted", help="list retracted rows too (marked)"),
             as_json: bool = typer.Option(False, "--json")):
    """The evidence rows of a theater, with their sources (--json and --ids: with row ids, for `forecast retract`)."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    eng = _engine()
    if theater not in store.theater_ids(eng):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    rows = store.evidence_listing(eng, theater, kind, include_retracted=retracted)
    text = "\n".join((f"{r['row_id']}  " if ids else "") + f"{r['date']}  {r['kind']:9}  {_describe(r)}  [{r['source']}]"
                     + (f"  RETRACTED {r['retracted']['at']}: {r['retracted']['reason']}" if "retracted" in r else "")
                     for r in rows)
    emit(rows, as_json, text or "no evidence")


def _describe(row: dict) -> str:
    """The schema's one-line description of a listed row (its row id and retraction set aside)."""
    from forecast.schema import EVIDENCE_ADAPTER

    return EVIDENCE_ADAPTER.validate_python({k: v for k, v in row.items() if k not in ("row_id", "retracted")}).describe()


def _as_of(value: Optional[str]) -> Optional[dt.date]:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"--as-of: {value!r} is not a date (YYYY-MM-DD)")


def _profile(name: str) -> priors.Profile:
    try:
        return priors.load(name)
    except priors.ProfileError as err:
        fail(str(err))


def forecast_text(doc: dict) -> str:
    """The forecast for a terminal: the key judgment, the numbers, the top drivers."""
    lines = [f"{doc['theater']} as of {doc['as_of']}  (run {doc['run_id']}, {doc['status']}, "
             f"priors {doc['prior_profile']})", "", wording.key_judgment(doc), ""]
    for h, p in doc["prob"].items():
        lines.append(f"  P(escalation within {h:>2} days) = {wording.pct(p['mean']):>6}   "
                     f"80% interval {wording.span(p['lo'], p['hi'])}")
    lines += ["", "  " + wording.INTERVAL_MEANING, "",
              "  drivers (log-odds of the next day's hazard vs a quiet baseline):",
              f"    {'quiet baseline':38} {doc['baseline_log_odds']['mean']:+.2f}"]
    for d in doc["drivers"]:
        if abs(d["log_odds"]) >= 0.01:
            lines.append(f"    {label(d['indicator']):38} {d['log_odds']:+.2f}  [{d['lo']:+.2f}, {d['hi']:+.2f}]")
    g = doc["diagnostics"]
    lines += ["", f"  diagnostics: max R-hat {g['r_hat_max']}, min bulk ESS {g['ess_bulk_min']:.0f}, "
                  f"divergences {g['divergences']}, sampling {g['sampling_seconds']} s"]
    if doc.get("reason"):
        lines.append(f"  rejected: {doc['reason']}")
    return "\n".join(lines)


@app.command("refit")
def refit_(theater: Optional[str] = typer.Argument(None, help="theater id (omit with --all)"),
           as_of: Optional[str] = typer.Option(None, "--as-of", help="YYYY-MM-DD; default: latest evidence"),
           prior_profile: str = typer.Option("default", "--priors", help="prior profile name or .toml path"),
           draws: int = typer.Option(sampling.SamplerSettings.draws, help="posterior draws per chain"),
           tune: int = typer.Option(sampling.SamplerSettings.tune, help="tuning steps per chain"),
           chains: int = typer.Option(sampling.SamplerSettings.chains),
           sampler: str = typer.Option("nutpie", help="nutpie or pymc"),
           all_: bool = typer.Option(False, "--all", help="refit every open theater as of its latest evidence "
                                     "(the scheduled job; skips theaters already up to date)"),
           workers: Optional[int] = cli_executor.WORKERS, scheduler: Optional[str] = cli_executor.SCHEDULER,
           as_json: bool = typer.Option(False, "--json")):
    """Fit a theater as of a date, gate the fit, store the run and print its forecast."""
    if all_ and (theater is not None or as_of is not None):
        fail("--all refits every open theater as of its latest evidence: give no THEATER and no --as-of")
    if not all_ and workers is not None:
        fail("--workers spreads the fits of `refit --all`; one theater's refit runs here, or on a "
             "long-lived worker with --scheduler")
    if theater is None and not all_:
        fail("give a THEATER (or --all)")
    if sampler not in ("nutpie", "pymc"):
        fail(f"--sampler: {sampler!r} is not one of nutpie, pymc")
    _check_sampling(draws, tune, chains)
    if all_:
        runs.check_writable("")  # a read-only runs folder is found now, not after the fits
        settings = sampling.SamplerSettings(draws=draws, tune=tune, chains=chains, sampler=sampler, progressbar=False)
        _refit_all(_profile(prior_profile), settings, as_json, workers, scheduler)
        return
    eng = _engine()
    if theater not in store.theater_ids(eng):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    runs.check_writable(theater)  # a read-only runs folder is found now, not after the fit
    settings = sampling.SamplerSettings(draws=draws, tune=tune, chains=chains, sampler=sampler)
    try:
        from forecast import dispatch  # here: the model stack, only in the commands that fit

        run = dispatch.refit_anywhere(eng, theater, _as_of(as_of), _profile(prior_profile), settings, scheduler)
    except dataset.DatasetError as err:
        fail(str(err))
    doc = run.document()
    emit(doc, as_json, forecast_text(doc))
    if not run.published:
        typer.echo(f"warning: run {run.id} failed the convergence gate ({run.manifest['reason']}); "
                   f"the last published forecast stays current", err=True)
        raise typer.Exit(3)


SAMPLING_LIMITS = {"--draws": (1, 100_000), "--tune": (1, 100_000), "--chains": (1, 64)}


def _check_sampling(draws: int, tune: int, chains: int) -> None:
    """Refuse sampler settings no fit can use before any work starts (--draws 0 used to fail after 15 s)."""
    for name, value in (("--draws", draws), ("--tune", tune), ("--chains", chains)):
        low, high = SAMPLING_LIMITS[name]
        if not low <= value <= high:
            fail(f"{name}: {value} is not a whole number from {low} to {high:,}")


@app.command()
def show(theater: str, as_json: bool = typer.Option(False, "--json")):
    """The latest published forecast of a theater, and whether the store's evidence has changed since."""
    eng = _engine()
    if theater not in store.theater_ids(eng):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    try:
        run = runs.require_published(theater)
    except runs.RunError as err:
        fail(str(err), 1)
    fresh = freshness.check(eng, run)
    doc = {**run.document(), "stale": None if fresh is None else fresh.as_dict()}
    text = forecast_text(doc)
    if fresh is not None and fresh.stale:
        text = f"STALE: {fresh.summary()}\n\n{text}"
    emit(doc, as_json, text)


def _refit_all(profile: priors.Profile, settings: sampling.SamplerSettings, as_json: bool,
               workers: Optional[int], scheduler: Optional[str]) -> None:
    """`refit --all`: log lines (stderr with --json), the summary, exit 0/1/3, or 4 when another job runs."""
    try:
        keep = schedule.keep_runs()
        rules = alerts.load()
    except (schedule.SettingError, alerts.AlertConfigError) as err:
        fail(str(err))
    open_executor = cli_executor.chosen(workers, scheduler)
    eng = _engine()
    try:
        summary = schedule.refit_all(eng, profile, settings, keep, log=lambda line: typer.echo(line, err=as_json),
                                     alert_config=rules, executor=open_executor)
    except schedule.Busy as err:
        fail(str(err), schedule.EXIT_BUSY)
    c = summary["counts"]
    sent = summary["alerts"] + summary["alerts_redelivered"]
    emit(summary, as_json, f"refit --all: {c['published']} published, {c['rejected']} rejected, "
         f"{c['skipped']} skipped, {c['failed']} failed" + (f"; {len(sent)} alert(s), "
                                                            f"{sum(a['delivered'] for a in sent)} posted" if sent else ""))
    if summary["exit_code"]:
        raise typer.Exit(summary["exit_code"])


@app.command("runs")
def runs_(theater: str, as_json: bool = typer.Option(False, "--json")):
    """The run history of a theater, newest first: id, created, as-of, status, reason, priors, P(30 days)."""
    eng = _engine()
    if theater not in store.theater_ids(eng) and not runs.history(theater):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    rows = schedule.history_rows(theater)
    emit(rows, as_json, schedule.history_text(theater, rows))


@app.command("alerts")
def alerts_(theater: Optional[str] = typer.Argument(None, help="theater id (default: every theater)"),
            as_json: bool = typer.Option(False, "--json")):
    """The alerts `refit --all` recorded (newest first): rule, P(30 days) before and after, delivery."""
    if theater is not None and theater not in store.theater_ids(_engine()) \
            and not any(r.get("theater") == theater for r in alerts.read_log()):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    rows = alerts.listing(theater)
    emit(rows, as_json, alerts.listing_text(rows, theater, alerts.config_path()))


@app.command("report")
def report_(theater: str,
            fmt: str = typer.Option("html", "--format", "-f", help="html, pdf or json"),
            output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                  help="file to write (default: THEATER-ASOF-RUNID.FORMAT here)"),
            as_json: bool = typer.Option(False, "--json", help="print what was written as JSON")):
    """Render the latest published forecast of a theater as an HTML, PDF or JSON report."""
    from forecast import report

    if fmt not in report.FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(report.FORMATS)}")
    eng = _engine()
    if theater not in store.theater_ids(eng):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    try:
        run = runs.require_published(theater)
    except runs.RunError as err:
        fail(str(err), 1)
    path = output or Path(f"{theater}-{run.manifest['as_of']}-{run.id}.{fmt}")
    if path.is_dir():
        fail(f"-o {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        fail(f"-o {path}: folder {path.parent} does not exist")
    try:
        safe_write.check_target(path)  # before rendering: a device, FIFO or link is never replaced
    except safe_write.UnsafeTarget as err:
        fail(f"-o {err}")
    names = {t.id: t.name for t in store.load_theaters(eng)}
    data = report.render(run, store.load_evidence(eng, theater), fmt, theater_name=names.get(theater),
                         freshness=freshness.check(eng, run))
    try:
        report.write(data, path)
    except safe_write.UnsafeTarget as err:
        fail(f"-o {err}")
    except OSError as err:
        fail(f"-o {path}: cannot write: {err.strerror or err}", 1)
    emit({"path": str(path), "format": fmt, "bytes": len(data), "theater": theater, "run_id": run.id,
          "as_of": run.manifest["as_of"], "data_hash": run.manifest["data_hash"]}, as_json,
         f"wrote {path} ({fmt}, {len(data):,} bytes): {theater} as of {run.manifest['as_of']}, run {run.id}")


@app.command()
def dashboard(port: int = typer.Option(8501, "--port", help="port to serve on"),
              address: str = typer.Option("127.0.0.1", "--address",
                                          help="address to bind (default: this machine only)")):
    """Start the analyst's dashboard (Streamlit), bound to localhost unless --address says otherwise."""
    script = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
    if not script.is_file():
        fail(f"{script}: the dashboard app is missing from this installation", 1)
    if not 0 < port < 65536:
        fail(f"--port: {port} is not a TCP port")
    typer.echo(f"dashboard: http://{address}:{port}/  (Ctrl-C stops it)", err=True)
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
               "--server.address", address, "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)  # Streamlit takes over this process (and its signals)


# Registered on `app` by importing them: add, whatif and replay; backtest and sensitivity.
from forecast import cli_live, cli_study  # noqa: E402, F401


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
