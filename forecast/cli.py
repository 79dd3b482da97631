"""The `forecast` command: the operator's and the tests' interface (DESIGN §6).

Commands that report take --json and print one JSON document on stdout.
Errors go to stderr; bad input exits 2.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Optional

import sqlalchemy as sa
import typer

from forecast import config, dataset, ingest, model, predict, priors, refit, runs, store
from forecast.schema import KINDS

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
        store.require_current(eng)
    except RuntimeError as err:
        fail(str(err), 1)
    return eng


def _import(eng, paths: list[Path], origin: str) -> store.ImportResult:
    try:
        return ingest.import_files(eng, paths, origin)
    except sa.exc.SQLAlchemyError as err:
        fail(f"the evidence store refused the import ({type(err).__name__}): {str(err).splitlines()[0]}", 1)
    except ingest.InvalidInput as err:
        typer.echo(f"error: {len(err.problems)} bad row(s); nothing was written:", err=True)
        for problem in err.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(2)


@app.command()
def init(as_json: bool = typer.Option(False, "--json")):
    """Create or upgrade the evidence store and load every case file under data/ (idempotent)."""
    eng = store.engine()
    before, after = store.upgrade(eng)
    files = ingest.case_files(config.data_dir())
    result = _import(eng, files, origin="init")
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
    paths = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".csv")) if path.is_dir() else [path]
    eng = _engine()
    result = _import(eng, paths, origin=str(path))
    emit(result.as_dict(), as_json, f"{path}: {result.inserted} inserted, {result.updated} updated, "
         f"{result.unchanged} unchanged")


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
             as_json: bool = typer.Option(False, "--json")):
    """The evidence rows of a theater, with their sources."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    eng = _engine()
    if theater not in store.theater_ids(eng):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    rows = [r.model_dump(mode="json") for r in store.load_evidence(eng, theater, kind)]
    text = "\n".join(f"{r['date']}  {r['kind']:9}  {_summary(r)}  [{r['source']}]" for r in rows)
    emit(rows, as_json, text or "no evidence")


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
             f"priors {doc['prior_profile']})", "", predict.key_judgment(doc), ""]
    for h, p in doc["prob"].items():
        lines.append(f"  P(escalation within {h:>2} days) = {p['mean']:6.1%}   80% interval {p['lo']:.1%}–{p['hi']:.1%}")
    lines += ["", "  drivers (log-odds of the next day's hazard vs a quiet baseline):",
              f"    {'baseline':22} {doc['baseline_log_odds']['mean']:+.2f}"]
    for d in doc["drivers"]:
        if abs(d["log_odds"]) >= 0.01:
            lines.append(f"    {d['indicator']:22} {d['log_odds']:+.2f}  [{d['lo']:+.2f}, {d['hi']:+.2f}]")
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
           draws: int = typer.Option(model.SamplerSettings.draws, help="posterior draws per chain"),
           tune: int = typer.Option(model.SamplerSettings.tune, help="tuning steps per chain"),
           chains: int = typer.Option(model.SamplerSettings.chains),
           sampler: str = typer.Option("nutpie", help="nutpie or pymc"),
           as_json: bool = typer.Option(False, "--json")):
    """Fit a theater as of a date, gate the fit, store the run and print its forecast."""
    if theater is None:
        fail("give a THEATER (or --all)")
    if sampler not in ("nutpie", "pymc"):
        fail(f"--sampler: {sampler!r} is not one of nutpie, pymc")
    eng = _engine()
    settings = model.SamplerSettings(draws=draws, tune=tune, chains=chains, sampler=sampler)
    try:
        run = refit.refit(eng, theater, _as_of(as_of), _profile(prior_profile), settings)
    except dataset.DatasetError as err:
        fail(str(err))
    doc = run.document()
    emit(doc, as_json, forecast_text(doc))
    if not run.published:
        typer.echo(f"warning: run {run.id} failed the convergence gate ({run.manifest['reason']}); "
                   f"the last published forecast stays current", err=True)
        raise typer.Exit(3)


@app.command()
def show(theater: str, as_json: bool = typer.Option(False, "--json")):
    """The latest published forecast of a theater."""
    if theater not in store.theater_ids(_engine()):
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    try:
        doc = runs.require_published(theater).document()
    except runs.RunError as err:
        fail(str(err), 1)
    emit(doc, as_json, forecast_text(doc))


def _summary(row: dict) -> str:
    skip = {"kind", "theater", "date", "source", "url", "notes", "reported", "date_precision"}
    return ", ".join(f"{k}={v}" for k, v in row.items() if k not in skip and v is not None)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
