"""The study commands of `forecast`: how good the engine is, and how much its priors matter.

- `forecast backtest [--case ID ...]`: leave-one-case-out forecasts and their scores (`forecast.backtest`);
  `--select`: nested selection of the evidence reading, with baselines (`forecast.selection`);
- `forecast sensitivity --profiles A B C`: that backtest under each prior profile, one table
  (`forecast.sensitivity`).

Both run their fits through `--workers N` / `--scheduler ADDRESS` (`forecast.cli_executor`).
Registered on the `forecast` app by `forecast.cli`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from forecast import cli_executor, sampling
from forecast.cli import _engine, _profile, app, emit, fail

CASES = typer.Option(None, "--case", help="case id (repeat); default: every closed case")
DRAWS = typer.Option(sampling.SamplerSettings.draws, help="posterior draws per chain")
TUNE = typer.Option(sampling.SamplerSettings.tune, help="tuning steps per chain")
CHAINS = typer.Option(sampling.SamplerSettings.chains)
METACULUS = typer.Option(None, "--metaculus/--no-metaculus",
                         help="flagship vs Metaculus (default: when the flagship is in scope)")
CHECK_EXACT = typer.Option(3, "--check-exact", help="compare N weighted forecasts with exact refits")


def _options(case, draws: int, tune: int, chains: int, metaculus, check_exact: int, out: Path):
    from forecast import backtest

    if min(draws, tune, chains) < 1 or check_exact < 0:
        fail("--draws, --tune and --chains must be positive, --check-exact not negative")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: is a file; give a folder")
    settings = sampling.SamplerSettings(draws=draws, tune=tune, chains=chains, progressbar=False)
    return backtest.Options(cases=case or None, settings=settings, metaculus=metaculus, check_exact=check_exact)


def _on_executor(workers: Optional[int], scheduler: Optional[str], work):
    """`work(eng, executor)` on the executor the options ask for (checked first), closed afterwards."""
    from forecast import backtest

    open_executor = cli_executor.chosen(workers, scheduler)
    eng = _engine()
    try:
        with contextlib.closing(open_executor()) as executor:
            return work(eng, executor)
    except backtest.BacktestError as err:
        fail(str(err))


@app.command("backtest")
def backtest_(case: Optional[list[str]] = CASES,
              out: Path = typer.Option(Path("out/backtest"), "--out", help="folder for the CSV, PNG and JSON files"),
              prior_profile: str = typer.Option("default", "--priors", help="prior profile name or .toml path"),
              draws: int = DRAWS, tune: int = TUNE, chains: int = CHAINS, metaculus: Optional[bool] = METACULUS,
              check_exact: int = CHECK_EXACT, workers: Optional[int] = cli_executor.WORKERS,
              scheduler: Optional[str] = cli_executor.SCHEDULER,
              select: bool = typer.Option(False, "--select", help="nested selection among every candidate reading "
                                          "of models/candidates.toml, baselines in the same run"),
              candidate: Optional[list[str]] = typer.Option(None, "--candidate", help="with --select: only this "
                                                            "candidate (repeat); baselines always run"),
              as_json: bool = typer.Option(False, "--json")):
    """Leave-one-case-out forecasts, scores (Brier, skill, log, reliability, AUC) and the Metaculus comparison.

    With --select: nested selection of the evidence reading among models/candidates.toml, with the
    baselines in the same run (forecast.selection)."""
    from forecast import backtest, backtest_report, selection

    options = _options(case, draws, tune, chains, metaculus, check_exact, out)
    options.profile = _profile(prior_profile)
    if select or candidate:
        try:
            candidates = selection.load_candidates(options.profile, candidate or None)
        except backtest.BacktestError as err:
            fail(str(err))
        doc = _on_executor(workers, scheduler,
                           lambda eng, executor: selection.run(eng, options, candidates, executor))
        doc["files"] = selection.write_outputs(doc, out)
        emit(doc, as_json, selection.text(doc))
        return
    doc = _on_executor(workers, scheduler, lambda eng, executor: backtest.run(eng, options, executor))
    doc["files"] = backtest_report.write_outputs(doc, out)
    emit(doc, as_json, backtest_report.text_summary(doc))


@app.command("sensitivity")
def sensitivity_(profiles: list[str] = typer.Option(..., "--profiles", help="prior profile names or .toml paths: "
                                                    "--profiles default vague sceptical"),
                 more: Optional[list[str]] = typer.Argument(None, hidden=True),  # the rest of `--profiles A B C`
                 case: Optional[list[str]] = CASES,
                 out: Path = typer.Option(Path("out/sensitivity"), "--out", help="folder for the tables and each "
                                          "profile's backtest files"),
                 draws: int = DRAWS, tune: int = TUNE, chains: int = CHAINS, metaculus: Optional[bool] = METACULUS,
                 check_exact: int = CHECK_EXACT, workers: Optional[int] = cli_executor.WORKERS,
                 scheduler: Optional[str] = cli_executor.SCHEDULER, as_json: bool = typer.Option(False, "--json")):
    """The backtest under each prior profile (same cases, settings and seed), scored side by side."""
    from forecast import sensitivity

    options = _options(case, draws, tune, chains, metaculus, check_exact, out)
    loaded = [_profile(p) for p in [*profiles, *(more or [])]]  # every profile checked before any fit
    study = _on_executor(workers, scheduler, lambda eng, executor: sensitivity.run(eng, loaded, options, executor))
    study["files"] = sensitivity.write_outputs(study, out)
    emit({k: v for k, v in study.items() if k != "documents"}, as_json, sensitivity.text(study))
