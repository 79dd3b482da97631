"""The public record: the engine beside published forecasts of the same question.

`data/public_forecasts.json` holds sourced community forecasts (today the
Metaculus question "Will Russia invade Ukraine before 2023?"). For each of their
dates the backtest makes an exact as-of fit of the theater (target cut at that
date, as `forecast refit --as-of` does) and `engine_by` simulates its hazard to
the question's close rather than 90 days.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from forecast import config, predict

PUBLIC_FORECASTS = "public_forecasts.json"


class PublicRecordError(ValueError):
    """The public-forecast file is missing."""


def load(path: Path | None = None) -> dict:
    path = path or config.data_dir() / PUBLIC_FORECASTS
    if not path.exists():
        raise PublicRecordError(f"{path}: no such file (the public forecasts to compare with)")
    return json.loads(path.read_text())


def question_for(doc: dict, theater: str) -> dict | None:
    return next((q for q in doc["questions"] if q["theater"] == theater), None)


def engine_by(fit, theater: str, as_of: dt.date, until: dt.date, rng: np.random.Generator) -> dict:
    """The engine's P(escalation by `until`) as of `as_of`, from an exact as-of fit of `theater`."""
    params = predict.hazard_params(fit.stage2.posterior, theater)
    days = (until - as_of).days
    cum = predict.cumulative_ahead(fit.stage1_draws, fit.panel(theater), params, days, rng)
    return {"by_close": predict.prob_band(cum[:, -1]), "within_30": predict.prob_band(cum[:, 29]),
            "within_90": predict.prob_band(cum[:, 89]), "days": days}


def row(question: dict, published: dict, engine: dict, fit_log: dict) -> dict:
    """One date: the published figure, the engine's, and the fit's convergence."""
    return {"question": question["question"], "question_id": question["id"], "theater": question["theater"],
            "resolves_by": question["resolves_by"], "date": published["date"],
            "metaculus": published["probability"], "metaculus_relation": published["relation"],
            "metaculus_as_stated": published["as_stated"], "engine": engine["by_close"],
            "engine_within_30": engine["within_30"], "engine_within_90": engine["within_90"],
            "difference": round(engine["by_close"]["mean"] - published["probability"], 4),
            "r_hat_max": fit_log["r_hat_max"], "divergences": fit_log["divergences"]}


def section(rows: list[dict], questions: list[dict]) -> dict:
    """The backtest document's `metaculus` part."""
    return {"rows": rows, "source": "; ".join(q["source"] for q in questions) or None,
            "note": "engine: exact as-of fits of the flagship (target cut at each date, reference class "
                    "= every other closed case); hazard simulated to the question's close"}
