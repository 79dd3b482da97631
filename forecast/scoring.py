"""Scores of probability forecasts against what happened: small pure functions.

Producing forecasts (`forecast.backtest`) is kept apart from scoring them, as
Prophet's `diagnostics.performance_metrics` is built. Every function takes
arrays of forecast probabilities `p` and observed outcomes `y` (0/1), or the
backtest's forecast records (dicts with `prob[h]["mean"]`, `observed[h]`,
`climatology[h]`, `case`), and returns plain numbers.

- `brier`, `log_score`: mean proper scores (scoringrules), lower is better;
- `brier_skill`: 1 - Brier / Brier of a reference forecast;
- `auc`: area under the ROC curve by the rank (Mann-Whitney) formula;
- `reliability`: equal-width bins (count, mean forecast, observed frequency) and the ECE;
- `false_alarm_share`: the share of forecasts >= 0.5 whose outcome did not happen;
- `skill_interval`: case-bootstrap interval of the Brier skill;
- `metrics`: all of the above per horizon, as the backtest document reports them.
"""

from __future__ import annotations

import numpy as np

N_BINS = 10
LOG_CLIP = 1e-6  # log score of a probability of exactly 0 or 1 would be infinite
ALARM = 0.5  # a forecast at or above this is an alarm
BOOTSTRAP_SEED = 20220224


def brier(p: np.ndarray, y: np.ndarray) -> float:
    import scoringrules as sr

    return float(np.mean(sr.brier_score(np.asarray(y), np.asarray(p))))


def log_score(p: np.ndarray, y: np.ndarray) -> float:
    import scoringrules as sr

    return float(np.mean(sr.log_score(np.asarray(y), np.clip(np.asarray(p), LOG_CLIP, 1 - LOG_CLIP))))


def brier_skill(p: np.ndarray, y: np.ndarray, reference: np.ndarray) -> float | None:
    """1 - Brier(p) / Brier(reference); None when the reference is perfect."""
    ref = brier(reference, y)
    return 1 - brier(p, y) / ref if ref > 0 else None


def auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank (Mann-Whitney) formula; None with one class only."""
    from scipy.stats import rankdata

    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = N_BINS) -> tuple[list[dict], float]:
    """Equal-width probability bins: count, mean forecast, observed frequency; and the ECE."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        row = {"lo": round(float(edges[b]), 2), "hi": round(float(edges[b + 1]), 2), "n": n,
               "mean_forecast": None, "observed": None}
        if n:
            row["mean_forecast"] = round(float(p[inside].mean()), 4)
            row["observed"] = round(float(y[inside].mean()), 4)
            ece += n / len(p) * abs(row["observed"] - row["mean_forecast"])
        rows.append(row)
    return rows, round(float(ece), 4)


def false_alarm_share(p: np.ndarray, y: np.ndarray, alarm: float = ALARM) -> float | None:
    """Of the forecasts at or above `alarm`, the share whose outcome did not happen (None: no alarm)."""
    raised = p >= alarm
    return float(np.mean(y[raised] == 0)) if raised.any() else None


def _arrays(forecasts: list[dict], key: str, h: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.array([f[key][h]["mean"] for f in forecasts])
    y = np.array([f["observed"][h] for f in forecasts])
    c = np.array([f["climatology"][h] for f in forecasts])
    return p, y, c


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def metrics(forecasts: list[dict], key: str, horizons: list[str]) -> dict:
    """Brier, log score, skill against climatology, reliability, ECE, AUC, false alarms of forecasts[...][key]."""
    doc = {name: {} for name in ("brier", "brier_climatology", "brier_skill", "log_score", "log_score_climatology",
                                 "reliability", "ece", "auc", "false_alarm_share", "base_rate")}
    for h in horizons:
        p, y, c = _arrays(forecasts, key, h)
        doc["brier"][h] = _round(brier(p, y))
        doc["brier_climatology"][h] = _round(brier(c, y))
        doc["brier_skill"][h] = _round(brier_skill(p, y, c))
        doc["log_score"][h] = _round(log_score(p, y))
        doc["log_score_climatology"][h] = _round(log_score(c, y))
        doc["reliability"][h], doc["ece"][h] = reliability(p, y)
        doc["auc"][h] = _round(auc(p, y))
        doc["false_alarm_share"][h] = _round(false_alarm_share(p, y))
        doc["base_rate"][h] = _round(y.mean())
    return doc


def skill_interval(forecasts: list[dict], key: str, horizons: list[str], n_boot: int = 4000,
                   level: float = 0.9) -> dict:
    """Case-bootstrap interval of the Brier skill: whole cases resampled with replacement.

    The weekly forecasts of one case are strongly correlated and a few long cases carry
    many of them, so resampling cases (not forecasts) gives the honest uncertainty.
    """
    import scoringrules as sr

    ids = list(dict.fromkeys(f["case"] for f in forecasts))
    index = np.array([ids.index(f["case"]) for f in forecasts])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)  # (boot, cases)
    out = {}
    for h in horizons:
        p, y, c = _arrays(forecasts, key, h)
        model_sum = np.bincount(index, weights=sr.brier_score(y, p), minlength=len(ids))
        clim_sum = np.bincount(index, weights=sr.brier_score(y, c), minlength=len(ids))
        with np.errstate(divide="ignore", invalid="ignore"):
            skill = 1 - (counts @ model_sum) / (counts @ clim_sum)
        skill = skill[np.isfinite(skill)]
        lo, hi = np.quantile(skill, [(1 - level) / 2, (1 + level) / 2]) if len(skill) else (np.nan, np.nan)
        out[h] = {"lo": round(float(lo), 4), "hi": round(float(hi), 4), "level": level}
    return out


def case_scores(forecasts: list[dict], horizons: list[str]) -> dict:
    """One case's forecasts: mean and last forecast, observed rate, Brier and climatology's Brier."""
    row = {k: {} for k in ("mean_prob", "last_prob", "observed_rate", "brier", "brier_climatology")}
    for h in horizons:
        p, y, c = _arrays(forecasts, "prob", h)
        row["mean_prob"][h] = _round(p.mean())
        row["last_prob"][h] = _round(p[-1])
        row["observed_rate"][h] = _round(y.mean())
        row["brier"][h] = _round(brier(p, y))
        row["brier_climatology"][h] = _round(brier(c, y))
    return row
