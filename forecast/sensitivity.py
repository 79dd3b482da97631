"""Prior sensitivity (`forecast sensitivity --profiles A B C`): one backtest per prior profile, scored side by side.

Each profile's backtest is the ordinary leave-one-case-out backtest (`forecast.backtest`) with the same
cases, sampler settings and seed; only the priors differ, so the table shows how much the scores depend
on them. All the fits go through one executor (`forecast.executor`), so a cluster started for the study
serves every profile.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

from forecast import backtest, backtest_report, priors, safe_write
from forecast.executor import Executor

COLUMNS = ("brier", "brier_skill", "log_score", "ece", "auc", "false_alarm_share")


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
    lines = [f"sensitivity: {len(study['profiles'])} prior profiles x {len(study['cases_run'])} cases "
             f"({study['executor']}, {study['seconds']} s of backtests)", "",
             f"  {'profile':16} {'hash':12} {'h':>3} {'Brier':>7} {'skill':>7} {'90% (cases)':>17} {'log':>7} "
             f"{'ECE':>6} {'AUC':>6} {'false al.':>9}"]
    for r in study["profiles"]:
        for h in map(str, study["horizons"]):
            ci = r["brier_skill_interval"][h]
            lines.append(f"  {r['profile']:16} {r['prior_hash']:12} {h:>3} {_num(r['brier'][h], '7.3f')} "
                         f"{_num(r['brier_skill'][h], '+7.3f')} {_num(ci['lo'], '+8.3f')} to {_num(ci['hi'], '+.3f')} "
                         f"{_num(r['log_score'][h], '7.3f')} {_num(r['ece'][h], '6.3f')} {_num(r['auc'][h], '6.2f')} "
                         f"{_num(r['false_alarm_share'][h], '9.0%')}")
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    """A score as the table prints it; "n/a" where it is undefined (no alarm raised, one class only...)."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return f"{'n/a':>{width or 0}}" if value is None else format(value, spec)


def write_outputs(study: dict, out: Path) -> list[str]:
    """sensitivity.csv and sensitivity.json, and each profile's backtest files in out/<profile>/."""
    files = []
    names = [r["profile"] for r in study["profiles"]]
    for i, doc in enumerate(study["documents"]):
        folder = names[i] if names.count(names[i]) == 1 else f"{i + 1}-{names[i]}"
        doc["files"] = backtest_report.write_outputs(doc, out / folder)
        files += doc["files"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["profile", "prior_hash", "horizon", *COLUMNS, "skill_lo", "skill_hi", "n_forecasts"])
    for r in study["profiles"]:
        for h in map(str, study["horizons"]):
            ci = r["brier_skill_interval"][h]
            writer.writerow([r["profile"], r["prior_hash"], h, *(r[c][h] for c in COLUMNS), ci["lo"], ci["hi"],
                             r["n_forecasts"]])
    files.append(str(safe_write.write_text(out / "sensitivity.csv", buffer.getvalue())))
    summary = {k: v for k, v in study.items() if k != "documents"}
    files.append(str(safe_write.write_text(out / "sensitivity.json", json.dumps(summary, indent=2, default=str))))
    return files
