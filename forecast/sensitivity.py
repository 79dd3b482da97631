"""Prior sensitivity (`forecast sensitivity --profiles A B C`): one backtest per prior profile, scored side by side.

Each profile's backtest is the ordinary leave-one-case-out backtest (`forecast.backtest`) with the same
cases, sampler settings and seed; only the priors differ, so the table shows how much the scores depend
on them. All the fits go through one executor (`forecast.executor`), so a cluster started for the study
serves every profile.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from forecast import backtest, backtest_report, priors, safe_write
from forecast.executor import Executor

COLUMNS = backtest_report.SCORE_COLUMNS


def run(eng, profiles: list[priors.Profile], options: backtest.Options, executor: Executor) -> dict:
    """The backtest document of every profile, in the order given."""
    docs = [backtest.run(eng, replace(options, profile=p), executor) for p in profiles]
    return {"profiles": [row(d) for d in docs], "documents": docs, "horizons": docs[0]["horizons"],
            "cases_run": docs[0]["cases_run"], "sampler": docs[0]["sampler"], "executor": executor.description,
            "seconds": round(sum(d["seconds"] for d in docs), 1)}


def row(doc: dict) -> dict:
    """One profile's line of the table: every score per horizon and the skill's case-bootstrap interval."""
    return {"profile": doc["prior_profile"], "prior_hash": doc["prior_hash"], "n_forecasts": doc["n_forecasts"],
            **{name: doc[name] for name in COLUMNS}, "brier_skill_interval": doc["brier_skill_interval"],
            "failing_gate": doc["diagnostics"]["failing_gate"], "seconds": doc["seconds"]}


def text(study: dict) -> str:
    """The table for a terminal: one line per profile and horizon."""
    return "\n".join([f"sensitivity: {len(study['profiles'])} prior profiles x {len(study['cases_run'])} cases "
                      f"({study['executor']}, {study['seconds']} s of backtests)", "",
                      *backtest_report.score_table(study["profiles"], study["horizons"], "profile", "prior_hash")])


def write_outputs(study: dict, out: Path) -> list[str]:
    """sensitivity.csv and sensitivity.json, and each profile's backtest files in out/<profile>/."""
    files = []
    names = [r["profile"] for r in study["profiles"]]
    for i, doc in enumerate(study["documents"]):
        folder = names[i] if names.count(names[i]) == 1 else f"{i + 1}-{names[i]}"
        doc["files"] = backtest_report.write_outputs(doc, out / folder)
        files += doc["files"]
    csv_text = backtest_report.score_csv(study["profiles"], study["horizons"], "profile", "prior_hash")
    files.append(str(safe_write.write_text(out / "sensitivity.csv", csv_text)))
    summary = {k: v for k, v in study.items() if k != "documents"}
    files.append(str(safe_write.write_text(out / "sensitivity.json", json.dumps(summary, indent=2, default=str))))
    return files
